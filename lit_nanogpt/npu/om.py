"""Run the ``.om`` that ``atc`` compiled from ``full.onnx``, through ais_bench (Ascend only, untested here).

ais_bench (https://gitee.com/ascend/tools, ``ais_bench.infer.interface.InferSession``) wraps pyACL's
model loading and memory copies. Nothing here is imported unless an ``.om`` is to be run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np


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
