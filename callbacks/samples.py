"""Print (and optionally save) the samples of ``lit-nanogpt predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_nanogpt.sampling import SEPARATOR

__all__ = ["SEPARATOR", "SampleWriter"]


class SampleWriter(BasePredictionWriter):
    def __init__(self, output: str | None = None, quiet: bool = False) -> None:
        """Print each sample as nanoGPT's ``sample.py`` does, prompt first, then a separator line.

        Args:
            output: Also append every sample as one JSON line (prompt, sample, settings, text) here;
                with several devices each rank writes ``<stem>.rank<N><suffix>``.
            quiet: Do not print the samples.
        """
        super().__init__(write_interval="batch")
        self.output = Path(output) if output else None
        self.quiet = quiet

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Each rank samples its own share of the prompts, so each rank writes what it made.
        if not self.quiet:
            print(prediction["text"])
            print(SEPARATOR, flush=True)
        if self.output is not None:
            output = self.output
            if trainer.world_size > 1:
                output = output.with_name(f"{output.stem}.rank{trainer.global_rank}{output.suffix}")
            output.parent.mkdir(parents=True, exist_ok=True)
            with output.open("a", encoding="utf-8") as f:
                f.write(json.dumps(prediction, ensure_ascii=False) + "\n")
