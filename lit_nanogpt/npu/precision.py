"""``NPUPrecision``: Lightning's ``MixedPrecision`` for any device, with a settable, logged loss scaler."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.fabric.utilities.types import Optimizable
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import GradClipAlgorithmType
from typing_extensions import override

from lit_nanogpt.npu.runtime import npu_module
from lit_nanogpt.trainer_state import is_logging_step

SUPPORTED = ("16-mixed", "bf16-mixed", "32-true")


def make_grad_scaler(device: str, init_scale: float, growth_interval: int) -> torch.amp.GradScaler:
    """``torch.amp.GradScaler(device)``, on ``"npu"`` as on ``"cuda"`` and ``"cpu"``.

    torch's scaler rather than ``torch_npu.npu.amp.GradScaler`` (torch_npu 2.13.0,
    npu/amp/grad_scaler.py): the vendor class waits on the device several times a step
    (``.item()`` at lines 229/260, 331, 499, plus an all-reduce and ``.item()`` per step under DDP
    at 475-487) where torch's waits once (its ``_maybe_opt_step``); it prints a line on every
    overflow (334, 493, 504); and its ``load_state_dict`` requires a ``dynamic`` key (459) that a
    CPU or GPU scaler never writes. torch's scaler needs only ``_amp_foreach_non_finite_check_and_unscale_``
    and ``_amp_update_scale_``, which torch_npu registers for the NPU (PrivateUse1) backend
    (csrc/aten/npu_native_functions_by_codegen.yaml:1166-1169). On chips without inf/NaN mode
    (``torch_npu.npu.utils.is_support_inf_nan()`` False) the vendor class also clears CANN's
    overflow flag before each step; pass ``scaler=torch_npu.npu.amp.GradScaler(...)`` there.
    """
    if device == "npu":
        npu_module("NPUPrecision(device='npu')")  # imports torch_npu: "npu" becomes a device type
    return torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=growth_interval)


def _is_fused(optimizer: Any) -> bool:
    """Optimizers that unscale inside ``step`` (torch's ``fused=True``) or keep flat buffers (torch_npu's)."""
    defaults = getattr(optimizer, "defaults", {})
    named_fused = "fused" in type(optimizer).__name__.lower()
    return _optimizer_handles_unscaling(optimizer) or bool(defaults.get("fused")) or named_fused


class NPUPrecision(MixedPrecision):
    """fp16 AMP with dynamic loss scaling, bf16 AMP, or fp32, on ``"npu"``, ``"cuda"`` or ``"cpu"``.

    Logs ``loss_scale`` (the scaler's current scale) and ``skipped_steps`` (optimizer steps skipped
    for inf/NaN gradients so far) on the Trainer's logging steps: reading either waits for the
    device, so other steps only queue a comparison on it.
    """

    def __init__(
        self,
        precision: Literal["16-mixed", "bf16-mixed", "32-true"] = "16-mixed",
        device: str = "npu",
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        """
        Args:
            precision: ``16-mixed`` (fp16 autocast + loss scaling), ``bf16-mixed`` (bf16 autocast, no
                scaling) or ``32-true`` (no autocast).
            device: Device type of ``torch.autocast`` and of the scaler: ``npu``, ``cuda`` or ``cpu``.
            init_scale: First loss scale of ``16-mixed``; halved on every step with inf/NaN gradients.
            growth_interval: Steps without inf/NaN after which ``16-mixed`` doubles the scale.
            scaler: A ready ``GradScaler`` instead of one built from ``init_scale`` and ``growth_interval``.
        """
        if precision not in SUPPORTED:
            raise ValueError(f"precision={precision!r} is not supported by NPUPrecision: use {', '.join(SUPPORTED)}")
        if init_scale <= 0 or growth_interval < 1:
            raise ValueError(
                f"init_scale={init_scale} and growth_interval={growth_interval} must be positive (defaults 65536, 2000)"
            )
        bf16_check = getattr(getattr(torch, device, None), "is_bf16_supported", None)
        if precision == "bf16-mixed" and device != "cpu" and bf16_check is not None and not bf16_check():
            raise ValueError(f"precision='bf16-mixed' but this {device} device has no bf16: use 16-mixed")
        if precision == "16-mixed" and scaler is None:
            scaler = make_grad_scaler(device, init_scale, growth_interval)
        if precision == "32-true":
            # MixedPrecision refuses 32-true; it needs nothing of its __init__ but these three attributes.
            self.precision, self.device, self.scaler = precision, device, None
        else:
            super().__init__(precision, device, scaler)
        self._skipped: int | torch.Tensor = 0  # a tensor on the scaler's device once a step has run

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for inf/NaN gradients so far; reading it waits for the device."""
        return int(self._skipped)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped = int(value)

    @override
    def autocast_context_manager(self) -> Any:
        if self.precision == "32-true":
            return nullcontext()
        return super().autocast_context_manager()

    @override
    def optimizer_step(  # type: ignore[override]
        self, optimizer: Optimizable, model: pl.LightningModule, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        if self.scaler is None or not self.scaler.is_enabled():
            return super().optimizer_step(optimizer, model, closure, **kwargs)
        # The scale tensor appears at the first scale(); before it, get_scale() is a Python float (no wait).
        scale = self.scaler._get_scale_async()
        before = scale.clone() if scale is not None else self.scaler.get_scale()
        output = super().optimizer_step(optimizer, model, closure, **kwargs)
        if (after := self.scaler._get_scale_async()) is not None:
            # update() lowers the scale exactly when step() found inf/NaN gradients and skipped the step.
            self._skipped = self._skipped + (after < before).int()  # queued on the device, not read
        trainer = getattr(model, "_trainer", None)
        if trainer is not None and is_logging_step(trainer):
            model.log("loss_scale", float(self.scaler.get_scale()), on_step=True, on_epoch=False)
            model.log("skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        return output

    @override
    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        clip_val: int | float = 0.0,
        gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM,
    ) -> None:
        if clip_val and clip_val > 0 and _is_fused(optimizer):
            raise ValueError(
                f"gradient_clip_val={clip_val} cannot be used with the fused optimizer {type(optimizer).__name__}, "
                "which unscales or flattens gradients inside its step: set trainer.gradient_clip_val to null "
                "or use a non-fused optimizer"
            )
        super().clip_gradients(optimizer, clip_val, gradient_clip_algorithm)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return {**state, "skipped_steps": self.skipped_steps} if state else state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The scaler's state from a checkpoint written on any device, by this plugin or Lightning's.

        torch_npu's own scaler, when passed as ``scaler``, requires a ``dynamic`` key that CPU and
        GPU scalers never write: it keeps its own setting then.
        """
        state = dict(state_dict)
        self.skipped_steps = int(state.pop("skipped_steps", 0))
        if state and hasattr(self.scaler, "_dynamic"):
            state.setdefault("dynamic", self.scaler._dynamic)  # type: ignore[union-attr]
        super().load_state_dict(state)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the scale of a checkpoint that Lightning's ``MixedPrecision`` wrote (a GPU fp16 run)."""
        own, lightnings = type(self).__qualname__, MixedPrecision.__qualname__
        if own not in checkpoint and checkpoint.get(lightnings) and self.scaler is not None:
            self.load_state_dict(checkpoint[lightnings])
