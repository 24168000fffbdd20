"""``NPUAccelerator``: Lightning's ``Accelerator`` for Huawei Ascend NPUs (through ``torch_npu``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.accelerators.registry import _AcceleratorRegistry
from lightning.fabric.utilities.types import _DEVICE
from lightning.pytorch.accelerators import Accelerator
from typing_extensions import override

from lit_nanogpt.npu.runtime import VISIBLE_DEVICES_ENV, npu_available, npu_module, visible_device_count

_log = logging.getLogger(__name__)


class NPUAccelerator(Accelerator):
    """Accelerator for Ascend NPUs; device indices count within ``ASCEND_RT_VISIBLE_DEVICES``."""

    @override
    def setup_device(self, device: torch.device) -> None:
        if device.type != "npu":
            raise ValueError(f"NPUAccelerator got device {device}: give it an NPU device such as 'npu:0'")
        npu_module().set_device(device)

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        visible = os.environ.get(VISIBLE_DEVICES_ENV, ",".join(map(str, range(visible_device_count()))))
        _log.info(f"LOCAL_RANK: {trainer.local_rank} - {VISIBLE_DEVICES_ENV}: [{visible}]")
        npu_module().empty_cache()

    @override
    def teardown(self) -> None:
        if npu_available():
            torch.npu.empty_cache()  # type: ignore[attr-defined]

    @override
    def get_device_stats(self, device: _DEVICE) -> dict[str, Any]:
        """``torch.npu.memory_stats``: allocated, reserved and peak bytes of the device, as for CUDA."""
        return dict(npu_module().memory_stats(device))

    @staticmethod
    @override
    def parse_devices(devices: int | str | list[int] | tuple[int, ...]) -> list[int]:
        """Device indices from ``Trainer(devices=...)``.

        ``2`` or ``"2"``: the first two; ``-1``, ``"-1"`` or ``"auto"``: all visible; ``[1, 3]`` or
        ``"1,3"``: those indices. A ``ValueError`` names what is asked and what is there.
        """
        available = visible_device_count()
        env = f"{VISIBLE_DEVICES_ENV}={os.environ.get(VISIBLE_DEVICES_ENV)}"
        where = f"{available} NPU(s) visible (torch.npu.device_count(), {env})"
        if isinstance(devices, str):
            text = devices.strip()
            if text == "auto":
                devices = -1
            elif "," in text:
                try:
                    devices = [int(d) for d in text.split(",") if d.strip()]
                except ValueError:
                    raise ValueError(f"devices={text!r} is not a list of NPU indices: write e.g. '0,1'") from None
            else:
                try:
                    devices = int(text)
                except ValueError:
                    raise ValueError(f"devices={text!r} is not a number of NPUs: write e.g. 1, -1 or '0,1'") from None
        if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
            raise ValueError(f"devices={devices!r} is not understood: give a count, -1, 'auto' or a list of indices")
        if isinstance(devices, int):
            if devices == -1:
                devices = available
            if devices < 1:
                raise ValueError(f"devices={devices} must be a positive number of NPUs, -1 or 'auto'")
            if devices > available:
                raise ValueError(f"devices={devices} asks for {devices} NPUs but there are {where}: ask for fewer")
            return list(range(devices))
        indices = list(devices)
        if not indices or len(set(indices)) != len(indices):
            raise ValueError(f"devices={indices} must list distinct NPU indices, e.g. [0, 1]")
        if missing := [i for i in indices if not isinstance(i, int) or not 0 <= i < available]:
            raise ValueError(f"devices={indices}: no NPU {missing}; there are {where}, indices 0..{available - 1}")
        return indices

    @staticmethod
    @override
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        return [torch.device("npu", i) for i in devices]

    @staticmethod
    @override
    def auto_device_count() -> int:
        return visible_device_count()

    @staticmethod
    @override
    def is_available() -> bool:
        return npu_available()

    @staticmethod
    @override
    def name() -> str:
        return "npu"

    @classmethod
    @override
    def register_accelerators(cls, accelerator_registry: _AcceleratorRegistry) -> None:
        if cls.name() not in accelerator_registry:
            accelerator_registry.register(cls.name(), cls, description=cls.__name__)
