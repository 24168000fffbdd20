"""Generate from an export folder with onnxruntime, the same way ``GPT.generate`` does in PyTorch.

The prompt goes through ``prefill.onnx`` once, then each new token through ``decode.onnx`` with the
keys and values of every earlier position, so a token costs one position instead of the whole
context. Past ``block_size`` the window slides and every position shifts; ``window="exact"`` then
runs ``full.onnx`` on the last ``block_size`` tokens per token, as nanoGPT does, and
``window="half"`` instead re-prefills the last ``block_size // 2`` tokens whenever the cache is full
(cheaper, each token then sees between half and all of ``block_size``; see docs/export.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nanogpt.data import Vocabulary
from lit_nanogpt.export import FORMAT, FORMAT_VERSION, MANIFEST, past_names, sha256
from lit_nanogpt.model import sample_next

WINDOWS = ("exact", "half")
BACKENDS = ("auto", "cpu", "cann", "om")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder, checked against the files beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist: pass a folder written by lit-nanogpt export")
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: it is not a complete lit-nanogpt export; export again")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
        files, graphs, vocab = manifest["files"], manifest["graphs"], manifest["vocab"]
        int(manifest["block_size"])
        if not (isinstance(files, dict) and isinstance(graphs, dict) and isinstance(vocab, str)):
            raise TypeError("files and graphs must be objects and vocab a string")
    except Exception as e:
        raise ValueError(
            f"{path} is damaged or not a lit-nanogpt manifest ({type(e).__name__}: {e}); export again"
        ) from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {manifest['format_version']}: upgrade lit-nanogpt to read it")
    for name, digest in files.items():
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{folder}: the manifest lists {name} but it is missing; export again")
        if sha256(file) != digest:
            raise ValueError(
                f"{folder}: {name} does not match the manifest's sha256 (changed or damaged); export again"
            )
    for graph in graphs.values():
        if graph["file"] not in files:
            raise ValueError(f"{folder}: graph {graph['file']} is not listed in the manifest's files; export again")
    return manifest


def _session(path: Path, providers: list[str], threads: int | None):
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
        providers: list[str] | None = None,
        threads: int | None = None,
        full_runner: Callable[[np.ndarray], np.ndarray] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        """Open the graphs of ``folder``.

        Args:
            folder: An export folder (``manifest.json`` and its graphs).
            int8: Use the int8-weight graphs (``*.int8.onnx``).
            providers: onnxruntime execution providers; default CPU.
            threads: onnxruntime intra-op threads; default one for decode, one per core for the others.
            full_runner: Runs the full-context graph instead of onnxruntime (e.g. an ``.om`` on Ascend);
                it takes ``idx`` (B, T) int64 and returns logits (B, T, V). Generation then uses no cache.
            manifest: ``read_manifest(folder)`` when the caller has it already (it hashes every file).
        """
        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else read_manifest(self.folder)
        self.vocab = Vocabulary(self.manifest["vocab"])
        self.block_size = int(self.manifest["block_size"])
        self.n_layer = int(self.manifest["model"]["n_layer"])
        suffix = "_int8" if int8 else ""
        graphs = self.manifest["graphs"]
        missing = [g + suffix for g in ("full", "prefill", "decode") if g + suffix not in graphs]
        if missing:
            hint = "export with int8 enabled" if int8 else "export again"
            raise ValueError(f"{self.folder} has no {', '.join(missing)} graph: {hint}")
        self._files = {g: self.folder / graphs[g + suffix]["file"] for g in ("full", "prefill", "decode")}
        full_shape = graphs["full" + suffix]["inputs"][0]["shape"]  # [batch, block_size] or [batch, "seq"]
        self._full_batch = full_shape[0] if isinstance(full_shape[0], int) else None
        self._full_len = full_shape[1] if isinstance(full_shape[1], int) else None
        self._dims = self.manifest.get("dynamic_dims") or []
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        self._full_runner = full_runner
        self._past = past_names(self.n_layer, "past")

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if graph not in self._sessions:
            # One token's matmuls are too small to split across threads with any gain.
            threads = self._threads or (1 if graph == "decode" else None)
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
        use_cache = use_cache and self._full_runner is None
        cache: list[np.ndarray] | None = None
        for step in range(steps):
            cached = 0 if cache is None else cache[0].shape[2]
            if use_cache and cache is not None and cached < block:
                logits, cache = self.decode(idx[:, -1:], cache)
            elif use_cache and (idx.shape[1] <= block or window == "half"):
                # The first step, or (window="half") a full cache: start again from the last tokens.
                logits, cache = self.prefill(idx[:, -block:] if cache is None else idx[:, -keep:])
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
    ) -> torch.Tensor:
        """``GPT.generate`` on the exported graphs: same arguments, same sampling (``sample_next``)."""

        def pick(logits: np.ndarray, step: int) -> np.ndarray:
            return sample_next(torch.from_numpy(logits), temperature, top_k, generator).numpy()

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


def open_export(folder: str | Path, int8: bool = False, backend: str = "auto") -> tuple[ExportedGPT, str]:
    """The export in ``folder`` on the best backend installed, and that backend's name.

    ``auto`` picks the ``.om`` through ais_bench when both exist (Ascend), else onnxruntime's CANN
    execution provider when present, else onnxruntime on CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    manifest = read_manifest(folder)
    om = (manifest.get("atc") or {}).get("om")
    if backend in ("auto", "om"):
        try:
            from lit_nanogpt.npu.om import ais_bench_available, om_runner
        except ImportError:  # a build without the Ascend subpackage
            ais_bench_available = lambda: False  # noqa: E731
        if om and ais_bench_available():
            return ExportedGPT(folder, False, full_runner=om_runner(Path(folder) / om), manifest=manifest), "om"
        if backend == "om":
            why = "it has no .om (atc did not run)" if not om else "ais_bench is not installed"
            raise ValueError(f"backend=om cannot run {folder}: {why}; use --backend cpu")
    if backend in ("auto", "cann"):
        import onnxruntime as ort

        if "CANNExecutionProvider" in ort.get_available_providers():
            cann = ["CANNExecutionProvider", "CPUExecutionProvider"]
            return ExportedGPT(folder, int8, providers=cann, manifest=manifest), "cann"
        if backend == "cann":
            raise ValueError("backend=cann needs onnxruntime built with the CANN execution provider (onnxruntime-cann)")
    return ExportedGPT(folder, int8, manifest=manifest), "cpu"
