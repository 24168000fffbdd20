"""Export a trained GPT to an ONNX folder, and generate from that folder with onnxruntime.

* ``settings``: ``ExportSettings``, every export setting, defined once.
* ``graphs``: the graph wrappers, the attention symbolic, the op/opset checks, int8, parity, ``export_model``.
* ``manifest``: ``Manifest``, which writes, reads and verifies ``manifest.json``, and the atomic folder swap.
* ``onnxrt``: ``ExportedGPT`` and ``open_export``, generation on the exported graphs.

The Ascend side (``atc`` and the ``.om``) lives in ``lit_nanogpt.npu.atc`` and ``lit_nanogpt.npu.om``.
"""

from lit_nanogpt.export.graphs import check_graph, export_model, past_names
from lit_nanogpt.export.manifest import FORMAT_VERSION, MANIFEST, Graph, Manifest, TensorSpec
from lit_nanogpt.export.onnxrt import BACKENDS, WINDOWS, ExportedGPT, open_export
from lit_nanogpt.export.settings import ExportSettings

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "MANIFEST",
    "WINDOWS",
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
