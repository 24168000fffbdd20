"""The export's settings, defined once.

``ExportSettings`` (with ``lit_nanogpt.export.atc.AtcOptions`` nested as ``atc``) is what the fit-end
callback takes as ``init_args.settings``, what ``lit-nanogpt export`` turns into options (``--opset``,
``--atc.soc_version``, ...) and, for ``AtcOptions``, what tools/atc/compile.py takes. Each field's
docstring is its help text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from jsonargparse import ArgumentParser, set_parsing_settings

from lit_nanogpt.export.atc import CANN_ONNX_PARSERS, AtcOptions

T = TypeVar("T")


@dataclass
class ExportSettings:
    """How a model is exported (see docs/export.md)."""

    opset: int = 15
    """ONNX opset. atc parses each op only at the opsets CANN registers it for: 15 needs CANN 7.0 or
    later (8-18, ReduceMean to 16); CANN 5.0 reads 9-13, so export with 13 for it."""
    batch_size: int = 1
    """Batch of the graphs atc compiles: the full-context graph and the static KV-cache pair, whose batch
    bounds the rows served at once on Ascend (``serve --onnx DIR --backend om``). The dynamic pair
    (onnxruntime on CPU) takes any batch."""
    dynamic_dims: list[int] | None = None
    """Sequence lengths for ``atc --dynamic_dims`` (2 to 100 of them), e.g. ``[64,128,256]``: the full graph
    then takes any length up to block_size. Default: the full graph has the fixed length block_size."""
    int8: bool = True
    """Also write int8-weight copies of the graphs (``*.int8.onnx``) for fast CPU inference (CPU only:
    atc cannot parse them; on Ascend quantize with AMCT)."""
    tolerance: float = 1e-4
    """Largest allowed max abs difference of onnxruntime's fp32 logits from PyTorch's."""
    atc: AtcOptions | None = field(default_factory=AtcOptions)
    """Compiling ``full.onnx`` and the static pair for Ascend; ``None`` leaves the atc step out (no command
    written, no record)."""

    def __post_init__(self) -> None:
        """Checked when made, so that a config's typo fails before training, not in the fit-end export."""
        first = min(p.opsets[0] for p in CANN_ONNX_PARSERS)
        last = max(p.opsets[1] for p in CANN_ONNX_PARSERS)
        if not first <= self.opset <= last:
            ranges = ", ".join(f"{p.opsets[0]}-{p.opsets[1]} (CANN {p.cann}+)" for p in CANN_ONNX_PARSERS)
            raise ValueError(f"opset={self.opset} is outside what atc parses: {ranges}; use 15, or 13 for CANN 5.0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be at least 1")
        if self.dynamic_dims is not None:
            dims = sorted(set(self.dynamic_dims))
            if not dims or dims[0] < 1:
                raise ValueError(f"dynamic_dims={self.dynamic_dims} must be lengths of at least 1, up to block_size")
            if not 2 <= len(dims) <= 100:  # atc's --dynamic_dims takes 2 to 100 profiles
                raise ValueError(
                    f"dynamic_dims={self.dynamic_dims} has {len(dims)} distinct length(s): atc's --dynamic_dims "
                    "takes 2 to 100 profiles; leave dynamic_dims unset for one fixed length (block_size)"
                )
            self.dynamic_dims = dims


def add_arguments(parser: ArgumentParser, cls: type, nested_key: str | None = None, skip: Iterable[str] = ()) -> None:
    """``parser.add_class_arguments(cls, nested_key, skip=...)`` with the fields' docstrings as their help.

    jsonargparse reads field docstrings only when asked, globally, and that costs LightningCLI seconds
    of parsing: so only while these few options are added.
    """
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        parser.add_class_arguments(cls, nested_key, skip=set(skip))
    finally:
        set_parsing_settings(docstring_parse_attribute_docstrings=False)


def from_options(cls: type[T], values: dict[str, Any], **given: Any) -> T:
    """``cls`` from the options ``add_arguments`` added, as ``parse_args(...).as_dict()`` gives them.

    Keys that are not fields (``__path__`` of a config file given as ``--atc FILE``) are left out.
    """
    names = {f.name for f in fields(cast(Any, cls))} - set(given)
    return cls(**{k: v for k, v in values.items() if k in names}, **given)
