"""Lightning callbacks shipped with lit_nanogpt."""

from callbacks.export import OnnxExport
from callbacks.samples import SampleWriter

__all__ = ["OnnxExport", "SampleWriter"]
