"""An export folder as a decoding backend (``lit_nanogpt.decoding``): onnxruntime, or Ascend's runners.

The folder's graphs map onto the backend's three calls:

* ``prefill``: ``prefill.onnx`` on a row's tokens, whose keys and values go into its slot of a cache
  of ``max_batch`` slots kept here, one (max_batch, n_head, block_size, head_size) array per layer;
* ``decode``: ``decode.onnx`` on one token per row, each at its own position: it reads the rows'
  slots whole (a view of the cache; positions past a row's own are masked inside the graph) and
  returns only the new keys and values, which are written at each row's position;
* ``window``: ``full.onnx`` on the last ``block_size`` tokens, nanoGPT's exact sliding window.

``cache="static"`` runs the static-shape pair instead (``prefill_static.onnx``, ``decode_static.onnx``:
every shape fixed, for atc and the CANN provider): the whole cache goes in and out of each step, its
batch is the export's ``batch_size`` (which then bounds ``max_batch``), and the window re-runs
``prefill_static`` on the last ``block_size`` tokens. ``cache="none"`` has the full graph alone (an
``.om`` of ``full.onnx``): every token is a window.

Folders of format version 2 or older (a decode graph that takes no positions) open with ``max_batch`` 1.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lit_nanogpt.export.ascend import Runner, ascend_runners
from lit_nanogpt.export.manifest import STATIC_GRAPHS, Manifest, past_names
from lit_nanogpt.text import tokenizer_for_model

if TYPE_CHECKING:
    from lit_nanogpt.model import GPTConfig

BACKENDS = ("auto", "cpu", "cann", "om")
CACHES = ("auto", "dynamic", "static")
_GRAPHS = {"dynamic": ("full", "prefill", "decode"), "static": STATIC_GRAPHS, "none": ("full",)}


SPIN_US = 25
"""How long an idle onnxruntime worker thread waits for the next op by spinning before it sleeps, in microseconds
(``session.intra_op.spin_duration_us``, onnxruntime 1.26 and later). Long enough to span the gaps between one decode
step's ops, short enough that the workers sleep while Python samples the next token. On 2 cores, 2 threads spinning
this long decoded 1.43x (fp32) and 1.31x (int8) as fast as one thread on an idle CPU, and 0.96-0.98x beside 1 or 2
busy processes, where onnxruntime's own unbounded spin gave 0.60-0.78x (``bench_generate.py spin``, BENCHMARKS.md)."""


DECODE_THREADS = 2
"""The decode graphs' threads by default, at most the CPUs this process may run on: the most that was measured (on
2 cores). Placed by the count given, not pinned to cores as onnxruntime's own default places them."""
DECODE_THREADS_FROM = 10_000_000
"""Weights a decode step multiplies by (12 n_embd^2 a layer, and the head) from which it runs on ``DECODE_THREADS``,
below on one. On 2 cores (``bench_generate.py spin --model``): 10.6M weights decoded 1.30-1.43x (fp32) and
1.24-1.31x (int8) as fast on 2 threads; at 7.4M and 4.7M int8 lost (0.78-0.85x) while fp32 gained 5-9%; at 0.8M
fp32 lost (0.91-0.93x). Smaller weights stay in the caches, and the threads' hand-offs cost more than they read."""


def decode_weights(config: GPTConfig) -> int:
    """The weights a decode step multiplies one row by: each layer's 12 n_embd^2 and the head."""
    return config.n_layer * 12 * config.n_embd**2 + config.vocab_size * config.n_embd


def bounded_spin() -> bool:
    """Whether this onnxruntime bounds its threads' spin (``SPIN_US``): 1.26 and later (a version it cannot read:
    no)."""
    import onnxruntime as ort

    release = re.match(r"(\d+)\.(\d+)", ort.__version__)
    return release is not None and (int(release[1]), int(release[2])) >= (1, 26)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _session(path: Path, threads: int | None, spin: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # Spinning worker threads wait for the next op by burning a core: without a bound (onnxruntime's default,
    # and all there is before 1.26) decoding beside busy processes ran at 0.60-0.78x one thread's speed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin and bounded_spin():
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ExportedGPT:
    """An export folder as a ``lit_nanogpt.decoding.Backend``: onnxruntime on CPU, or the ``runners`` given."""

    device = torch.device("cpu")

    def __init__(
        self,
        folder: str | Path,
        int8: bool = False,
        threads: int | None = None,
        manifest: Manifest | None = None,
        cache: str = "dynamic",
        runners: dict[str, Runner] | None = None,
        max_batch: int = 1,
    ) -> None:
        """Open the graphs of ``folder``.

        Args:
            folder: An export folder (``manifest.json`` and its graphs).
            int8: Use the int8-weight graphs (``*.int8.onnx``).
            threads: onnxruntime intra-op threads for every graph, spin-waiting between ops when more than
                one. Default: ``DECODE_THREADS`` for decode (from ``DECODE_THREADS_FROM`` weights; one below),
                spin-waiting, and one per core for the others, not spinning. The spin lasts ``SPIN_US`` at most;
                before onnxruntime 1.26, which cannot bound it, the default decodes on one thread.
            manifest: ``Manifest.read(folder)`` when the caller has it already (it hashes every file).
            cache: ``dynamic`` (``prefill``/``decode``, and ``full`` past block_size), ``static``
                (``prefill_static``/``decode_static``, every shape fixed) or ``none`` (``full`` alone).
            runners: Run these graphs (by name) instead of onnxruntime on CPU: Ascend's (``export.ascend``).
            max_batch: Rows held at once (slots of the cache); the static pair's batch caps it.
        """
        if cache not in _GRAPHS:
            raise ValueError(f"cache={cache!r} is not one of {', '.join(_GRAPHS)}")
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads} must be at least 1, or None for the defaults")
        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else Manifest.read(self.folder)
        self.vocab = tokenizer_for_model(self.folder, self.manifest.vocab, self.manifest.model.vocab_size)
        self.block_size = self.manifest.block_size
        self.cache = cache
        self.cached = cache != "none"
        if cache == "static" and int8:
            raise ValueError("the static KV-cache graphs have no int8 copies (int8 is for onnxruntime on CPU): "
                             "use --cache dynamic with --int8")  # fmt: skip
        suffix = "_int8" if int8 else ""
        graphs = self.manifest.graphs
        missing = [g + suffix for g in _GRAPHS[cache] if g + suffix not in graphs]
        if missing:
            hint = "export again (lit-nanogpt export)"
            if int8:  # a fit's own export writes no int8 copies unless asked (fit_defaults.yaml)
                hint = ("write them with lit-nanogpt export --checkpoint CKPT --out DIR (int8 copies by default), or "
                        "fit with the OnnxExport callback's settings.int8: true")  # fmt: skip
            raise ValueError(f"{self.folder} has no {', '.join(missing)} graph: {hint}")
        self._files = {g: self.folder / graphs[g + suffix].file for g in _GRAPHS[cache]}
        self._inputs = {g: {t.name: t.shape for t in graphs[g + suffix].inputs} for g in _GRAPHS[cache]}
        self._runners = dict(runners or {})
        self._dims = self.manifest.dynamic_dims or []
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()  # sessions are built on first use, possibly from two threads
        config = self.manifest.model
        self._past = past_names(config.n_layer, "past")
        if cache == "static":
            batch = int(self._inputs["prefill_static"]["idx"][0])
            # Before format version 3 the static pair took one position for all rows: one row at a time.
            self._per_row = self._inputs["decode_static"]["pos"] == [batch]
            self._rows = batch
            self.max_batch = min(max_batch, batch) if self._per_row else 1
        else:
            self._per_row = cache == "none" or "pos" in self._inputs["decode"]
            self._rows = max_batch if self._per_row else 1
            self.max_batch = self._rows
        shape = (self._rows, config.n_head, config.block_size, config.n_embd // config.n_head)
        self._cache = [np.zeros(shape, dtype=np.float32) for _ in self._past] if self.cached else []

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if graph in self._runners:
            return self._runners[graph](feeds)
        if graph not in self._sessions:
            with self._lock:
                if graph not in self._sessions:
                    self._sessions[graph] = _session(self._files[graph], *self._threading(graph))
        return self._sessions[graph].run(None, feeds)

    def _threading(self, graph: str) -> tuple[int | None, bool]:
        """The threads of ``graph``'s session (None: one per core, onnxruntime's default) and whether they spin."""
        if self._threads is not None:
            return self._threads, self._threads > 1
        if not graph.startswith("decode"):
            return None, False  # whole windows and prompts: large products, one call each
        # A token's many small ops: a second thread pays a wake-up per op unless it spins, and an unbounded spin
        # loses on a busy CPU, so without the bound one thread (BENCHMARKS.md); so does a small model.
        large = decode_weights(self.manifest.model) >= DECODE_THREADS_FROM
        threads = min(DECODE_THREADS, usable_cpus()) if large else 1
        return (threads, True) if threads > 1 and bounded_spin() else (1, False)

    # ---- the backend ----
    def prefill(self, slots: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        if self.cache == "static" and self._per_row:
            return self._prefill_rows(slots, ids, lengths)
        if self.cache == "static":  # before version 3: one length for all rows, so one row at a time
            rows = [self._prefill_rows(slots[i : i + 1], ids[i : i + 1], lengths[i : i + 1]) for i in range(len(slots))]
            return torch.cat(rows)
        T = ids.shape[1]
        logits, *present = self._run("prefill", {"idx": ids})  # (B, T, V), each (B, nh, T, hs)
        for cache, kv in zip(self._cache, present, strict=True):
            cache[slots, :, :T] = kv  # a shorter row's padding too: masked until decode overwrites it
        return torch.from_numpy(logits[np.arange(len(slots)), lengths - 1])  # (B, V)

    def decode(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> torch.Tensor:
        if self.cache == "static":
            return self._decode_static(tokens, positions, slots)
        if not self._per_row:  # before version 3: the past is exactly the row's positions, one row
            past = [cache[slots, :, : int(positions[0])] for cache in self._cache]
            logits, *present = self._run("decode", {"idx": tokens[:, None], **dict(zip(self._past, past, strict=True))})
            for cache, kv in zip(self._cache, present, strict=True):
                cache[slots, :, positions] = kv[:, :, -1]
            return torch.from_numpy(logits[:, -1])
        # The slots' whole span, every position: a view of the cache, no copy, and the same shapes at every
        # step (onnxruntime plans its buffers once). Positions past a row's own are masked inside the graph;
        # slots in the span that are not stepped run as dummies (token 0 at position 0), never written back.
        lo, hi = int(slots.min()), int(slots.max()) + 1
        span_tokens, span_positions = np.zeros((hi - lo, 1), dtype=np.int64), np.zeros(hi - lo, dtype=np.int64)
        span_tokens[slots - lo, 0], span_positions[slots - lo] = tokens, positions
        past = [cache[lo:hi] for cache in self._cache]  # (n, nh, block_size, hs) each
        feeds: dict[str, np.ndarray] = {
            "idx": span_tokens,
            "pos": span_positions,
            **dict(zip(self._past, past, strict=True)),
        }
        logits, *new = self._run("decode", feeds)  # (n, 1, V); each (n, nh, 1, hs)
        for cache, kv in zip(self._cache, new, strict=True):
            cache[slots, :, positions] = kv[slots - lo, :, 0]
        return torch.from_numpy(logits[slots - lo, -1])

    def window(self, ids: np.ndarray) -> torch.Tensor:
        if self.cache == "static":  # the static prefill on row 0, its cache thrown away
            logits, _ = self._prefill_static(np.array([0]), ids[None], np.array([len(ids)]))
            return logits[0]
        return torch.from_numpy(self.full(ids[None])[0])

    # ---- the graphs ----
    def full(self, ctx: np.ndarray) -> np.ndarray:
        """Last-position logits (B, V) of ``ctx`` (B, T <= block_size), through the full-context graph.

        A fixed-length graph gets ``ctx`` padded on the right (attention is causal, so the padding
        cannot change the logits at ``T - 1``), and rows of zeros up to its fixed batch.
        """
        B, T = ctx.shape
        batch, length = self._inputs["full"]["idx"]
        if isinstance(batch, int) and B > batch:
            raise ValueError(f"the full-context graph was exported for batch {batch}, not {B}")
        if not isinstance(length, int):  # a dynamic length; an .om takes only its --dynamic_dims lengths
            length = min((d for d in self._dims if d >= T), default=T) if "full" in self._runners else T
        padded = np.zeros((batch if isinstance(batch, int) else B, length), dtype=np.int64)
        padded[:B, :T] = ctx
        (logits,) = self._run("full", {"idx": padded})
        return logits[:B, T - 1, :]

    def _shape(self, graph: str, name: str) -> tuple[int, ...]:
        """The fixed shape of an input of a static graph."""
        return tuple(int(d) for d in self._inputs[graph][name])

    def _prefill_static(
        self, rows: np.ndarray, ids: np.ndarray, lengths: np.ndarray
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """The static prefill with ``ids[i]`` in batch row ``rows[i]`` (the other rows padding): their logits
        (B, V), and every row's cache (batch, nh, block_size, hs), row ``rows[i]`` valid up to ``lengths[i] - 1``."""
        window = np.zeros(self._shape("prefill_static", "idx"), dtype=np.int64)  # (batch, block_size)
        window[rows, : ids.shape[1]] = ids
        length = np.ones(self._shape("prefill_static", "length"), dtype=np.int64)
        length[rows if self._per_row else 0] = lengths
        logits, *present = self._run("prefill_static", {"idx": window, "length": length})  # (batch, 1, V)
        return torch.from_numpy(logits[rows, -1]), present

    def _prefill_rows(self, slots: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """The static prefill of ``ids`` into ``slots`` (each slot is its batch row), their caches kept."""
        logits, present = self._prefill_static(slots, ids, lengths)
        for cache, kv in zip(self._cache, present, strict=True):
            cache[slots] = kv[slots]
        return logits

    def _decode_static(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> torch.Tensor:
        """One token per row through the static decode: every row of its fixed batch goes in; the rows not
        stepped get token 0 at position 0, and their caches are kept as they were."""
        idx = np.zeros(self._shape("decode_static", "idx"), dtype=np.int64)  # (batch, 1)
        pos = np.zeros(self._shape("decode_static", "pos"), dtype=np.int64)
        idx[slots, 0], pos[slots if self._per_row else 0] = tokens, positions
        feeds: dict[str, np.ndarray] = {"idx": idx, "pos": pos, **dict(zip(self._past, self._cache, strict=True))}
        logits, *present = self._run("decode_static", feeds)
        if len(slots) == self._rows:
            self._cache = present
        else:
            for cache, kv in zip(self._cache, present, strict=True):
                cache[slots] = kv[slots]
        return torch.from_numpy(logits[slots, -1])


def open_export(
    folder: str | Path,
    int8: bool = False,
    backend: str = "auto",
    cache: str = "auto",
    max_batch: int = 1,
    threads: int | None = None,
) -> tuple[ExportedGPT, str]:
    """The export in ``folder`` on the best backend installed, and that backend's name.

    ``auto`` picks an Ascend backend when one is installed (``lit_nanogpt.export.ascend.ascend_runners``:
    the ``.om`` through ais_bench, else onnxruntime's CANN execution provider), else onnxruntime on CPU;
    with ``int8`` it is the CPU (the int8 graphs are CPU-only). ``cache="auto"`` is ``static`` on the
    Ascend backends (fixed shapes: one compiled model per graph) and ``dynamic`` on the CPU.
    ``max_batch`` rows are held at once, at most the static pair's batch where it runs. ``threads``: onnxruntime's
    on the CPU (``ExportedGPT``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r} is not one of {', '.join(CACHES)}")
    if int8 and backend in ("cann", "om"):
        raise ValueError(
            f"--int8 runs on the CPU only, not with --backend {backend}: the int8 graphs' DynamicQuantizeLinear "
            "and MatMulInteger are not ops atc parses, and the CANN provider runs them on the CPU; for int8 on "
            "Ascend quantize with Ascend's AMCT (docs/export.md)"
        )
    manifest = Manifest.read(folder)
    if backend != "cpu" and not int8:
        if (on := ascend_runners(Path(folder), manifest, backend, cache)) is not None:
            exported = ExportedGPT(folder, manifest=manifest, cache=on.cache, runners=on.runners, max_batch=max_batch)
            return exported, on.name
    cache = "dynamic" if cache == "auto" else cache
    return ExportedGPT(folder, int8, threads, manifest=manifest, cache=cache, max_batch=max_batch), "cpu"
