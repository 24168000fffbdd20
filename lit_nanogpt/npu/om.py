"""Run an export on Ascend (untested here): the ``.om`` that ``atc`` compiled from ``full.onnx``, through
ais_bench, or the ONNX graphs through onnxruntime's CANN execution provider.

ais_bench (https://gitee.com/ascend/tools, ``ais_bench.infer.interface.InferSession``) wraps pyACL's
model loading and memory copies. Nothing here is imported unless an export is opened on Ascend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lit_nanogpt.export.manifest import Manifest
    from lit_nanogpt.export.onnxrt import ExportedGPT


def ais_bench_available() -> bool:
    """Whether ais_bench's inference interface can be imported; never raises."""
    try:
        return importlib.util.find_spec("ais_bench.infer.interface") is not None
    except (ImportError, ValueError):
        return False


def om_runner(path: Path, device_id: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function from ``idx`` (B, T) int64 to logits (B, T, V) float32 on the Ascend device ``device_id``."""
    from ais_bench.infer.interface import InferSession

    session = InferSession(device_id, str(path))
    dynamic = session.get_inputs()[0].shape[-1] == -1

    def run(idx: np.ndarray) -> np.ndarray:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        (logits,) = session.infer([idx], mode="dymdims" if dynamic else "static")
        return np.asarray(logits, dtype=np.float32).reshape(*idx.shape, -1)

    return run


def open_on_ascend(folder: Path, manifest: Manifest, int8: bool, backend: str) -> tuple[ExportedGPT, str] | None:
    """The export on an Ascend backend and its name, or ``None`` when ``backend="auto"`` finds none.

    ``om``: the ``.om`` through ais_bench (its graph is fp32: ``int8`` does not apply); ``cann``: the
    ONNX graphs through onnxruntime's CANN execution provider; ``auto``: the first of the two installed.
    """
    from lit_nanogpt.export.onnxrt import ExportedGPT

    om = manifest.atc.om if manifest.atc is not None else None
    if backend in ("auto", "om"):
        if om and ais_bench_available():
            return ExportedGPT(folder, False, full_runner=om_runner(folder / om), manifest=manifest), "om"
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
    return None
