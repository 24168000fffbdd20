"""Huawei Ascend NPU support: accelerator, strategies and precision plugin, registered with Lightning.

Nothing here imports ``torch_npu`` until an NPU is asked for; ``npu_available()`` never raises.
Python users who build their own ``Trainer`` pass the pieces explicitly::

    Trainer(accelerator=NPUAccelerator(), strategy=SingleNPUStrategy("npu:0"), plugins=[NPUPrecision("16-mixed")])
"""

from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry

from lit_nanogpt.npu.accelerator import NPUAccelerator
from lit_nanogpt.npu.precision import NPUPrecision
from lit_nanogpt.npu.runtime import npu_available
from lit_nanogpt.npu.selection import npu_trainer_flags
from lit_nanogpt.npu.strategies import DDPNPUStrategy, SingleNPUStrategy

NPUAccelerator.register_accelerators(AcceleratorRegistry)
SingleNPUStrategy.register_strategies(StrategyRegistry)
DDPNPUStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "DDPNPUStrategy",
    "NPUAccelerator",
    "NPUPrecision",
    "SingleNPUStrategy",
    "npu_available",
    "npu_trainer_flags",
]
