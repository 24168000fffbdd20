"""The one decoding loop: prefill, decode, nanoGPT's exact sliding window past ``block_size``, sampling.

``generate``, ``predict``, the validation samples and the server all extend sequences through a
``Decoder``, over a ``Backend`` that runs the network: ``TorchBackend`` here (a ``GPT`` on any
device), ``lit_nanogpt.export.onnxrt.ExportedGPT`` for an export folder (onnxruntime, or Ascend's
runners). Everything is per row, so rows at different positions share each decode step: a backend
owns a cache of ``max_batch`` slots and indexes it by slot.

A row's next token comes one of three ways:

* **prefill**: a row new to the cache (or, with ``window="half"``, one whose cache is full) runs
  its last tokens through the network and its slot then holds their keys and values;
* **decode**: a row whose cache holds every token but its last runs that one token at its own
  position; all such rows go through one batched call;
* **window**: past ``block_size`` every position shifts, so nanoGPT's exact sliding window runs
  the whole last ``block_size`` tokens per token, with no cache (``window="exact"``, the default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from lit_nanogpt.model import GPT

WINDOWS = ("exact", "half")


class Backend(Protocol):
    """What the loop needs of a network: a cache of ``max_batch`` slots, each up to ``block_size`` positions.

    Logits come back as float tensors on ``device`` (sampling happens there). Token ids go in as
    int64 numpy arrays.
    """

    block_size: int
    max_batch: int
    device: torch.device
    cached: bool
    """Whether ``prefill`` and ``decode`` exist; without them every token is a ``window`` (an ``.om`` of the
    full graph alone)."""

    def prefill(self, slot: int, ids: np.ndarray) -> torch.Tensor:
        """Logits (V,) after ``ids`` (T <= block_size,); ``slot`` then holds positions ``0 .. T - 1``."""
        ...

    def decode(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> torch.Tensor:
        """Logits (B, V) of ``tokens[i]`` at ``positions[i]`` of ``slots[i]``, which then holds it too.

        Each slot must hold positions ``0 .. positions[i] - 1``; ``slots`` are distinct.
        """
        ...

    def window(self, ids: np.ndarray) -> torch.Tensor:
        """Logits (V,) after ``ids`` (T <= block_size,), touching no slot."""
        ...


@dataclass
class Sampler:
    """How a row picks its next token: nanoGPT's temperature and top-k, and nucleus (top-p) sampling.

    ``temperature=0`` (or ``top_k=1``) is greedy. Rows that share one ``Sampler`` draw from one
    ``generator`` in row order, in one call, as a batch does in nanoGPT; ``None`` draws from torch's
    global generator (``torch.manual_seed``).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1 (1 is greedy), or unset")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next tokens (B,) from last-position logits (B, V)."""
        return sample_next(logits, self.temperature, self.top_k, self.generator, self.top_p)[:, 0]


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None = None,
    top_p: float = 1.0,
) -> torch.Tensor:
    """The next token (B, 1) from last-position logits (B, V): temperature, top-k, top-p, then a draw."""
    if temperature == 0.0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    if top_p < 1.0:  # keep the most likely tokens whose probabilities sum to top_p (at least the first)
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        before = F.softmax(ordered, dim=-1).cumsum(dim=-1) - F.softmax(ordered, dim=-1)  # mass above each token
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, -float("inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: on the CPU it draws what ``torch.manual_seed(seed)`` would."""
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(eq=False)
class Row:
    """One sequence being extended: its tokens so far (prompt, then each new one) and its place in the cache."""

    ids: list[int]
    sampler: Sampler = field(default_factory=Sampler)
    slot: int | None = None
    """The backend slot it holds between ``Decoder.admit`` and ``Decoder.release``."""
    cached: int = 0
    """Positions its slot holds: the keys and values of ``ids[-cached - 1 : -1]``."""

    def __post_init__(self) -> None:
        if not self.ids:
            raise ValueError("the prompt is empty: give at least one token")


class Decoder:
    """Extends rows one token at a time over a ``Backend``; rows join and leave between steps.

    Args:
        backend: Runs the network.
        use_cache: Keep each row's keys and values (same tokens, faster); ``False`` runs a whole window
            per token, nanoGPT's way.
        window: Past ``block_size``: ``"exact"`` (nanoGPT's sliding window, a whole window per token)
            or ``"half"`` (prefill the last ``block_size // 2`` tokens again when a row's cache is full:
            faster, not identical).
    """

    def __init__(self, backend: Backend, use_cache: bool = True, window: str = "exact") -> None:
        if window not in WINDOWS:
            raise ValueError(f"window={window!r} is not one of {', '.join(WINDOWS)}")
        self.backend = backend
        self.use_cache = use_cache and backend.cached
        self.window = window
        self.block_size = backend.block_size
        self._free = list(range(backend.max_batch - 1, -1, -1))  # popped from the end: slot 0 first

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def admit(self, row: Row) -> bool:
        """Give ``row`` a slot; ``False`` when all ``max_batch`` are taken."""
        if row.slot is not None:
            return True
        if not self._free:
            return False
        row.slot, row.cached = self._free.pop(), 0
        return True

    def release(self, row: Row) -> None:
        """Give ``row``'s slot back (a finished or abandoned row); its keys and values are simply overwritten later."""
        if row.slot is not None:
            self._free.append(row.slot)
            row.slot, row.cached = None, 0

    def needs_window(self, row: Row) -> bool:
        """Whether ``row``'s next token is a whole-window forward: no cache, or past ``block_size`` with the
        exact window. The server runs such rows apart from the decode batch."""
        if not self.use_cache:
            return True
        if 0 < row.cached < self.block_size or self.window == "half":
            return False
        return len(row.ids) > self.block_size  # a new row whose prompt fits is a prefill

    def logits(self, rows: Sequence[Row]) -> torch.Tensor:
        """Next-token logits (B, V) of ``rows`` (each admitted), their caches advanced to match."""
        backend, block = self.backend, self.block_size
        out: list[torch.Tensor | None] = [None] * len(rows)
        decode: list[int] = []
        for i, row in enumerate(rows):
            if row.slot is None:
                raise ValueError("admit a row before stepping it")
            if not self.use_cache:
                out[i] = backend.window(np.asarray(row.ids[-block:], dtype=np.int64))
            elif 0 < row.cached < block:
                decode.append(i)
            elif row.cached == 0 and (len(row.ids) <= block or self.window == "half"):
                ctx = row.ids[-block:]  # a new row: its whole context (the last block_size tokens of a long prompt)
                out[i], row.cached = backend.prefill(row.slot, np.asarray(ctx, dtype=np.int64)), len(ctx)
            elif self.window == "half":  # a full cache: start again from the last block_size // 2 tokens
                ctx = row.ids[-max(1, block // 2) :]
                out[i], row.cached = backend.prefill(row.slot, np.asarray(ctx, dtype=np.int64)), len(ctx)
            else:  # the exact sliding window: every position shifts, so the whole last window again
                out[i] = backend.window(np.asarray(row.ids[-block:], dtype=np.int64))
        if decode:
            tokens = np.array([rows[i].ids[-1] for i in decode], dtype=np.int64)
            positions = np.array([rows[i].cached for i in decode], dtype=np.int64)
            slots = np.array([rows[i].slot for i in decode], dtype=np.int64)
            batch = backend.decode(tokens, positions, slots)  # (B_decode, V)
            for j, i in enumerate(decode):
                out[i] = batch[j]
                rows[i].cached += 1
        return torch.stack([t for t in out if t is not None])  # (B, V)

    def step(self, rows: Sequence[Row]) -> list[int]:
        """One new token for each of ``rows``, appended to its ``ids`` and returned in row order."""
        logits = self.logits(rows)  # (B, V)
        tokens: list[int] = [0] * len(rows)
        # Rows that share a sampler draw in one call, in row order: a batch from one generator, as nanoGPT's.
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(id(row.sampler), []).append(i)
        for members in groups.values():
            drawn = rows[members[0]].sampler(logits[members]).tolist()
            for i, token in zip(members, drawn, strict=True):
                tokens[i] = token
        for row, token in zip(rows, tokens, strict=True):
            row.ids.append(token)
        return tokens


def generate(
    backend: Backend,
    prompts: Iterable[Sequence[int]],
    max_new_tokens: int,
    sampler: Sampler | None = None,
    use_cache: bool = True,
    window: str = "exact",
    on_token: Callable[[list[int]], None] | None = None,
) -> list[list[int]]:
    """Extend each prompt by ``max_new_tokens`` tokens, all rows stepping together (one slot each).

    ``on_token`` gets each step's new tokens, in row order, as soon as they are drawn.
    """
    sampler = sampler if sampler is not None else Sampler()
    decoder = Decoder(backend, use_cache, window)
    rows = [Row(list(p), sampler) for p in prompts]
    if len(rows) > backend.max_batch:
        raise ValueError(f"{len(rows)} prompts at once, but the backend holds {backend.max_batch} rows")
    for row in rows:
        decoder.admit(row)
    try:
        for _ in range(max_new_tokens):
            tokens = decoder.step(rows)
            if on_token is not None:
                on_token(tokens)
    finally:
        for row in rows:
            decoder.release(row)
    return [row.ids for row in rows]


def nll(backend: Backend, ids: Sequence[int], start: int = 1, use_cache: bool = True, window: str = "exact") -> float:
    """Mean negative log-likelihood of ``ids[start:]``, each token predicted with the context generation would
    give it (teacher-forced through the same loop): what a windowing scheme or a quantization costs."""
    decoder = Decoder(backend, use_cache, window)
    row = Row(list(ids[:start]))
    decoder.admit(row)
    losses = []
    try:
        for target in ids[start:]:
            z = decoder.logits([row])[0].double()  # (V,)
            losses.append(float(torch.logsumexp(z, 0) - z[int(target)]))
            row.ids.append(int(target))
    finally:
        decoder.release(row)
    return float(np.mean(losses))


class TorchBackend:
    """A ``GPT`` as a ``Backend``: a cache of ``max_batch`` slots on the model's device, decoded in place.

    Each layer's keys and values live in one (max_batch, n_head, block_size, head_size) tensor, in the dtype
    the model computes them in (under autocast, the autocast dtype). A decode step reads the first
    ``max(positions)`` positions of the slots' span (views: ``Decoder`` hands out the lowest free slot,
    so the rows it holds stay packed) and writes each new key and value at its row's own position.
    """

    cached = True

    def __init__(self, model: GPT, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        self.model = model
        self.block_size = model.config.block_size
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self._keys: list[torch.Tensor] = []  # allocated by the first prefill, in the dtype it computes in
        self._values: list[torch.Tensor] = []

    def _ids(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)

    @torch.no_grad()
    def prefill(self, slot: int, ids: np.ndarray) -> torch.Tensor:
        logits, present = self.model.forward_cached(self._ids(ids)[None])  # (1, T, V)
        T = len(ids)
        if not self._keys or self._keys[0].dtype != present[0][0].dtype:  # first use, or autocast changed
            k = present[0][0]
            shape = (self.max_batch, k.shape[1], self.block_size, k.shape[3])  # (slots, nh, block_size, hs)
            self._keys = [k.new_zeros(shape) for _ in present]
            self._values = [k.new_zeros(shape) for _ in present]
        for cache_k, cache_v, (k, v) in zip(self._keys, self._values, present, strict=True):
            cache_k[slot, :, :T] = k[0]  # (nh, T, hs)
            cache_v[slot, :, :T] = v[0]
        return logits[0, -1]

    @torch.no_grad()
    def decode(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> torch.Tensor:
        P = int(positions.max())
        lo, hi = int(slots.min()), int(slots.max()) + 1
        if hi - lo <= 2 * len(slots):
            # The slots' span as views (no copy); slots in it that are not stepped run as masked dummies
            # (token 0 at position 0) whose outputs are dropped and whose caches are not written.
            rows: slice | torch.Tensor = slice(lo, hi)
            span_tokens, span_positions = np.zeros(hi - lo, dtype=np.int64), np.zeros(hi - lo, dtype=np.int64)
            span_tokens[slots - lo], span_positions[slots - lo] = tokens, positions
        else:  # scattered slots: gather them (a copy of their caches)
            rows, span_tokens, span_positions, lo = self._ids(slots), tokens, positions, 0
        past = [(k[rows, :, :P], v[rows, :, :P]) for k, v in zip(self._keys, self._values, strict=True)]
        span_pos = self._ids(span_positions)
        logits, new = self.model.decode_step(self._ids(span_tokens)[:, None], span_pos, past)  # (n, 1, V)
        picked = self._ids(slots - lo) if isinstance(rows, slice) else torch.arange(len(slots), device=self.device)
        index, pos = self._ids(slots), self._ids(positions)
        for cache_k, cache_v, (k, v) in zip(self._keys, self._values, new, strict=True):
            cache_k[index, :, pos] = k[picked, :, 0]  # (B, nh, hs) at each row's own slot and position
            cache_v[index, :, pos] = v[picked, :, 0]
        return logits[picked, -1]

    @torch.no_grad()
    def window(self, ids: np.ndarray) -> torch.Tensor:
        logits, _ = self.model(self._ids(ids)[None])  # (1, 1, V)
        return logits[0, -1]
