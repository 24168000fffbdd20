"""Generate from an export folder with onnxruntime, the same way ``GPT.generate`` does in PyTorch.

The prompt goes through ``prefill.onnx`` once, then each new token through ``decode.onnx`` with the
keys and values of every earlier position, so a token costs one position instead of the whole
context. Past ``block_size`` the window slides and every position shifts; ``window="exact"`` then
runs ``full.onnx`` on the last ``block_size`` tokens per token, as nanoGPT does, and
``window="half"`` instead re-prefills the last ``block_size // 2`` tokens whenever the cache is full
(cheaper, each token then sees between half and all of ``block_size``; see docs/export.md).

``cache="static"`` runs the static-shape pair instead (``prefill_static.onnx``, ``decode_static.onnx``:
every shape fixed, for atc and the CANN provider): the prompt right-padded to ``block_size``, then
each token written into its slot of a ``block_size``-position cache. Past ``block_size`` the exact
window re-runs ``prefill_static`` on the last ``block_size`` tokens per token: the same cost as
``full.onnx``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nanogpt.export.ascend import Runner, ascend_runners
from lit_nanogpt.export.manifest import STATIC_GRAPHS, Manifest, past_names
from lit_nanogpt.model import sample_next
from lit_nanogpt.text import Vocabulary

WINDOWS = ("exact", "half")
BACKENDS = ("auto", "cpu", "cann", "om")
CACHES = ("auto", "dynamic", "static")


def _session(path: Path, providers: list[Any], threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # Spinning worker threads wait for work by burning a core; on a shared or busy CPU that halves
    # the speed of batch-1 decoding (measured in BENCHMARKS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


class ExportedGPT:
    """An export folder loaded into onnxruntime: ``generate`` and teacher-forced ``nll``, batch first."""

    def __init__(
        self,
        folder: str | Path,
        int8: bool = False,
        providers: list[Any] | None = None,
        threads: int | None = None,
        full_runner: Callable[[np.ndarray], np.ndarray] | None = None,
        manifest: Manifest | None = None,
        cache: str = "dynamic",
        runners: dict[str, Runner] | None = None,
    ) -> None:
        """Open the graphs of ``folder``.

        Args:
            folder: An export folder (``manifest.json`` and its graphs).
            int8: Use the int8-weight graphs (``*.int8.onnx``).
            providers: onnxruntime execution providers; default CPU.
            threads: onnxruntime intra-op threads; default one for decode, one per core for the others.
            full_runner: Runs the full-context graph instead of onnxruntime (e.g. an ``.om`` on Ascend);
                it takes ``idx`` (B, T) int64 and returns logits (B, T, V). Generation then uses no cache.
            manifest: ``Manifest.read(folder)`` when the caller has it already (it hashes every file).
            cache: ``dynamic`` (``prefill``/``decode``, growing cache, and ``full`` past block_size) or
                ``static`` (``prefill_static``/``decode_static``, every shape fixed).
            runners: Run these graphs (by name) instead of onnxruntime, e.g. the static pair's ``.om`` files.
        """
        if cache not in ("dynamic", "static"):
            raise ValueError(f"cache={cache!r} is not 'dynamic' or 'static'")
        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else Manifest.read(self.folder)
        self.vocab = Vocabulary(self.manifest.vocab)
        self.block_size = self.manifest.block_size
        self.n_layer = self.manifest.model.n_layer
        self.cache = cache
        if cache == "static" and int8:
            raise ValueError("the static KV-cache graphs have no int8 copies (int8 is for onnxruntime on CPU): "
                             "use --cache dynamic with --int8")  # fmt: skip
        suffix = "_int8" if int8 else ""
        graphs = self.manifest.graphs
        names = STATIC_GRAPHS if cache == "static" else ("full", "prefill", "decode")
        missing = [g + suffix for g in names if g + suffix not in graphs]
        if missing:
            hint = "export with int8 enabled" if int8 else "export again (lit-nanogpt export)"
            raise ValueError(f"{self.folder} has no {', '.join(missing)} graph: {hint}")
        self._files = {g: self.folder / graphs[g + suffix].file for g in names}
        self._shapes = {g: {t.name: t.shape for t in graphs[g + suffix].inputs} for g in names}
        full_shape = graphs["full" + suffix].inputs[0].shape  # [batch, block_size] or [batch, "seq"]
        self._full_batch = full_shape[0] if isinstance(full_shape[0], int) else None
        self._full_len = full_shape[1] if isinstance(full_shape[1], int) else None
        self._runners = dict(runners or {})
        self._dims = self.manifest.dynamic_dims or []
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        self._full_runner = full_runner
        self._past = past_names(self.n_layer, "past")

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if graph in self._runners:
            return self._runners[graph](feeds)
        if graph not in self._sessions:
            # One token's matmuls are too small to split across threads with any gain.
            threads = self._threads or (1 if graph.startswith("decode") else None)
            self._sessions[graph] = _session(self._files[graph], self._providers, threads)
        return self._sessions[graph].run(None, feeds)

    # ---- the three graphs ----
    def full(self, ctx: np.ndarray) -> np.ndarray:
        """Last-position logits (B, V) of ``ctx`` (B, T <= block_size), through the full-context graph.

        A fixed-length graph gets ``ctx`` padded on the right: attention is causal, so the padding
        cannot change the logits at ``T - 1``.
        """
        B, T = ctx.shape
        if self._full_batch is not None and B != self._full_batch:
            raise ValueError(f"the full-context graph was exported for batch {self._full_batch}, not {B}")
        length = self._full_len
        if length is None and self._full_runner is not None:  # an .om takes only its --dynamic_dims lengths
            length = min((d for d in self._dims if d >= T), default=T)
        if length is not None and T < length:
            ctx = np.concatenate([ctx, np.zeros((B, length - T), dtype=np.int64)], axis=1)
        if self._full_runner is not None:
            logits = self._full_runner(ctx)
        else:
            (logits,) = self._run("full", {"idx": ctx})
        return logits[:, T - 1, :]

    def prefill(self, idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Last-position logits (B, V) of ``idx`` (B, T) and the cache: key_0, value_0, ... (B, nh, T, hs)."""
        logits, *cache = self._run("prefill", {"idx": idx})
        return logits[:, -1, :], cache

    def decode(self, idx: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, V) of one new token per row ``idx`` (B, 1) after ``cache``, and the cache one longer."""
        logits, *cache = self._run("decode", {"idx": idx, **dict(zip(self._past, cache, strict=True))})
        return logits[:, -1, :], cache

    def prefill_static(self, idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """``prefill`` through the static graph: ``idx`` (B, T <= block_size) right-padded to block_size;
        the cache is key_0, value_0, ... (B, nh, block_size, hs), valid up to position T - 1."""
        B, T = idx.shape
        batch, block = self._shapes["prefill_static"]["idx"]
        if B != batch:
            raise ValueError(
                f"the static graphs were exported for batch {batch}, not {B}: export with --batch_size {B}"
            )
        window = np.zeros((B, int(block)), dtype=np.int64)
        window[:, :T] = idx
        logits, *cache = self._run("prefill_static", {"idx": window, "length": np.array([T], dtype=np.int64)})
        return logits[:, -1, :], cache

    def decode_static(self, idx: np.ndarray, pos: int, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, V) of ``idx`` (B, 1) at position ``pos``, and ``cache`` with its key and value written there."""
        feeds = {"idx": idx, "pos": np.array([pos], dtype=np.int64), **dict(zip(self._past, cache, strict=True))}
        logits, *cache = self._run("decode_static", feeds)
        return logits[:, -1, :], cache

    # ---- the loop ----
    def _extend(
        self,
        idx: np.ndarray,
        steps: int,
        pick: Callable[[np.ndarray, int], np.ndarray],
        use_cache: bool = True,
        window: str = "exact",
    ) -> np.ndarray:
        """Run ``steps`` tokens: ``pick(logits (B, V), step)`` returns the next ids (B, 1)."""
        if window not in WINDOWS:
            raise ValueError(f"window={window!r} is not one of {', '.join(WINDOWS)}")
        block = self.block_size
        keep = max(1, block // 2)
        static = self.cache == "static"
        use_cache = use_cache and (static or self._full_runner is None)
        cache: list[np.ndarray] | None = None
        cached = 0  # positions held by the cache
        for step in range(steps):
            if use_cache and cache is not None and cached < block:
                if static:
                    logits, cache = self.decode_static(idx[:, -1:], cached, cache)
                else:
                    logits, cache = self.decode(idx[:, -1:], cache)
                cached += 1
            elif use_cache and (idx.shape[1] <= block or window == "half"):
                # The first step, or (window="half") a full cache: start again from the last tokens.
                ctx = idx[:, -block:] if cache is None else idx[:, -keep:]
                logits, cache = self.prefill_static(ctx) if static else self.prefill(ctx)
                cached = ctx.shape[1]
            elif static:  # the exact sliding window: the whole last window again, as full.onnx would
                logits, _ = self.prefill_static(idx[:, -block:])
            else:
                logits = self.full(idx[:, -block:])
            idx = np.concatenate([idx, pick(logits, step)], axis=1)
        return idx

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        window: str = "exact",
        generator: torch.Generator | None = None,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """``GPT.generate`` on the exported graphs: same arguments, same sampling (``sample_next``)."""

        def pick(logits: np.ndarray, step: int) -> np.ndarray:
            token = sample_next(torch.from_numpy(logits), temperature, top_k, generator)  # (B, 1)
            if on_token is not None:
                on_token(token)
            return token.numpy()

        out = self._extend(idx.cpu().numpy().astype(np.int64), max_new_tokens, pick, use_cache, window)
        return torch.from_numpy(out)

    def nll(self, ids: np.ndarray, start: int = 1, use_cache: bool = True, window: str = "exact") -> float:
        """Mean negative log-likelihood of ``ids[start:]`` (1-D), each token predicted with the context
        ``generate`` would give it: measures what a windowing scheme or a quantization costs."""
        ids = np.asarray(ids, dtype=np.int64)
        losses: list[float] = []

        def pick(logits: np.ndarray, step: int) -> np.ndarray:
            target = ids[start + step]
            z = logits[0].astype(np.float64)
            losses.append(float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[target]))
            return np.array([[target]], dtype=np.int64)

        self._extend(ids[None, :start], len(ids) - start, pick, use_cache, window)
        return float(np.mean(losses))


def open_export(
    folder: str | Path, int8: bool = False, backend: str = "auto", cache: str = "auto"
) -> tuple[ExportedGPT, str]:
    """The export in ``folder`` on the best backend installed, and that backend's name.

    ``auto`` picks an Ascend backend when one is installed (``lit_nanogpt.export.ascend.ascend_runners``:
    the ``.om`` through ais_bench, else onnxruntime's CANN execution provider), else onnxruntime on CPU;
    with ``int8`` it is the CPU (the int8 graphs are CPU-only). ``cache="auto"`` is ``static`` on the
    Ascend backends (fixed shapes: one compiled model per graph) and ``dynamic`` on the CPU.
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
            exported = ExportedGPT(folder, manifest=manifest, cache=on.cache, providers=on.providers,
                                   full_runner=on.full_runner, runners=on.runners)  # fmt: skip
            return exported, on.name
    return ExportedGPT(folder, int8, manifest=manifest, cache="dynamic" if cache == "auto" else cache), "cpu"
