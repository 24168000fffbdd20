"""Continuous batching over the one decoding loop (``lit_nanogpt.decoding.Decoder``), off the event loop.

A request becomes a ``Job`` of one or more ``Choice``s, each a ``Row`` of the decoder. One worker
thread steps every admitted row that decodes: a row joins the batch at the next step once a slot is
free, leaves the moment it finishes, and a row whose client has gone is released before the next
step. A row past ``block_size`` under the exact window costs a whole-window forward per token, so a
second thread steps those rows, one token each in turn, and the decode batch never waits on them.

The threads hand each step's text to the job's asyncio queue with ``call_soon_threadsafe``; the
event loop only awaits queues, never a forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lit_nanogpt.decoding import Backend, Decoder, Row, Sampler
from lit_nanogpt.serve.metrics import Metrics
from lit_nanogpt.text import TextStream, Tokenizer, Vocabulary

log = logging.getLogger(__name__)

GREEDY = Sampler(temperature=0.0)
"""Shared by every greedy row: rows that share a sampler draw in one call, an argmax over the batch."""


@dataclass(frozen=True)
class Sampling:
    """How a request's choices draw: OpenAI's defaults (temperature 1, top_p 1), plus nanoGPT's top-k."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class Event:
    """New text of one choice; ``finish_reason`` is set on its last event (``length``, ``stop`` or ``error``)."""

    index: int
    text: str
    finish_reason: str | None = None


class QueueFull(Exception):
    """No room for another request: as many wait for a slot as the queue holds."""


class Stopping(Exception):
    """The engine is shutting down and takes no new request."""


@dataclass(eq=False)
class Choice:
    """One sequence a request asked for: the row the decoder extends and the text delivered so far."""

    job: Job
    index: int
    row: Row
    max_tokens: int
    then: Choice | None = None
    """The next seeded sample of the same prompt, started when this one ends (it draws from the same generator)."""
    text: str = ""
    sent: int = 0
    """Characters of ``text`` delivered: a tail that could begin a stop sequence is held back."""
    produced: int = 0
    last_at: float = 0.0
    done: bool = False
    stream: TextStream | None = None
    """Turns its tokens into whole characters (made at the first token, from the prompt's ids)."""


class Job:
    """A request's choices, their events as they come, and whether its client has gone."""

    def __init__(self, choices: int, stop: Sequence[str], prompt_tokens: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.stop = tuple(stop)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.remaining = choices
        self.cancelled = False
        self.started = False
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None

    async def next_events(self) -> list[Event]:
        """The events of the next step that touched this job (empty once every choice has finished)."""
        if not self.remaining:
            return []
        events = await self.queue.get()
        self.remaining -= sum(e.finish_reason is not None for e in events)
        return events

    def deliver(self, events: list[Event]) -> None:  # from a worker thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, events)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop sequence (so are not sent yet)."""
    longest = max((len(s) for s in stop), default=0)
    for k in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stop):
            return k
    return 0


class Engine:
    """Runs a ``Backend``'s rows in continuous batches on worker threads.

    Args:
        backend: Runs the network; its ``max_batch`` bounds the rows stepped together.
        tokenizer: Turns tokens into text (a string: the characters of a ``Vocabulary``, in id order).
        window: Past ``block_size``: ``exact`` (nanoGPT's sliding window, run apart) or ``half``.
        max_queue: Requests that may wait for a slot beyond the free ones; past that ``submit`` raises ``QueueFull``.
        metrics: Where the counters go.
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer | str,
        window: str = "exact",
        max_queue: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue} must be at least 0")
        self.decoder = Decoder(backend, use_cache=True, window=window)
        self.backend = backend
        self.tokenizer = Vocabulary(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.max_queue = max_queue
        self.metrics = metrics if metrics is not None else Metrics()
        # Without a cache every token is a window forward; nothing would be left to keep apart from.
        self._apart = self.decoder.use_cache
        self._lock = threading.Lock()  # guards everything below and the decoder's admit/release
        self._decode_work = threading.Condition(self._lock)
        self._window_work = threading.Condition(self._lock)
        self._pending: deque[Choice] = deque()
        self._queued_jobs = 0  # submitted, no choice admitted yet
        self._batch: list[Choice] = []  # admitted rows stepped by the decode thread
        self._windowed: deque[Choice] = deque()  # admitted rows stepped by the window thread, in turn
        self._stopping = False
        self._unseeded: dict[tuple[float, int | None, float], Sampler] = {}
        self._threads: list[threading.Thread] = []
        self.steps = 0
        """Decode steps run so far (tests read it to bound how long a cancelled row lingers)."""

    @property
    def max_batch(self) -> int:
        return self.backend.max_batch

    @property
    def alive(self) -> bool:
        """Whether the worker threads run (``GET /health`` answers 503 otherwise)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    # ---- the event loop's side ----
    def submit(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: Sampling, max_tokens: int, stop: Sequence[str] = ()
    ) -> Job:
        """Queue ``n`` choices of each prompt; their events arrive on the returned job (call from the event loop).

        Choice ``i * n + j`` is prompt ``i``'s sample ``j``. With a seed each prompt's samples are drawn one
        after another from one generator seeded with it, as ``generate --num_samples`` does.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be at least 1")
        job = Job(len(prompts) * n, [s for s in stop if s], sum(len(p) for p in prompts))
        first: list[Choice] = []
        for i, ids in enumerate(prompts):
            if sampling.seed is not None:
                sampler = self._sampler(sampling)
                chain = [Choice(job, i * n + j, Row(list(ids), sampler), max_tokens) for j in range(n)]
                for before, after in zip(chain, chain[1:], strict=False):
                    before.then = after
                first.append(chain[0])
            else:
                first += [Choice(job, i * n + j, Row(list(ids), self._sampler(sampling)), max_tokens) for j in range(n)]
        with self._lock:
            if self._stopping:
                raise Stopping("the server is shutting down")
            if self._queued_jobs >= self.max_queue + self.decoder.free_slots:
                raise QueueFull(f"{self._queued_jobs} requests are waiting for one of {self.max_batch} slots")
            self._queued_jobs += 1
            self._pending.extend(first)
            self.metrics.queue_depth.set(self._queued_jobs)
            self._decode_work.notify()
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        return job

    def cancel(self, job: Job) -> None:
        """The client has gone: its waiting choices are dropped now, its rows before the next step."""
        if job.remaining == 0 and not job.cancelled:
            return
        job.cancelled = True
        with self._lock:
            waiting = [c for c in self._pending if c.job is job]
            for c in waiting:
                self._pending.remove(c)
                c.done = True
            if waiting and not job.started:
                self._queued_jobs -= 1
                job.started = True  # counted out of the queue once
                self.metrics.queue_depth.set(self._queued_jobs)
            self._decode_work.notify()

    def _sampler(self, sampling: Sampling) -> Sampler:
        """Greedy rows share one sampler, and so do unseeded rows with the same settings (each step's draws for
        them are one call, from one randomly seeded generator); a seeded request has a generator of its own."""
        if sampling.greedy:
            return GREEDY
        key = (sampling.temperature, sampling.top_k, sampling.top_p)
        if sampling.seed is None and key in self._unseeded:
            return self._unseeded[key]
        generator = torch.Generator(device=self.backend.device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
            return Sampler(*key, generator=generator)
        generator.seed()  # non-deterministic
        if len(self._unseeded) >= 64:  # settings seldom repeat past a few; keep the table small
            self._unseeded.clear()
        self._unseeded[key] = Sampler(*key, generator=generator)
        return self._unseeded[key]

    # ---- the threads ----
    def start(self) -> None:
        self.warm_up()
        self._threads = [threading.Thread(target=self._decode_loop, name="lit-nanogpt-decode", daemon=True)]
        if self._apart:
            self._threads.append(threading.Thread(target=self._window_loop, name="lit-nanogpt-window", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads after their current step; rows still held are abandoned."""
        with self._lock:
            self._stopping = True
            self._decode_work.notify_all()
            self._window_work.notify_all()
        for thread in self._threads:
            thread.join()

    def warm_up(self) -> None:
        """One prefill, decode step and window through the backend, so the first request pays no first-call costs."""
        row = Row([0], GREEDY)
        with self._lock:
            self.decoder.admit(row)
        try:
            self.decoder.step([row])  # prefill
            self.decoder.step([row])  # decode
            if self._apart and self.decoder.window == "exact":
                self.backend.window(np.zeros(self.decoder.block_size, dtype=np.int64))
        finally:
            with self._lock:
                self.decoder.release(row)

    def _decode_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    self._drop_cancelled()
                    self._admit()
                    if self._apart:
                        self._move_windows()
                    if self._batch or self._stopping:
                        break
                    self._decode_work.wait()
                if self._stopping:
                    return
                batch = list(self._batch)
            self._step(batch, decode=True)

    def _window_loop(self) -> None:
        while True:
            with self._lock:
                while not self._windowed and not self._stopping:
                    self._window_work.wait()
                if self._stopping:
                    return
                choice = self._windowed.popleft()
                if choice.job.cancelled:
                    self._release(choice, cancelled=True)
                    continue
            self._step([choice], decode=False)
            with self._lock:
                if not choice.done:
                    self._windowed.append(choice)

    # Each of the following runs with the lock held.
    def _drop_cancelled(self) -> None:
        for choice in [c for c in self._batch if c.job.cancelled]:
            self._release(choice, cancelled=True)
        for choice in [c for c in self._windowed if c.job.cancelled]:
            self._windowed.remove(choice)
            self._release(choice, cancelled=True)

    def _admit(self) -> None:
        while self._pending and self.decoder.free_slots:
            choice = self._pending.popleft()
            self.decoder.admit(choice.row)
            self._batch.append(choice)
            if not choice.job.started:
                choice.job.started = True
                self._queued_jobs -= 1
                self.metrics.queue_depth.set(self._queued_jobs)
        self.metrics.running.set(self.max_batch - self.decoder.free_slots)

    def _move_windows(self) -> None:
        moved = [c for c in self._batch if self.decoder.needs_window(c.row)]
        if moved:
            self._batch = [c for c in self._batch if c not in moved]
            self._windowed.extend(moved)
            self._window_work.notify()

    def _release(self, choice: Choice, cancelled: bool = False) -> None:
        choice.done = True
        self.decoder.release(choice.row)
        if choice in self._batch:
            self._batch.remove(choice)
        if cancelled:
            self.metrics.cancelled.inc()
        elif choice.then is not None and not choice.job.cancelled:
            self._pending.appendleft(choice.then)  # the next sample of a seeded request goes first
        self._decode_work.notify()  # a free slot: the decode thread admits (it may be idle, its rows all windowed)
        self.metrics.running.set(self.max_batch - self.decoder.free_slots)

    # ---- one step ----
    def _step(self, batch: list[Choice], decode: bool) -> None:
        try:
            tokens = self.decoder.step([c.row for c in batch])
        except Exception:  # a backend failure ends these rows' requests, not the server
            log.exception("a decoding step failed; its %d requests end with an error", len(batch))
            with self._lock:
                for choice in batch:
                    self._release(choice)
            for choice in batch:
                choice.job.deliver([Event(choice.index, "", "error")])
            return
        now = time.perf_counter()
        if decode:
            self.steps += 1
            self.metrics.batch_size.observe(len(batch))
        self.metrics.tokens.inc(len(batch))
        out: dict[Job, list[Event]] = {}
        finished = []
        for choice, token in zip(batch, tokens, strict=True):
            event = self._advance(choice, token, now)
            if event is not None:
                out.setdefault(choice.job, []).append(event)
                if event.finish_reason is not None:
                    finished.append(choice)
        if finished:  # released before the client hears of it, so the slot is free by then
            with self._lock:
                for choice in finished:
                    self._release(choice)
        for job, events in out.items():
            job.deliver(events)

    def _advance(self, choice: Choice, token: int, now: float) -> Event | None:
        """Add ``token`` to ``choice``'s text; the event to send, if any (text cleared of any stop sequence)."""
        job = choice.job
        if job.first_token_at is None:
            job.first_token_at = now
            self.metrics.ttft.observe(now - job.submitted_at)
        elif choice.produced:
            self.metrics.itl.observe(now - choice.last_at)
        choice.last_at = now
        choice.produced += 1
        job.completion_tokens += 1
        if choice.stream is None:
            choice.stream = TextStream(self.tokenizer, choice.row.ids[:-1])  # the row holds the new token already
        before = len(choice.text)
        choice.text += choice.stream.push([token])  # whole characters only: a byte-level token may end inside one
        if choice.produced >= choice.max_tokens:
            choice.text += choice.stream.flush()
        finish, end = None, len(choice.text)
        # A token adds one character or several: the earliest stop sequence that the new text completes.
        longest = max((len(s) for s in job.stop), default=0)
        found = [(i, s) for s in job.stop if (i := choice.text.find(s, max(0, before - longest + 1))) >= 0]
        if found:
            finish, end = "stop", min(i for i, _ in found)
            choice.text = choice.text[:end]
        elif choice.produced >= choice.max_tokens:
            finish = "length"
        if finish is None:
            end -= _held_back(choice.text, job.stop)
        if end <= choice.sent and finish is None:
            return None
        text, choice.sent = choice.text[choice.sent : end], max(end, choice.sent)
        return Event(choice.index, text, finish)


@dataclass
class Collected:
    """A finished job's texts and finish reasons, by choice index."""

    texts: list[list[str]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)

    @classmethod
    async def of(cls, job: Job, choices: int) -> Collected:
        out = cls([[] for _ in range(choices)], [None] * choices)
        while events := await job.next_events():
            for e in events:
                out.texts[e.index].append(e.text)
                if e.finish_reason is not None:
                    out.finish_reasons[e.index] = e.finish_reason
        return out
