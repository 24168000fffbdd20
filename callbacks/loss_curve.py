"""A PNG of train and validation loss (and the learning rate) against step, drawn at the end of ``fit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lit_nanogpt.trainer_state import current_lr, is_logging_step

Curve = list[tuple[int, float]]  # (step, value)


def plot_loss_curve(train: Curve, val: Curve, lr: Curve, path: str | Path, title: str = "") -> Path:
    """Draw losses (top) and learning rate (bottom) against step into ``path`` with matplotlib's Agg backend."""
    # The object API with an explicit Agg canvas: no pyplot, no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    if train:
        loss_ax.plot(*zip(*train, strict=True), label="train_loss", linewidth=1)
    if val:
        loss_ax.plot(*zip(*val, strict=True), "o-", label="val_loss_est", linewidth=1.5, markersize=4)
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    if title:
        loss_ax.set_title(title)
    if lr:
        lr_ax.plot(*zip(*lr, strict=True), color="tab:green", linewidth=1)
    lr_ax.set_ylabel("lr")
    lr_ax.set_xlabel("step")
    lr_ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


class LossCurve(Callback):
    def __init__(self, filename: str = "loss_curve.png", key: str = "loss_curve") -> None:
        """At the end of ``fit``, draw ``train_loss``/``val_loss_est``/``lr`` against step into the run folder.

        The values are collected here on the Trainer's logging steps and at each validation, so the
        picture needs no logger; a W&B logger also receives it as an image under ``key``. The curve is
        kept in checkpoints, so a resumed run draws its whole history.

        Args:
            filename: Name of the PNG inside the run folder (``default_root_dir``, one run's: README "Long runs").
                Not the logger's folder: ``WANDB_DIR`` may be shared by many runs, which would overwrite it.
            key: Name of the image in W&B.
        """
        self.filename = filename
        self.key = key
        self.train: Curve = []
        self.val: Curve = []
        self.lr: Curve = []
        self.path: Path | None = None
        self._lr_now = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path = Path(trainer.default_root_dir) / self.filename

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if is_logging_step(trainer):
            self._lr_now = current_lr(trainer)  # before the scheduler steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not is_logging_step(trainer) or not outputs:
            return
        # The training_step loss (what LitGPT logs as train_loss), which Lightning divides by the accumulation.
        loss = float(outputs["loss"]) * trainer.accumulate_grad_batches
        self.train.append((trainer.global_step, loss))
        self.lr.append((trainer.global_step, self._lr_now))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # The fit's own validations (LitGPT's val_loss_est); its exact val_loss comes after fit end.
        if (val_loss := trainer.callback_metrics.get("val_loss_est")) is not None:
            self.val.append((trainer.global_step, float(val_loss)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.path is None or not (self.train or self.val):
            return
        name = type(pl_module).__name__
        plot_loss_curve(self.train, self.val, self.lr, self.path, title=f"{name}, {trainer.global_step} steps")
        rank_zero_info(f"Loss curve: {self.path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.key, images=[str(self.path)], step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val, "lr": self.lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(p) for p in state_dict.get("train", [])]
        self.val = [tuple(p) for p in state_dict.get("val", [])]
        self.lr = [tuple(p) for p in state_dict.get("lr", [])]
