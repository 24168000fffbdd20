"""Lightning callbacks shipped with lit_nanogpt."""

from callbacks.export import OnnxExport
from callbacks.loss_curve import LossCurve
from callbacks.metrics import TrainingMetrics
from callbacks.samples import SampleWriter
from callbacks.validation_samples import ValidationSamples

__all__ = ["LossCurve", "OnnxExport", "SampleWriter", "TrainingMetrics", "ValidationSamples"]
