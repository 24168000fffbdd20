"""Lightning's single-device and DDP strategies on NPUs, saving checkpoints (``AtomicCheckpointIO``) that load
without ``torch_npu``."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.strategies.registry import _StrategyRegistry
from lightning.pytorch.overrides.distributed import _register_ddp_comm_hook
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lit_nanogpt.checkpoint_io import AtomicCheckpointIO
from lit_nanogpt.npu.runtime import npu_module


class SingleNPUStrategy(SingleDeviceStrategy):
    """One NPU: Lightning's ``SingleDeviceStrategy`` rooted at ``npu:N``."""

    strategy_name = "single_npu"

    def __init__(self, device: str | int | torch.device = "npu:0", **kwargs: Any) -> None:
        """
        Args:
            device: The NPU, e.g. ``"npu:1"``; an int is taken as the index.
            kwargs: ``accelerator``, ``checkpoint_io``, ``precision_plugin`` as for ``SingleDeviceStrategy``.
        """
        device = f"npu:{device}" if isinstance(device, int) else device
        if str(device).startswith("npu"):
            npu_module(f"SingleNPUStrategy(device={str(device)!r})")  # imports torch_npu: "npu" becomes a device type
        kwargs["checkpoint_io"] = kwargs.get("checkpoint_io") or AtomicCheckpointIO()
        super().__init__(device=torch.device(device), **kwargs)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        if cls.strategy_name not in strategy_registry:
            strategy_registry.register(cls.strategy_name, cls, description=cls.__doc__)


class DDPNPUStrategy(DDPStrategy):
    """Several NPUs: Lightning's ``DDPStrategy`` with CANN's ``hccl`` collective backend.

    Everything but the backend is Lightning's, so the same class runs on CPUs with ``gloo`` (as the
    tests do) through the same code paths.
    """

    strategy_name = "ddp_npu"

    def __init__(self, process_group_backend: str | None = "hccl", **kwargs: Any) -> None:
        """
        Args:
            process_group_backend: ``torch.distributed`` backend; ``hccl`` on NPUs, ``gloo`` on CPUs.
            kwargs: Any other argument of Lightning's ``DDPStrategy`` (``start_method``, ``timeout``, ...).
        """
        kwargs["checkpoint_io"] = kwargs.get("checkpoint_io") or AtomicCheckpointIO()
        super().__init__(process_group_backend=process_group_backend, **kwargs)

    @override
    def _setup_model(self, model: torch.nn.Module) -> DistributedDataParallel:
        """Wrap in DDP as Lightning does, but on an NPU side stream where Lightning makes a CUDA one.

        Lightning's ``DDPStrategy._setup_model`` enters ``torch.cuda.stream(torch.cuda.Stream())``
        whenever ``device_ids`` is set, i.e. on any device but the CPU; torch_npu runs on a CPU build
        of torch, where ``torch.cuda.Stream()`` raises. CPU (``gloo``) and CUDA keep Lightning's path.
        """
        if self.root_device.type != "npu":
            return super()._setup_model(model)
        npu = npu_module("DDPNPUStrategy on an NPU")
        device_ids = self.determine_ddp_device_ids()  # [root_device.index]
        with npu.stream(npu.Stream(self.root_device)):
            return DistributedDataParallel(module=model, device_ids=device_ids, **self._ddp_kwargs)

    @override
    def _register_ddp_hooks(self) -> None:
        """Lightning registers ``ddp_comm_hook`` on CUDA only; torch's hook API is device-agnostic."""
        if self.root_device.type == "npu" and self._ddp_comm_hook is not None:
            assert isinstance(self.model, DistributedDataParallel)
            _register_ddp_comm_hook(
                model=self.model,
                ddp_comm_state=self._ddp_comm_state,
                ddp_comm_hook=self._ddp_comm_hook,
                ddp_comm_wrapper=self._ddp_comm_wrapper,
            )
        else:
            super()._register_ddp_hooks()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        if cls.strategy_name not in strategy_registry:
            strategy_registry.register(cls.strategy_name, cls, description=cls.__doc__)
