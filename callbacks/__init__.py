"""Lightning callbacks shipped with lit_nanogpt."""

from callbacks.samples import SampleWriter

__all__ = ["SampleWriter"]
