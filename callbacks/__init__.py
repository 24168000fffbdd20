"""Lightning callbacks shipped with lit_nanogpt."""

from .export import OnnxExport
from .longrun import StopOnNonFinite, StopOnSignal
from .loss_curve import LossCurve
from .metrics import TrainingMetrics
from .samples import SampleWriter
from .validation_samples import ValidationSamples

__all__ = [
    "LossCurve",
    "OnnxExport",
    "SampleWriter",
    "StopOnNonFinite",
    "StopOnSignal",
    "TrainingMetrics",
    "ValidationSamples",
]
