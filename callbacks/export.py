"""Export the trained model to ONNX (and an Ascend ``.om`` when ``atc`` is installed) at the end of ``fit``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.data import Vocabulary
from lit_nanogpt.export import DEFAULT_OPSET, Manifest, export_model
from lit_nanogpt.model import GPT
from lit_nanogpt.npu.atc import AtcOptions


class OnnxExport(Callback):
    def __init__(
        self,
        dirpath: str | None = None,
        weights: str = "best",
        opset: int = DEFAULT_OPSET,
        batch_size: int = 1,
        dynamic_dims: list[int] | None = None,
        int8: bool = True,
        tolerance: float = 1e-4,
        soc_version: str = "Ascend310P3",
        precision_mode: str = "allow_fp32_to_fp16",
        atc: str | None = None,
        atc_log: str = "error",
        compile: bool = True,
    ) -> None:
        """At fit end, on rank 0, export a CPU fp32 copy of the model (see docs/export.md).

        Args:
            dirpath: The export folder; default ``<default_root_dir>/export``.
            weights: ``best``: the ModelCheckpoint's best checkpoint (the final weights when there is
                none); ``last``: the weights as training left them.
            opset: ONNX opset; CANN's atc reads 11 to 15.
            batch_size: Batch of the full-context graph that atc compiles.
            dynamic_dims: Sequence lengths for ``atc --dynamic_dims``; default a fixed block_size.
            int8: Also write int8-weight graphs for fast CPU inference.
            tolerance: Largest allowed max abs difference of onnxruntime's fp32 logits from PyTorch's.
            soc_version: atc's ``--soc_version``: Ascend310, Ascend310P3, Ascend310B1, Ascend910B, ...
            precision_mode: atc's ``--precision_mode``.
            atc: Path of the ``atc`` executable; default the one on PATH. Without atc the command is
                written to ``atc_command.sh`` in the export folder and the fit goes on.
            atc_log: atc's ``--log`` level.
            compile: Run atc when found; ``False`` only writes the command.
        """
        if weights not in ("best", "last"):
            raise ValueError(f"weights={weights!r} must be 'best' or 'last'")
        self.dirpath = dirpath
        self.weights = weights
        self.opset, self.batch_size, self.dynamic_dims = opset, batch_size, dynamic_dims
        self.int8, self.tolerance = int8, tolerance
        self.atc = AtcOptions(soc_version=soc_version, precision_mode=precision_mode, log=atc_log, atc=atc,
                              enabled=compile)  # fmt: skip
        self.last_manifest: Manifest | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "export"
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if self.weights == "best" and best and Path(best).is_file():
            model, vocab = load_model(best)
            source = best
        else:
            if pl_module.vocab is None:
                raise ValueError("the model has no vocabulary to export: train it with CharDataModule")
            model, vocab, source = pl_module.model, pl_module.vocab, f"final weights, step {trainer.global_step}"
        manifest = self.export(model, vocab, out, source)
        worst = max(manifest.max_abs_diff.values())
        rank_zero_info(f"Exported {source} to {out} (onnxruntime vs PyTorch max abs logit difference {worst:.2g})")
        for logger in trainer.loggers:
            logger.log_metrics({"export/max_abs_diff": worst}, step=trainer.global_step)
        self.last_manifest = manifest

    def export(self, model: GPT, vocab: Vocabulary, out: str | Path, source: str) -> Manifest:
        """Export ``model`` to ``out`` with this callback's settings; ``lit-nanogpt export`` uses it too."""
        return export_model(model, vocab, out, opset=self.opset, batch_size=self.batch_size,
                            dynamic_dims=self.dynamic_dims, int8=self.int8, tolerance=self.tolerance,
                            atc=self.atc, source=source)  # fmt: skip
