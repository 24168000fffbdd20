"""Export the trained model to ONNX (and an Ascend ``.om`` when ``atc`` is installed) at the end of ``fit``."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.export.manifest import Manifest
from lit_nanogpt.export.settings import ExportSettings
from lit_nanogpt.module import LitGPT


class OnnxExport(Callback):
    def __init__(
        self, dirpath: str | None = None, weights: str = "best", settings: ExportSettings | None = None
    ) -> None:
        """At fit end, on rank 0, export a CPU fp32 copy of the model (see docs/export.md).

        Args:
            dirpath: The export folder; default ``<default_root_dir>/export``.
            weights: ``best``: the ModelCheckpoint's best checkpoint (the final weights when there is
                none); ``last``: the weights as training left them.
            settings: How to export: ``lit_nanogpt.export.ExportSettings``, the options of ``lit-nanogpt
                export`` too. Default its defaults, atc included: without atc the command is written
                to ``atc_command.sh`` in the export folder and the fit goes on.
        """
        if weights not in ("best", "last"):
            raise ValueError(f"weights={weights!r} must be 'best' or 'last'")
        self.dirpath = dirpath
        self.weights = weights
        self.settings = settings if settings is not None else ExportSettings()
        self.last_manifest: Manifest | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """What only the model can tell (``dynamic_dims`` against its block_size), before the first step."""
        dims, block_size = self.settings.dynamic_dims, cast(LitGPT, pl_module).model.config.block_size
        if stage == "fit" and dims and dims[-1] > block_size:
            raise ValueError(
                f"OnnxExport settings.dynamic_dims={dims} go past the model's block_size={block_size}: "
                "use lengths between 1 and block_size"
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "export"
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if self.weights == "best" and best and Path(best).is_file():
            model, vocab = load_model(best)
            source = best
        else:
            module = cast(LitGPT, pl_module)
            if module.vocab is None:
                raise ValueError("the model has no vocabulary to export: train it with CharDataModule")
            model, vocab, source = module.model, module.vocab, f"final weights, step {trainer.global_step}"
        from lit_nanogpt.export.graphs import export_model  # onnx (about 1 s to import), only when exporting

        manifest = export_model(model, vocab, out, self.settings, source=source)
        worst = max(manifest.max_abs_diff.values())
        rank_zero_info(f"Exported {source} to {out} (onnxruntime vs PyTorch max abs logit difference {worst:.2g})")
        for logger in trainer.loggers:
            logger.log_metrics({"export/max_abs_diff": worst}, step=trainer.global_step)
        self.last_manifest = manifest
