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

from lit_nanogpt.npu.runtime import npu_module, torch_npu_module

SUPPORTED = ("16-mixed", "bf16-mixed", "32-true")


def make_grad_scaler(device: str, init_scale: float, growth_interval: int) -> torch.amp.GradScaler:
    """torch_npu's ``GradScaler`` on ``"npu"`` where torch_npu has one, else ``torch.amp.GradScaler(device)``."""
    if device == "npu":
        npu_module("NPUPrecision(device='npu')")  # imports torch_npu: "npu" becomes a device type
        vendor_amp = getattr(getattr(torch_npu_module(), "npu", None), "amp", None)
        if (scaler_cls := getattr(vendor_amp, "GradScaler", None)) is not None:
            return scaler_cls(init_scale=init_scale, growth_interval=growth_interval)
    return torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=growth_interval)


def _is_fused(optimizer: Any) -> bool:
    """Optimizers that unscale inside ``step`` (torch's ``fused=True``) or keep flat buffers (torch_npu's)."""
    defaults = getattr(optimizer, "defaults", {})
    named_fused = "fused" in type(optimizer).__name__.lower()
    return _optimizer_handles_unscaling(optimizer) or bool(defaults.get("fused")) or named_fused


class NPUPrecision(MixedPrecision):
    """fp16 AMP with dynamic loss scaling, bf16 AMP, or fp32, on ``"npu"``, ``"cuda"`` or ``"cpu"``.

    Logs ``loss_scale`` (the scaler's current scale) and ``skipped_steps`` (optimizer steps skipped
    for inf/NaN gradients so far) on every step that uses the scaler.
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
            self.precision, self.device, self.scaler = precision, device, None  # type: ignore[assignment]
        else:
            super().__init__(precision, device, scaler)  # type: ignore[arg-type]
        self.skipped_steps = 0

    @override
    def autocast_context_manager(self) -> Any:
        if self.precision == "32-true":
            return nullcontext()
        return super().autocast_context_manager()

    @override
    def optimizer_step(  # type: ignore[override]
        self, optimizer: Optimizable, model: pl.LightningModule, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        if self.scaler is None:
            return super().optimizer_step(optimizer, model, closure, **kwargs)
        scale_before = self.scaler.get_scale()
        output = super().optimizer_step(optimizer, model, closure, **kwargs)
        loss_scale = self.scaler.get_scale()
        # update() lowers the scale only when the step found inf/NaN gradients, and then step() skipped it.
        self.skipped_steps += int(loss_scale < scale_before)
        if getattr(model, "_trainer", None) is not None:
            model.log("loss_scale", float(loss_scale), on_step=True, on_epoch=False)
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
        state = dict(state_dict)
        self.skipped_steps = int(state.pop("skipped_steps", 0))
        super().load_state_dict(state)
