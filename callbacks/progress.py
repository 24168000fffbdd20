"""Lightning's progress bar on stderr, counting steps to ``max_steps``."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` on stderr, so stdout carries only results (``predict``'s samples, the best
    checkpoint); the training bar counts steps up to ``max_steps``, so a resumed fit shows ``1001/2000`` and an
    ETA rather than ``1001/?``. Lightning's bars write to ``sys.stdout`` by name: each is made while stdout
    points at stderr.

    The training bar is redrawn at most every ``MIN_INTERVAL`` seconds (and at the last step): Lightning's
    redraws it, with its metrics read back from the device, after every step: 1.3 ms a step, 2.5 s of a
    2000-step CPU fit (benchmarks/bench_fixed_costs.py)."""

    MIN_INTERVAL = 0.25  # seconds between redraws of the training bar; tqdm's own default is 0.1
    _drawn_at = 0.0

    def _on_stderr(self, make: Any) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return make()

    def init_sanity_tqdm(self) -> Any:
        return self._on_stderr(super().init_sanity_tqdm)

    def init_train_tqdm(self) -> Any:
        return self._on_stderr(super().init_train_tqdm)

    def init_predict_tqdm(self) -> Any:
        return self._on_stderr(super().init_predict_tqdm)

    def init_validation_tqdm(self) -> Any:
        return self._on_stderr(super().init_validation_tqdm)

    def init_test_tqdm(self) -> Any:
        return self._on_stderr(super().init_test_tqdm)

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self._count_steps(trainer)  # a resumed fit starts mid-epoch: no on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._count_steps(trainer)

    def _count_steps(self, trainer: L.Trainer) -> None:
        if trainer.max_steps > 0 and self.train_progress_bar is not None:
            self.train_progress_bar.total = trainer.max_steps
            self.train_progress_bar.initial = self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, *args)
        bar = self.train_progress_bar
        now = time.monotonic()
        last = trainer.global_step >= trainer.max_steps
        if bar is None or bar.disable or not (last or now - self._drawn_at >= self.MIN_INTERVAL):
            return None
        if self._should_update(trainer.global_step, bar.total):
            self._drawn_at = now
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar, with its new count
        return None
