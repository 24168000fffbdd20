"""What the Trainer knows and Lightning keeps private, asked in one place each.

Read from Lightning 2.6.6. If a Lightning upgrade moves one of these, only this module changes.
"""

from __future__ import annotations

import lightning as L


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether this step's ``self.log(..., on_step=True)`` values reach the loggers (every
    ``log_every_n_steps``-th step, and any step outside a fit loop).

    Lightning 2.6.6 has no public form of it: ``trainer._logger_connector.should_update_logs``
    (lightning/pytorch/trainer/connectors/logger_connector/logger_connector.py:51), the property its
    own ``LearningRateMonitor`` reads. Counted before the step runs, so it is the same answer in
    ``on_train_batch_start``, the step itself and ``on_train_batch_end``.
    """
    return trainer._logger_connector.should_update_logs


def current_lr(trainer: L.Trainer) -> float:
    """The learning rate the first optimizer's first parameter group uses now.

    Every optimizer here (AdamW, MuonAdamW) keeps one schedule over all its groups: the first group's
    rate is the schedule's value (Lightning 2.6.6 exposes optimizers as ``trainer.optimizers``).
    """
    return float(trainer.optimizers[0].param_groups[0]["lr"])
