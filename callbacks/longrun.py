"""What keeps a long run honest: a stop on SIGTERM/SIGINT that saves ``last.ckpt``, and a stop on a non-finite loss
that saves nothing."""

from __future__ import annotations

import functools
import math
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lit_nanogpt.callbacks.metrics import total_grad_norm

from lit_nanogpt.trainer_state import current_lr


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's ``last.ckpt`` goes: the first ``save_last`` ModelCheckpoint's, else ``<root>/checkpoints``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def _finish_wandb(trainer: L.Trainer, exit_code: int, preempted: bool = False) -> None:
    """Mark the W&B run as stopped rather than let it look finished (Lightning's finalize('failed') leaves it open)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None and trainer.is_global_zero:
            run = logger.experiment
            if preempted and hasattr(run, "mark_preempting"):
                run.mark_preempting()
            run.finish(exit_code=exit_code)


class StopOnSignal(Callback):
    def __init__(self) -> None:
        """SIGTERM and SIGINT stop the run at the next step boundary and save ``last.ckpt``; nothing is exported.

        Lightning 2.6 stops on SIGTERM (its ``SIGTERMException``) but exits with status 0 and saves nothing,
        and stops on SIGINT mid-step. Here both set Lightning's own stop flag, so every rank stops after the
        same step; this callback then writes ``last.ckpt`` and ``lit-nanogpt`` prints the step and the resume
        command and exits with 128 + the signal's number. A second Ctrl+C stops at once, saving nothing.
        """
        self.received: int | None = None  # the signal's number, once one came
        self.saved: Path | None = None
        self.step: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its SIGTERM handler just before training; this one takes its place until teardown.
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, functools.partial(self._handle, trainer))

    def _handle(self, trainer: L.Trainer, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl+C: stop now
        connector = trainer._signal_connector
        if not connector.received_sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)  # the other ranks this process started
        self.received = signum
        connector.received_sigterm = True  # what Lightning's loops check after every step (and broadcast under DDP)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if self.received is None:  # a SIGTERM that reached Lightning's handler before this one was installed
            self.received = signal.SIGTERM
        self.step = trainer.global_step
        # Outside training, in lit-nanogpt fit's final validation over best.ckpt: last.ckpt already holds the end of
        # training, and the model now holds best.ckpt's weights, which must not be written over it.
        if trainer.state.fn == "fit":
            self.saved = last_checkpoint_path(trainer)
            trainer.save_checkpoint(self.saved)
        _finish_wandb(trainer, 128 + self.received, preempted=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class NonFiniteLossError(ValueError):
    """The training loss or its gradients stopped being finite."""


class StopOnNonFinite(Callback):
    def __init__(self, max_skipped_steps: int = 25) -> None:
        """Stop the run, saving nothing, at the first step whose loss or gradient norm is inf or NaN.

        The check runs after the backward pass and before the optimizer changes the weights, so every
        checkpoint on disk holds finite weights. Under fp16 (a loss scaler), inf/NaN gradients are how
        the scaler finds its scale; those steps are skipped, and the run stops only after
        ``max_skipped_steps`` skipped in a row. Costs one device synchronisation per step.

        Args:
            max_skipped_steps: fp16 only: consecutive steps skipped by the loss scaler that stop the run.
        """
        if max_skipped_steps < 1:
            raise ValueError(f"max_skipped_steps={max_skipped_steps} must be at least 1, e.g. 25")
        self.max_skipped_steps = max_skipped_steps
        self._losses: list[torch.Tensor] = []  # of this optimizer step's micro-batches
        self._scale: float | None = None
        self.skipped_in_a_row = 0

    @staticmethod
    def _scaler(trainer: L.Trainer) -> Any:
        return getattr(trainer.precision_plugin, "scaler", None)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        losses, self._losses = self._losses, []
        if (scaler := self._scaler(trainer)) is not None:
            self._scale = float(scaler.get_scale())
            return
        norm = total_grad_norm(list(pl_module.parameters()))
        values = torch.stack([*losses, norm if norm is not None else losses[0].new_zeros(())]).float()
        finite = bool(torch.isfinite(values).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        loss = float(losses[-1]) * trainer.accumulate_grad_batches if losses else math.nan
        self._stop(trainer, f"the training loss is {loss:g} (gradient norm {float(values[-1]):g})")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        scaler = self._scaler(trainer)
        if scaler is None or self._scale is None:
            return
        # update() lowers the scale only when this step's gradients were inf/NaN, and then step() skipped it.
        skipped = float(scaler.get_scale()) < self._scale
        self._scale = None
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row >= self.max_skipped_steps:
            self._stop(trainer, f"the fp16 loss scaler skipped {self.skipped_in_a_row} steps in a row "
                                f"(scale now {float(scaler.get_scale()):g})")  # fmt: skip

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        lr = current_lr(trainer)
        _finish_wandb(trainer, 1)
        raise NonFiniteLossError(
            f"{what} at step {trainer.global_step}: stopped before the weights changed, so the checkpoints "
            f"on disk hold earlier steps and nothing was exported; try a lower --model.learning_rate (now {lr:g}), "
            "--trainer.precision bf16-mixed, or gradient clipping (--trainer.gradient_clip_val 1.0)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_in_a_row = int(state_dict.get("skipped_in_a_row", 0))
