"""What ``Trainer`` must be given for ``accelerator="npu"``, which Lightning 2.6 cannot work out alone.

Registered as ``"npu"``, the accelerator is found, but Lightning's connector then builds a CPU
``SingleDeviceStrategy`` and a ``MixedPrecision`` for ``"cuda"``. ``npu_trainer_flags`` returns the
accelerator, strategy and precision plugin to pass instead; the CLI applies it to every run.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from lightning.fabric.connector import _convert_precision_to_unified_args
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import Strategy

from lit_nanogpt.npu.accelerator import NPUAccelerator
from lit_nanogpt.npu.precision import SUPPORTED, NPUPrecision
from lit_nanogpt.npu.runtime import missing_npu_message, npu_available
from lit_nanogpt.npu.strategies import DDPNPUStrategy, SingleNPUStrategy

_STRATEGIES = ("auto", "ddp", DDPNPUStrategy.strategy_name, SingleNPUStrategy.strategy_name)


def _wants_npu(accelerator: Any) -> bool:
    if isinstance(accelerator, NPUAccelerator) or (isinstance(accelerator, str) and accelerator.lower() == "npu"):
        return True
    # "auto" takes an NPU when one is there and no GPU is (Lightning's own choice would be the CPU).
    return accelerator in (None, "auto") and not torch.cuda.is_available() and npu_available()


def npu_trainer_flags(trainer: dict[str, Any]) -> dict[str, Any]:
    """Overrides of ``Trainer`` arguments that put the run on NPUs; ``{}`` when it is not an NPU run.

    Args:
        trainer: The ``Trainer`` arguments as configured (``accelerator``, ``devices``, ``strategy``,
            ``precision``, ``plugins``, ``num_nodes``).

    Returns:
        ``accelerator``, ``strategy``, ``precision`` and ``plugins`` to pass to ``Trainer`` instead.
    """
    if not _wants_npu(trainer.get("accelerator", "auto")):
        return {}
    if not npu_available():
        raise ValueError(missing_npu_message())
    flags: dict[str, Any] = {"accelerator": NPUAccelerator()}

    strategy = trainer.get("strategy", "auto")
    if not isinstance(strategy, Strategy):
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not supported on NPUs: use one of {', '.join(_STRATEGIES)}")
        devices = NPUAccelerator.parse_devices(trainer.get("devices", "auto"))
        several = len(devices) > 1 or trainer.get("num_nodes", 1) > 1
        if strategy == SingleNPUStrategy.strategy_name and several:
            raise ValueError(f"strategy='single_npu' runs on one NPU but devices={devices}: use strategy ddp_npu")
        if several or strategy not in ("auto", SingleNPUStrategy.strategy_name):
            flags["strategy"] = DDPNPUStrategy()
        else:
            flags["strategy"] = SingleNPUStrategy(device=devices[0])

    plugins = trainer.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, Precision) for p in plugins):
        precision = _convert_precision_to_unified_args(trainer.get("precision")) or "32-true"
        if precision not in SUPPORTED:
            raise ValueError(f"precision={precision!r} is not supported on NPUs: use one of {', '.join(SUPPORTED)}")
        flags["plugins"] = [*plugins, NPUPrecision(cast(Any, precision), device="npu")]
        flags["precision"] = None
    return flags
