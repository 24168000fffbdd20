"""The server's batching engine, in-process: rows that share steps give each its solo text, slots free at once."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from lit_nanogpt.checkpoint import import_nanogpt, load_model
from lit_nanogpt.decoding import Decoder, Row, Sampler, TorchBackend, generate
from lit_nanogpt.model import GPT
from lit_nanogpt.serve.engine import GREEDY, Engine, Event, Job, QueueFull, Sampling, _held_back
from lit_nanogpt.text import Vocabulary
from tests.helpers import NANOGPT_BABY

T = TypeVar("T")


@pytest.fixture(scope="module")
def baby(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT, Vocabulary]:
    """nanoGPT's trained baby model (block_size 64): real text, so greedy picks are not near-ties."""
    folder = tmp_path_factory.mktemp("serve_engine")
    return load_model(import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", folder / "baby.ckpt"))


def solo(model: GPT, ids: Sequence[int] | np.ndarray, tokens: int, sampler: Sampler = GREEDY) -> list[int]:
    """What ``generate`` gives for one prompt alone: one slot, one row."""
    return generate(TorchBackend(model, max_batch=1), [list(ids)], tokens, sampler)[0][len(ids) :]


async def texts_of(job: Job, choices: int) -> tuple[list[str], list[str | None], list[list[Event]]]:
    """Each choice's text, finish reason and events, once the job is done."""
    texts: list[str] = [""] * choices
    reasons: list[str | None] = [None] * choices
    seen: list[list[Event]] = [[] for _ in range(choices)]
    while events := await job.next_events():
        for e in events:
            texts[e.index] += e.text
            seen[e.index].append(e)
            reasons[e.index] = e.finish_reason or reasons[e.index]
    return texts, reasons, seen


def histogram(engine: Engine, suffix: str) -> float:
    """The batch-size histogram's ``_sum`` (rows stepped by the decode thread) or ``_count`` (its steps)."""
    return next(s.value for s in engine.metrics.batch_size.collect()[0].samples if s.name.endswith(suffix))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` to its end, or a failure after 30 s (a request that never ends is a bug here)."""
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_rows_at_different_positions_share_steps_and_each_gives_its_solo_text(baby: tuple[GPT, Vocabulary]) -> None:
    """Requests join while others run, one prompt is longer than block_size (64) and two cross it: each row's
    greedy text is its solo run's, and the long ones ran on the window thread while the batch went on."""
    model, vocab = baby
    prompts = ["ROMEO:", "JULIET:\nO Romeo", "\n", "First Citizen:\n" + "Before we proceed any further, hear me. " * 2]
    assert len(prompts[3]) > model.config.block_size
    lengths = [90, 40, 70, 30]
    expected = [vocab.decode(solo(model, vocab.encode(p), n)) for p, n in zip(prompts, lengths, strict=True)]
    engine = Engine(TorchBackend(model, max_batch=4), vocab.chars)

    async def main() -> list[str]:
        engine.start()
        try:
            jobs = []
            for prompt, n in zip(prompts, lengths, strict=True):
                jobs.append(engine.submit([vocab.encode(prompt).tolist()], 1, Sampling(temperature=0.0), n))
                await asyncio.sleep(0.01)  # the next one joins a batch already under way
            return [(await texts_of(job, 1))[0][0] for job in jobs]
        finally:
            engine.stop()

    assert run(main()) == expected
    assert histogram(engine, "_sum") / histogram(engine, "_count") > 1.2, "the rows shared decode steps"
    assert histogram(engine, "_sum") < sum(lengths), "the rows past block_size ran on the window thread"


def test_a_waiting_request_starts_when_a_windowed_row_ends(baby: tuple[GPT, Vocabulary]) -> None:
    """One slot, and its row ends on the window thread (past block_size) while the decode thread has nothing
    to step: the waiting request still gets the slot."""
    model, vocab = baby
    engine = Engine(TorchBackend(model, max_batch=1), vocab.chars)

    async def main() -> list[str]:
        engine.start()
        try:
            jobs = [engine.submit([vocab.encode(p).tolist()], 1, Sampling(temperature=0.0), 70) for p in ("A", "B")]
            return [(await texts_of(job, 1))[0][0] for job in jobs]
        finally:
            engine.stop()

    assert run(main()) == [vocab.decode(solo(model, vocab.encode(p), 70)) for p in ("A", "B")]


def test_the_half_window_keeps_every_row_in_the_batch_and_gives_generates_text(baby: tuple[GPT, Vocabulary]) -> None:
    model, vocab = baby
    prompts, tokens = ["ROMEO:", "JULIET:\nO"], 100  # both past block_size (64)
    backend = TorchBackend(model, max_batch=1)
    expected = [vocab.decode(generate(backend, [vocab.encode(p).tolist()], tokens, GREEDY, window="half")[0][len(p) :])
                for p in prompts]  # fmt: skip
    engine = Engine(TorchBackend(model, max_batch=2), vocab.chars, window="half")

    async def main() -> list[str]:
        engine.start()
        try:
            jobs = [engine.submit([vocab.encode(p).tolist()], 1, Sampling(temperature=0.0), tokens) for p in prompts]
            return [(await texts_of(job, 1))[0][0] for job in jobs]
        finally:
            engine.stop()

    assert run(main()) == expected
    assert histogram(engine, "_sum") == len(prompts) * tokens  # every token came from a decode-batch step


def test_batched_logits_are_each_rows_solo_logits(baby: tuple[GPT, Vocabulary]) -> None:
    """Three rows at positions 6, 20 and 40 in one decode call: each row's logits within 1e-5 of its solo run."""
    model, vocab = baby
    text = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east"
    prompts = [vocab.encode(text[:k]).tolist() for k in (6, 20, 40)]
    batched = Decoder(TorchBackend(model, max_batch=3))
    rows = [Row(list(p), GREEDY) for p in prompts]
    alone = [(Decoder(TorchBackend(model, max_batch=1)), Row(list(p), GREEDY)) for p in prompts]
    for row in rows:
        batched.admit(row)
    for decoder, row in alone:
        decoder.admit(row)
    worst = 0.0
    for _ in range(12):
        together = batched.logits(rows)  # (3, V)
        for i, (decoder, row) in enumerate(alone):
            own = decoder.logits([row])[0]
            worst = max(worst, (together[i] - own).abs().max().item())
            token = int(own.argmax())
            row.ids.append(token)
            rows[i].ids.append(token)
    assert worst < 1e-5


def test_seeded_choices_are_drawn_one_after_another_from_one_generator(baby: tuple[GPT, Vocabulary]) -> None:
    """n=3 with a seed is generate --seed --num_samples 3: three samples in turn from one generator, even
    while another request shares the steps."""
    model, vocab = baby
    ids = vocab.encode("ROMEO:").tolist()
    sampler = Sampler(0.8, 200, generator=torch.Generator().manual_seed(1337))
    expected = [vocab.decode(solo(model, ids, 25, sampler)) for _ in range(3)]
    engine = Engine(TorchBackend(model, max_batch=4), vocab.chars)

    async def main() -> list[str]:
        engine.start()
        try:
            other = engine.submit([vocab.encode("JULIET:").tolist()], 1, Sampling(temperature=0.0), 60)
            job = engine.submit([ids], 3, Sampling(temperature=0.8, top_k=200, seed=1337), 25)
            texts, reasons, _ = await texts_of(job, 3)
            await texts_of(other, 1)
            assert reasons == ["length"] * 3
            return texts
        finally:
            engine.stop()

    assert run(main()) == expected
    assert len(set(expected)) == 3


def test_unseeded_requests_differ(baby: tuple[GPT, Vocabulary]) -> None:
    model, vocab = baby
    engine = Engine(TorchBackend(model, max_batch=4), vocab.chars)

    async def main() -> list[str]:
        engine.start()
        try:
            job = engine.submit([vocab.encode("ROMEO:").tolist()], 4, Sampling(temperature=1.0), 30)
            return (await texts_of(job, 4))[0]
        finally:
            engine.stop()

    assert len(set(run(main()))) == 4


def test_stop_sequence_ends_the_choice_and_its_start_is_never_streamed(baby: tuple[GPT, Vocabulary]) -> None:
    model, vocab = baby
    greedy = vocab.decode(solo(model, vocab.encode("ROMEO:"), 40))
    assert greedy.startswith("\nI ward the shall")
    engine = Engine(TorchBackend(model, max_batch=2), vocab.chars)

    async def main() -> tuple[list[str], list[str | None], list[list[Event]]]:
        engine.start()
        try:
            job = engine.submit([vocab.encode("ROMEO:").tolist()], 1, Sampling(temperature=0.0), 40, ["shall", "xyz"])
            return await texts_of(job, 1)
        finally:
            engine.stop()

    texts, reasons, events = run(main())
    assert texts == ["\nI ward the "] and reasons == ["stop"]
    assert all("s" not in e.text for e in events[0])  # "s" may begin "shall": held back, then dropped
    assert engine.metrics.tokens._value.get() == len("\nI ward the shall")


def test_held_back_is_the_longest_tail_that_could_start_a_stop_sequence() -> None:
    assert _held_back("the sha", ["shall"]) == 3
    assert _held_back("the sh", ["shall", "h!"]) == 2
    assert _held_back("the s", ["xyz"]) == 0
    assert _held_back("ab", []) == 0


def test_a_cancelled_request_frees_its_slot_before_the_next_step(baby: tuple[GPT, Vocabulary]) -> None:
    """One slot: a long request is cancelled mid-way; the next request's first token comes from the very next
    step (the one under way when it was cancelled may finish)."""
    model, vocab = baby
    engine = Engine(TorchBackend(model, max_batch=1), vocab.chars, max_queue=4)

    async def main() -> tuple[int, int, str]:
        engine.start()
        try:
            long = engine.submit([vocab.encode("ROMEO:").tolist()], 1, Sampling(temperature=0.0), 50)
            await long.next_events()
            waiting = engine.submit([vocab.encode("JULIET:").tolist()], 1, Sampling(temperature=0.0), 5)
            await long.next_events()
            at_cancel = engine.steps
            engine.cancel(long)
            first = await waiting.next_events()
            steps = engine.steps
            rest = await texts_of(waiting, 1)
            return at_cancel, steps, first[0].text + rest[0][0]
        finally:
            engine.stop()

    at_cancel, at_first_token, text = run(main())
    assert at_first_token - at_cancel <= 2
    assert text == vocab.decode(solo(model, vocab.encode("JULIET:"), 5))
    assert engine.metrics.cancelled._value.get() == 1
    assert engine.decoder.free_slots == 1


def test_a_full_queue_refuses_and_a_failed_step_ends_only_its_requests(baby: tuple[GPT, Vocabulary]) -> None:
    model, vocab = baby

    class Flaky(TorchBackend):
        fail = False  # armed once the warm-up has run

        def decode(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> torch.Tensor:
            if Flaky.fail:
                Flaky.fail = False
                raise RuntimeError("device lost")
            return super().decode(tokens, positions, slots)

    engine = Engine(Flaky(model, max_batch=1), vocab.chars, max_queue=1)

    async def main() -> tuple[list[str | None], list[str]]:
        engine.start()
        Flaky.fail = True
        try:
            prompt = [vocab.encode("ROMEO:").tolist()]
            first = engine.submit(prompt, 1, Sampling(temperature=0.0), 10)
            second = engine.submit(prompt, 1, Sampling(temperature=0.0), 10)
            with pytest.raises(QueueFull):
                engine.submit(prompt, 1, Sampling(temperature=0.0), 10)
            _, reasons, _ = await texts_of(first, 1)
            texts, _, _ = await texts_of(second, 1)
            return reasons, texts
        finally:
            engine.stop()

    reasons, texts = run(main())
    assert reasons == ["error"]
    assert texts == [vocab.decode(solo(model, vocab.encode("ROMEO:"), 10))]


def test_submit_checks_its_arguments(baby: tuple[GPT, Vocabulary]) -> None:
    model, vocab = baby
    engine = Engine(TorchBackend(model, max_batch=1), vocab.chars)

    async def main() -> None:
        with pytest.raises(ValueError, match="max_tokens=0"):
            engine.submit([[1]], 1, Sampling(), 0)

    run(main())
    with pytest.raises(ValueError, match="max_queue=-1"):
        Engine(TorchBackend(model, max_batch=1), vocab.chars, max_queue=-1)
