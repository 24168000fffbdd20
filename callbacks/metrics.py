"""``tokens_per_s``, ``mfu`` (model FLOPs utilisation) and ``grad_norm``, computed on logging steps only, and the
run's environment."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_nanogpt.model import GPT
from lit_nanogpt.trainer_state import is_logging_step

# Dense fp16/bf16 peak FLOP/s of one device, the denominator nanoGPT's estimate_mfu uses (A100: 312e12),
# matched as a substring of the device name; the first match wins, so specific names come first.
# Vendor figures; variants differ (e.g. Ascend 910B1..B4), so pass `peak_flops` for an exact one.
PEAK_FLOPS: dict[str, float] = {
    "910B": 320e12,  # Ascend 910B (Atlas 800T A2), fp16
    "310P": 70e12,  # Ascend 310P (Atlas 300I Pro), fp16
    "A100": 312e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
}


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name (``NVIDIA A100-SXM4-80GB``, ``Ascend910B3``), or the CPU's."""
    # torch.cuda and torch.npu (registered by torch_npu) both have get_device_name; no vendor branch needed.
    get_name = getattr(getattr(torch, device.type, None), "get_device_name", None)
    if device.type != "cpu" and callable(get_name):
        return str(get_name(device))
    return platform.processor() or platform.machine() or device.type


def peak_flops_for(name: str) -> float | None:
    """The table's peak FLOP/s for a device name, or ``None`` when it is not known (CPUs, other GPUs)."""
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer measures the work and not its queueing (CPU: no-op)."""
    # torch.cuda and torch.npu (registered by torch_npu) both have synchronize(device): looked up by the
    # device's type, so no vendor is named here. Lightning's ThroughputMonitor syncs CUDA only.
    sync = getattr(torch.get_device_module(device), "synchronize", None)
    if device.type != "cpu" and callable(sync):
        sync(device)


def total_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of all gradients together, as ``clip_grad_norm_`` measures it; ``None`` with no gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])  # (n_tensors,)
    return torch.linalg.vector_norm(norms)


def run_environment(trainer: L.Trainer) -> dict[str, Any]:
    """What ran the job: accelerator, device and the versions of the packages that decide the numbers."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__), "lightning": L.__version__}
    # torch_npu is looked up, never imported: importing it changes torch, and it may be absent.
    for package in ("torch_npu", "wandb"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "device": device_name(trainer.strategy.root_device),
        "num_devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
        "versions": versions,
    }


class TrainingMetrics(Callback):
    def __init__(self, peak_flops: float | None = None) -> None:
        """Log ``tokens_per_s``, ``mfu`` and ``grad_norm`` on logging steps, and the run's environment once.

        Nothing is computed on other steps. A logging step is timed once: the device is synchronised
        before it and after it, so the timer measures the work, not its queueing, and ``tokens_per_s``
        and ``mfu`` are both computed from those seconds.

        Args:
            peak_flops: Peak FLOP/s of one device for ``mfu``; default looked up by device name in
                ``PEAK_FLOPS`` (Ascend 910B/310P, A100, H100, H200). With neither, ``mfu`` is not logged.
        """
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops={peak_flops} must be positive, e.g. 312e12 for an A100 in bf16")
        self.peak_flops = peak_flops
        self._peak: float | None = None
        self._start: float | None = None  # perf_counter() at the start of the logging step being timed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        env = run_environment(trainer)
        self._peak = self.peak_flops or peak_flops_for(env["device"])
        env["peak_flops"] = self._peak
        for logger in trainer.loggers:
            logger.log_hyperparams(env)
        if self._peak is None and trainer.loggers:
            rank_zero_info(
                f"mfu is not logged: no known peak FLOP/s for {env['device']!r}; "
                "set the TrainingMetrics callback's peak_flops (e.g. 312e12) to log it"
            )

    @staticmethod
    def _logging(trainer: L.Trainer) -> bool:
        # Lightning's LearningRateMonitor asks the same question the same way.
        return bool(trainer.loggers) and is_logging_step(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Only logging steps are timed: a sync every step would slow every step. That rules out Lightning's
        # ThroughputMonitor, which synchronises after every batch (on CUDA only).
        self._start = None
        if self._logging(trainer):
            synchronize(pl_module.device)
            self._start = time.perf_counter()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # After the precision plugin unscales fp16 gradients and before clipping: the norm nanoGPT clips.
        if not self._logging(trainer):
            return
        if (norm := total_grad_norm(list(pl_module.parameters()))) is not None:
            pl_module.log("grad_norm", norm)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:  # not a logging step, or one whose start was not timed
            return
        synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start
        # Lightning's Throughput formulas (items/s; FLOP/s per device over its peak), not its windowed
        # calculator: that takes rates between consecutive updates, and here one step in N is timed.
        x = batch[0]  # (B, T) on this device
        pl_module.log("tokens_per_s", x.numel() * trainer.world_size / seconds)  # all devices
        if self._peak is not None:
            flops = cast(GPT, pl_module.model).flops_per_token(x.shape[1]) * x.numel()  # this device's
            pl_module.log("mfu", flops / seconds / self._peak)
