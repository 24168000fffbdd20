"""Lightning callbacks shipped with lit_nanogpt."""

from .export import OnnxExport
from .loss_curve import LossCurve
from .metrics import TrainingMetrics
from .samples import SampleWriter
from .validation_samples import ValidationSamples

__all__ = ["LossCurve", "OnnxExport", "SampleWriter", "TrainingMetrics", "ValidationSamples"]
