"""Export a trained GPT to an ONNX folder, and generate from that folder with onnxruntime or on Ascend.

* ``settings``: ``ExportSettings``, every export setting, defined once.
* ``manifest``: ``Manifest``, the folder format: ``manifest.json``, its records, the graph and cache names.
* ``graphs``: the graph wrappers, the attention symbolic, the op/opset checks, int8, parity, ``export_model``.
* ``atc``: Ascend's graph compiler: the (op, opset) tables, ``AtcOptions``, the atc step.
* ``onnxrt``: ``ExportedGPT`` (an export folder as a decoding backend) and ``open_export``.
* ``ascend``: the runners of an export on Ascend (the .om through ais_bench, the CANN provider).

The names below are imported on first use: opening an export for generation must not import the
``onnx`` package (which only ``graphs`` needs), nor anything the export step alone uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_nanogpt.export.graphs import check_graph, export_model
    from lit_nanogpt.export.manifest import FORMAT_VERSION, MANIFEST, Graph, Manifest, TensorSpec, past_names
    from lit_nanogpt.export.onnxrt import BACKENDS, ExportedGPT, open_export
    from lit_nanogpt.export.settings import ExportSettings

_HOMES = {
    "check_graph": "graphs",
    "export_model": "graphs",
    "FORMAT_VERSION": "manifest",
    "MANIFEST": "manifest",
    "Graph": "manifest",
    "Manifest": "manifest",
    "TensorSpec": "manifest",
    "past_names": "manifest",
    "BACKENDS": "onnxrt",
    "ExportedGPT": "onnxrt",
    "open_export": "onnxrt",
    "ExportSettings": "settings",
}
__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "MANIFEST",
    "ExportSettings",
    "ExportedGPT",
    "Graph",
    "Manifest",
    "TensorSpec",
    "check_graph",
    "export_model",
    "open_export",
    "past_names",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lit_nanogpt.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lit_nanogpt.export.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
