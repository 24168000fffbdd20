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

    def prefill(self, slots: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Logits (B, V) after each row of ``ids`` (B, T <= block_size), right-padded beyond its ``lengths[i]``;
        ``slots[i]`` then holds its positions ``0 .. lengths[i] - 1`` (and padding after them, masked until
        overwritten)."""
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
        """Next-token logits (B, V) of ``rows`` (each admitted), their caches advanced to match.

        New rows are prefilled together (one forward, right-padded to the longest), then every row whose cache
        holds all its tokens but the last decodes in one batched step; window rows run one by one.
        """
        backend, block = self.backend, self.block_size
        out: list[torch.Tensor | None] = [None] * len(rows)
        prefill: list[tuple[int, list[int]]] = []
        decode: list[int] = []
        for i, row in enumerate(rows):
            if row.slot is None:
                raise ValueError("admit a row before stepping it")
            if not self.use_cache:
                out[i] = backend.window(np.asarray(row.ids[-block:], dtype=np.int64))
            elif 0 < row.cached < block:
                decode.append(i)
            elif row.cached == 0 and (len(row.ids) <= block or self.window == "half"):
                prefill.append((i, row.ids[-block:]))  # a new row: its context (a long prompt's last block_size)
            elif self.window == "half":  # a full cache: start again from the last block_size // 2 tokens
                prefill.append((i, row.ids[-max(1, block // 2) :]))
            else:  # the exact sliding window: every position shifts, so the whole last window again
                out[i] = backend.window(np.asarray(row.ids[-block:], dtype=np.int64))
        if prefill:
            lengths = np.array([len(ctx) for _, ctx in prefill], dtype=np.int64)
            ids = np.zeros((len(prefill), int(lengths.max())), dtype=np.int64)  # right-padded
            for j, (_, ctx) in enumerate(prefill):
                ids[j, : len(ctx)] = ctx
            slots = np.array([rows[i].slot for i, _ in prefill], dtype=np.int64)
            batch = backend.prefill(slots, ids, lengths)  # (B_prefill, V)
            for j, (i, ctx) in enumerate(prefill):
                out[i], rows[i].cached = batch[j], len(ctx)
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
    the model computes them in (under autocast, the autocast dtype). A decode step works on the slots'
    span as views (``Decoder`` hands out the lowest free slot, so the rows it holds stay packed): each
    new key and value is written at its row's own position, then attended to with the rest in place.
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
    def prefill(self, slots: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        logits, present = self.model.forward_cached(self._ids(ids))  # (B, T, V); each (B, nh, T, hs)
        T = ids.shape[1]
        if not self._keys or self._keys[0].dtype != present[0][0].dtype:  # first use, or autocast changed
            k = present[0][0]
            shape = (self.max_batch, k.shape[1], self.block_size, k.shape[3])  # (slots, nh, block_size, hs)
            self._keys = [k.new_zeros(shape) for _ in present]
            self._values = [k.new_zeros(shape) for _ in present]
        index = self._ids(slots)
        for cache_k, cache_v, (k, v) in zip(self._keys, self._values, present, strict=True):
            cache_k[index, :, :T] = k  # a shorter row's padding too: masked until decode overwrites it
            cache_v[index, :, :T] = v
        return logits[torch.arange(len(slots), device=self.device), self._ids(lengths - 1)]  # (B, V)

    @torch.no_grad()
    def decode(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> torch.Tensor:
        # The slots' span, as views of the cache, updated in place: no row's past is copied. Slots in the span
        # that are not stepped run as dummies (token 0 at position 0) whose outputs are dropped, never written.
        lo, hi = int(slots.min()), int(slots.max()) + 1
        span_tokens, span_positions = np.zeros(hi - lo, dtype=np.int64), np.zeros(hi - lo, dtype=np.int64)
        span_tokens[slots - lo], span_positions[slots - lo] = tokens, positions
        written = self._ids(slots - lo)
        keys, values = [k[lo:hi] for k in self._keys], [v[lo:hi] for v in self._values]
        logits = self.model.decode_in_place(
            self._ids(span_tokens)[:, None], self._ids(span_positions), keys, values, written
        )  # (n, 1, V)
        return logits[written, -1]

    @torch.no_grad()
    def window(self, ids: np.ndarray) -> torch.Tensor:
        logits, _ = self.model(self._ids(ids)[None])  # (1, 1, V)
        return logits[0, -1]
