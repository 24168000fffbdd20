"""Run an export on Ascend (untested here): the ``.om`` files that ``atc`` compiled, through ais_bench, or
the ONNX graphs through onnxruntime's CANN execution provider.

ais_bench (https://gitee.com/ascend/tools, ``ais_bench.infer.interface.InferSession``; its ``infer(feeds,
mode=...)`` takes the inputs in the model's order) wraps pyACL's model loading and memory copies.
Nothing here is imported unless an export is opened on Ascend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lit_nanogpt.export.manifest import STATIC_GRAPHS, Graph, Manifest

# One runner per graph name, in place of onnxruntime (an .om on Ascend): feeds by input name -> outputs.
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def ais_bench_available() -> bool:
    """Whether ais_bench's inference interface can be imported; never raises."""
    try:
        return importlib.util.find_spec("ais_bench.infer.interface") is not None
    except (ImportError, ValueError):
        return False


def full_mode(manifest: Manifest) -> str:
    """ais_bench's ``mode`` for the full graph's ``.om``: ``dymdims`` when atc compiled it with
    ``--dynamic_dims`` (the manifest says so), else ``static``. Never guessed from the loaded model."""
    return "dymdims" if manifest.dynamic_dims else "static"


def om_runner(path: Path, graph: Graph, mode: str = "static", device_id: int = 0) -> Runner:
    """Feeds by input name -> outputs, shaped as the manifest lists them: one graph's ``.om`` through ais_bench.

    ``mode`` is ais_bench's: ``static``, or ``dymdims`` for a full graph atc compiled with ``--dynamic_dims``
    (its logits then take the fed length). Feeds are passed in the graph's input order and dtypes.
    """
    from ais_bench.infer.interface import InferSession

    session = InferSession(device_id, str(path))
    specs = [(t.name, np.dtype(t.dtype)) for t in graph.inputs]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # In the compiled model's own dtypes (the manifest's, as atc keeps them): InferSession checks only each
        # feed's byte size, so a feed of another dtype with the same size would be read as garbage, silently.
        inputs = [np.ascontiguousarray(feeds[name], dtype=dtype) for name, dtype in specs]
        outputs = session.infer(inputs, mode=mode)
        if mode == "dymdims":  # the full graph: logits (B, T, V) at the fed length
            return [np.asarray(outputs[0], dtype=np.float32).reshape(*inputs[0].shape, -1)]
        return [np.asarray(o).reshape(t.shape) for o, t in zip(outputs, graph.outputs, strict=True)]

    return run


def cann_runner(path: Path, device_id: int = 0) -> Runner:
    """Feeds by input name -> outputs: one ONNX graph through onnxruntime's CANN execution provider."""
    import onnxruntime as ort

    providers = [("CANNExecutionProvider", cann_provider_options(device_id)), "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    return lambda feeds: session.run(None, feeds)


def cann_provider_options(device_id: int = 0) -> dict[str, str]:
    """Options for onnxruntime's ``CANNExecutionProvider`` that write nothing into the working directory.

    From https://onnxruntime.ai/docs/execution-providers/community-maintained/CANN-ExecutionProvider.html
    (keys as parsed in onnxruntime/core/providers/cann/cann_execution_provider_info.cc): ``dump_om_model``
    (default true) writes every model it builds as an ``.om`` into the working directory;
    ``dump_graphs`` (default false) writes the ONNX subgraphs; ``enable_cann_graph`` runs the graph
    through CANN's graph engine. The precision mode is left at the provider's default: its key is
    ``precision_mode`` in the documented releases and ``precision_mode_v2`` in current sources, and an
    option a release does not know fails the session.
    """
    return {"device_id": str(device_id), "enable_cann_graph": "1", "dump_graphs": "0", "dump_om_model": "0"}


@dataclass
class AscendRunners:
    """How to run an export on an Ascend backend: the runners ``ExportedGPT`` takes in place of onnxruntime."""

    name: str
    """``om`` or ``cann``."""
    cache: str
    """``static`` (the static pair), ``dynamic`` (prefill, decode and full) or ``none`` (full alone)."""
    runners: dict[str, Runner] = field(default_factory=dict)
    """Per graph name, how to run it."""


def ascend_runners(folder: Path, manifest: Manifest, backend: str, cache: str = "auto") -> AscendRunners | None:
    """The runners of the export on an Ascend backend, or ``None`` when ``backend="auto"`` finds none.

    ``om``: the ``.om`` files through ais_bench: the static pair's (``cache`` ``auto`` or ``static``)
    or the full graph's (``dynamic``: a whole window per token); ``cann``: the ONNX graphs through
    onnxruntime's CANN execution provider, the static pair unless ``cache="dynamic"`` (which compiles
    a model per new input shape: one per generated token); ``auto``: the first of the two installed.
    """
    atc = manifest.atc
    static_om = {g: r.om for g, r in atc.static.items() if r.om} if atc is not None else {}
    has_static = all(g in static_om for g in STATIC_GRAPHS)
    if backend in ("auto", "om") and ais_bench_available():
        if cache != "dynamic" and has_static:
            runners = {g: om_runner(folder / static_om[g], manifest.graphs[g]) for g in STATIC_GRAPHS}
            return AscendRunners("om", "static", runners)
        if cache != "static" and atc is not None and atc.om:
            runner = om_runner(folder / atc.om, manifest.graphs["full"], full_mode(manifest))
            return AscendRunners("om", "none", {"full": runner})
    if backend == "om":
        if not ais_bench_available():
            why = "ais_bench is not installed"
        elif cache == "static":
            why = "it has no .om of the static pair (atc did not compile prefill_static and decode_static)"
        else:
            why = "it has no .om (atc did not run)"
        raise ValueError(f"backend=om cannot run {folder}: {why}; use --backend cpu")
    if backend in ("auto", "cann"):
        import onnxruntime as ort

        if "CANNExecutionProvider" in ort.get_available_providers():
            static = cache == "static" or (cache == "auto" and all(g in manifest.graphs for g in STATIC_GRAPHS))
            graphs = STATIC_GRAPHS if static else ("full", "prefill", "decode")
            runners = {g: cann_runner(folder / manifest.graphs[g].file) for g in graphs}
            return AscendRunners("cann", "static" if static else "dynamic", runners)
        if backend == "cann":
            raise ValueError("backend=cann needs onnxruntime built with the CANN execution provider (onnxruntime-cann)")
    return None
