"""Export a trained GPT to ONNX for onnxruntime and for Ascend's graph compiler ``atc``.

An export folder holds, beside a ``manifest.json`` that makes it self-contained:

* ``full.onnx``: logits for a whole window, ``idx`` of a fixed ``[batch, block_size]`` (or a dynamic
  length, for ``atc --dynamic_dims``). This is the graph ``atc`` compiles to an ``.om``.
* ``prefill.onnx`` and ``decode.onnx``: the KV-cache pair used for generation. Prefill takes the
  prompt and returns its logits and every layer's keys and values; decode takes one token and those
  keys and values and returns them one position longer.
* ``prefill_static.onnx`` and ``decode_static.onnx``: the same pair with every shape fixed (a cache of
  ``block_size`` positions per layer, the position an input), for ``atc`` and the CANN provider.
* optionally ``*.int8.onnx``: the dynamic graphs with int8 weights (onnxruntime's dynamic
  quantization; CPU only).

The graphs go through torch's TorchScript exporter at opset 15 by default (``ExportSettings.opset``;
the dynamo exporter starts at 18). atc parses an op only at the opsets its plugins register
(``lit_nanogpt.export.atc.CANN_ONNX_PARSERS``): opset 15 needs CANN 7.0 or later, 13 also reads on 5.0.
Attention is written out with an additive mask (no ``Trilu``, no ``IsNaN``) by a custom symbolic, so
every op is one ``atc`` knows (``lit_nanogpt.export.atc.ATC_ONNX_OPS``), at that opset.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from lit_nanogpt.export.atc import ATC_ONNX_OPS, CANN_ONNX_PARSERS, oldest_cann, run_atc, unreadable
from lit_nanogpt.export.manifest import GRAPHS, Graph, Manifest, TensorSpec, past_names
from lit_nanogpt.export.settings import ExportSettings
from lit_nanogpt.files import replacing
from lit_nanogpt.model import GPT
from lit_nanogpt.text import Tokenizer

log = logging.getLogger(__name__)

# Large enough that exp() of it is exactly 0 in fp32, small enough to stay finite in fp16 on Ascend.
_MASKED = -1.0e4


class FullContextGraph(nn.Module):
    """``idx`` (B, T) -> logits (B, T, V), with the masked attention of ``GPT.forward_cached``."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model.forward_cached(idx)
        return logits


class PrefillGraph(nn.Module):
    """``GPT.forward_cached`` from an empty cache: ``idx`` (B, T) -> (logits (B, T, V), *present).

    ``present`` is ``key_0, value_0, key_1, ...``, each (B, n_head, T, head_size).
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, present = self.model.forward_cached(idx)
        return (logits, *(t for kv in present for t in kv))


class DecodeGraph(nn.Module):
    """``GPT.decode_step``: (``idx`` (B, 1), ``pos`` (B,), *past) -> (logits (B, 1, V), *present).

    Each row is at its own position: ``past`` (``key_0, value_0, ...``, each (B, n_head, P, head_size))
    holds row i's context in its first ``pos[i]`` positions, the rest masked inside the graph.
    ``present`` holds the new token's keys and values alone, each (B, n_head, 1, head_size).
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        logits, new = self.model.decode_step(idx, pos, cache)
        return (logits, *(t for kv in new for t in kv))


class StaticPrefillGraph(nn.Module):
    """The static-shape prefill: (``idx`` (B, block_size), ``length`` (B,)) -> (logits (B, 1, V), *present).

    Row i of ``idx`` is its prompt right-padded to ``block_size``, ``length[i]`` its true length; its
    logits are those of position ``length[i] - 1`` (a one-hot sum, exact, in ops atc knows).
    ``present`` is ``key_0, value_0, ...``, each (B, n_head, block_size, head_size). Attention is
    causal, so the padding cannot reach a row's first ``length`` positions; its keys and values are
    overwritten (and masked until then) by ``StaticDecodeGraph``.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, present = self.model.forward_cached(idx)  # (B, block_size, V)
        S = idx.shape[1]
        last = (torch.arange(S, device=idx.device) == (length - 1).unsqueeze(1)).to(logits.dtype)  # (B, S)
        logits = (logits * last.unsqueeze(2)).sum(dim=1, keepdim=True)  # (B, 1, V)
        return (logits, *(t for kv in present for t in kv))


class StaticDecodeGraph(nn.Module):
    """The static-shape decode: (``idx`` (B, 1), ``pos`` (B,), *past) -> (logits (B, 1, V), *present).

    ``past`` and ``present`` are fixed caches of ``block_size`` positions per layer, key_0, value_0,
    ..., each (B, n_head, block_size, head_size), row i valid up to ``pos[i] - 1``. Each row's token is
    written into slot ``pos[i]`` (a one-hot ``Where``, no ScatterND) and attends to slots ``0..pos[i]``
    (a mask compared from a constant range and ``pos`` inside the graph). Its position embedding, a
    learned row or rotary angles, is gathered at ``pos[i]`` too.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        B, S = idx.shape[0], model.config.block_size
        slots = torch.arange(S, device=idx.device)  # (S,)
        slot = (slots == pos.unsqueeze(1)).view(B, 1, S, 1)  # where each row's new key and value go
        mask = (slots <= pos.unsqueeze(1)).view(B, 1, 1, S)  # what each row's new token sees
        x, rope = model.embed(idx, pos.unsqueeze(1))  # (B, 1, C); rotary angles at each row's position
        present: list[torch.Tensor] = []
        for i, block in enumerate(model.transformer.h):
            x, kv = block.forward_cached(x, (past[2 * i], past[2 * i + 1]), mask, slot, rope)
            present.extend(kv)
        return (model.lm_head(model.transformer.ln_f(x)), *present)  # (B, 1, V)


def _sdpa_symbolic(head_size: int):
    """An ONNX symbolic for ``scaled_dot_product_attention`` with a boolean mask, in ops atc knows.

    torch's own turns the mask into ``-inf`` and then needs ``IsNaN`` to clean fully masked rows;
    a causal mask never masks a whole row, so a finite additive mask is exact and simpler.
    """
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
    def symbolic(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if is_causal or symbolic_helper._is_none(attn_mask):
            raise ValueError("export expects attention with an explicit mask (GPT.forward_cached)")
        key_t = g.op("Transpose", key, perm_i=[0, 1, 3, 2])
        scores = g.op("MatMul", query, key_t)  # (B, nh, T, T_past + T)
        scores = g.op("Mul", scores, g.op("Constant", value_t=torch.tensor(head_size**-0.5)))
        zero = g.op("Constant", value_t=torch.tensor(0.0))
        masked = g.op("Constant", value_t=torch.tensor(_MASKED))
        scores = g.op("Add", scores, g.op("Where", attn_mask, zero, masked))
        return g.op("MatMul", g.op("Softmax", scores, axis_i=-1), value)  # (B, nh, T, hs)

    return symbolic


@contextmanager
def _attention_symbolic(head_size: int, opset: int) -> Iterator[None]:
    name = "aten::scaled_dot_product_attention"
    torch.onnx.register_custom_op_symbolic(name, _sdpa_symbolic(head_size), opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, opset)


def _export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    # torch.onnx.export traces in eval mode, then gives every submodule the wrapper's mode: a wrapper left in
    # train mode (nn.Module's default) would turn the model's dropout on for what follows (the parity check).
    module.eval()
    with warnings.catch_warnings():
        # The length check in forward_cached becomes a constant in the trace; the graphs' shapes keep it true.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _io(values: Any) -> list[TensorSpec]:
    """Names, shapes (ints, or names of dynamic axes) and dtypes of a graph's inputs or outputs."""
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        out.append(TensorSpec(v.name, shape, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out


def check_graph(path: Path, opset: int, allowed_ops: frozenset[str] | None = ATC_ONNX_OPS) -> Graph:
    """``onnx.checker`` on the file, then its opset and ops; returns its manifest entry.

    With ``allowed_ops`` (atc's ops; ``None`` for the CPU-only int8 graphs) every op must be one atc
    of some supported CANN generation parses at this opset (``CANN_ONNX_PARSERS``).
    """
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    got = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if got.get("ai.onnx") != opset:
        raise ValueError(
            f"{path.name} has opset {got.get('ai.onnx')}, not {opset}: export it again with --opset {opset}"
        )
    ops = sorted({n.op_type for n in model.graph.node})
    if allowed_ops is not None and (bad := [op for op in ops if op not in allowed_ops]):
        raise ValueError(f"{path.name} contains ops that atc lacks: {', '.join(bad)}")
    if allowed_ops is not None and oldest_cann(ops, opset) is None:
        raise ValueError(
            f"{path.name} at opset {opset} parses with no supported CANN's atc ({unreadable(ops, opset)}): "
            "export with --opset 15 (CANN 7.0+) or 13 (CANN 5.0+)"
        )
    return Graph(path.name, _io(model.graph.input), _io(model.graph.output), ops)


def _ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _parity(folder: Path, model: GPT, batch: int, block_size: int) -> dict[str, float]:
    """Max abs difference of onnxruntime's logits from PyTorch's on fixed random tokens, per graph.

    The decode graphs are run with each row at another position, as continuous batching runs them.
    """
    g = torch.Generator().manual_seed(0)
    V, T = model.config.vocab_size, block_size
    B = max(batch, 2)  # the dynamic graphs take any batch: two rows at least, at different positions
    idx = torch.randint(V, (B, T), generator=g)
    with torch.no_grad():
        ref, cache = model.forward_cached(idx)  # (B, T, V)
    out: dict[str, float] = {}
    (full,) = _ort_session(folder / "full.onnx").run(["logits"], {"idx": idx[:batch].numpy()})
    out["full"] = float(np.abs(full - ref[:batch].numpy()).max())
    split = max(1, T - 1)
    prefill = _ort_session(folder / "prefill.onnx").run(None, {"idx": idx[:, :split].numpy()})
    out["prefill"] = float(np.abs(prefill[0] - ref[:, :split].numpy()).max())
    names = past_names(model.config.n_layer, "past")
    # Row i decodes its token at position split - i: its context is its first split - i positions.
    pos = np.maximum(split - np.arange(B), 1) if split > 1 else np.full(B, split)
    rows = np.arange(B)
    if split < T:
        feeds = {"idx": idx.numpy()[rows, pos][:, None], "pos": pos, **dict(zip(names, prefill[1:], strict=True))}
        decode = _ort_session(folder / "decode.onnx").run(None, feeds)
        out["decode"] = float(np.abs(decode[0][:, 0] - ref.numpy()[rows, pos]).max())
        new = [t.numpy()[rows, :, pos] for kv in cache for t in kv]  # (B, nh, hs) at each row's position
        out["decode_cache"] = float(max(np.abs(a[:, :, 0] - b).max() for a, b in zip(decode[1:], new, strict=True)))
    # The static pair: each row right-padded to block_size at its own length, then one token written at
    # each row's own slot.
    pos = pos[:batch]
    window = np.zeros((batch, block_size), dtype=np.int64)
    for i, p in enumerate(pos):
        window[i, :p] = idx[i, :p].numpy()
    prefill = _ort_session(folder / "prefill_static.onnx").run(None, {"idx": window, "length": pos})
    out["prefill_static"] = float(np.abs(prefill[0][:, 0] - ref.numpy()[rows[:batch], pos - 1]).max())
    if split < T:
        tokens = idx.numpy()[rows[:batch], pos][:, None]  # (batch, 1)
        feeds = {"idx": tokens, "pos": pos, **dict(zip(names, prefill[1:], strict=True))}
        decode = _ort_session(folder / "decode_static.onnx").run(None, feeds)
        out["decode_static"] = float(np.abs(decode[0][:, 0] - ref.numpy()[rows[:batch], pos]).max())
        # The slots written so far; the rest holds the padding's keys.
        out["decode_static_cache"] = float(max(
            np.abs(a[i, :, : p + 1] - b.numpy()[i, :, : p + 1]).max()
            for a, b in zip(decode[1:], (t for kv in cache for t in kv), strict=True)
            for i, p in enumerate(pos)
        ))  # fmt: skip
    return out


def quantize_int8(src: Path, dst: Path) -> None:
    """int8 weights, activations quantized on the fly (onnxruntime's dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it logs every tensor it skips, and a pre-processing hint, on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def export_model(
    model: GPT,
    vocab: Tokenizer,
    out: str | Path,
    settings: ExportSettings | None = None,
    source: str | None = None,
) -> Manifest:
    """Export ``model`` into the folder ``out``, replacing it only once everything has succeeded.

    Args:
        model: The network; a CPU fp32 copy in eval mode is exported, ``model`` is left as it is.
        vocab: Its tokenizer, written into the manifest (``Tokenizer.to_plain``).
        out: The export folder.
        settings: How to export; default ``ExportSettings()``.
        source: Where the weights came from, recorded in the manifest.

    Returns:
        The manifest, as written into ``out``.
    """
    settings = settings if settings is not None else ExportSettings()
    opset, batch_size, dynamic_dims = settings.opset, settings.batch_size, settings.dynamic_dims  # checked by it
    config = model.config
    if dynamic_dims is not None and dynamic_dims[-1] > config.block_size:
        raise ValueError(f"dynamic_dims={dynamic_dims} must be lengths between 1 and block_size={config.block_size}")
    if len(vocab) > config.vocab_size:
        raise ValueError(
            f"the tokenizer, {vocab.describe()}, has more ids than the model's vocab_size={config.vocab_size}: "
            "export the tokenizer the model was trained with"
        )
    out = Path(out)
    model = copy.deepcopy(model).cpu().float().eval()
    L, nh, hs = config.n_layer, config.n_head, config.n_embd // config.n_head

    with replacing(out) as tmp:
        with _attention_symbolic(hs, opset), torch.no_grad():
            idx = torch.zeros(batch_size, config.block_size, dtype=torch.long)
            axes = {"idx": {1: "seq"}, "logits": {1: "seq"}} if dynamic_dims else {}
            _export_graph(FullContextGraph(model), (idx,), tmp / "full.onnx", ["idx"], ["logits"], axes, opset)
            present = past_names(L, "present")
            past = past_names(L, "past")
            kv_axes = {n: {0: "batch", 2: "past" if n.startswith("past") else "total"} for n in past + present}
            io_axes = {"idx": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
            prompt = torch.zeros(1, 2, dtype=torch.long)
            _export_graph(PrefillGraph(model), (prompt,), tmp / "prefill.onnx", ["idx"], ["logits", *present],
                          {**io_axes, **{n: kv_axes[n] for n in present}}, opset)  # fmt: skip
            one, pos = torch.zeros(2, 1, dtype=torch.long), torch.tensor([2, 1])
            cache = tuple(torch.zeros(2, nh, 2, hs) for _ in past)
            decode_axes = {"idx": {0: "batch"}, "pos": {0: "batch"}, "logits": {0: "batch"}}
            decode_axes.update({n: {0: "batch", 2: "past"} for n in past} | {n: {0: "batch"} for n in present})
            _export_graph(DecodeGraph(model), (one, pos, *cache), tmp / "decode.onnx", ["idx", "pos", *past],
                          ["logits", *present], decode_axes, opset)  # fmt: skip
            # The static pair: every input and output of a fixed shape, for atc and the CANN provider.
            S, B = config.block_size, batch_size
            window, length = torch.zeros(B, S, dtype=torch.long), torch.ones(B, dtype=torch.long)
            _export_graph(StaticPrefillGraph(model), (window, length), tmp / "prefill_static.onnx",
                          ["idx", "length"], ["logits", *present], {}, opset)  # fmt: skip
            one, pos = torch.zeros(B, 1, dtype=torch.long), torch.zeros(B, dtype=torch.long)
            cache = tuple(torch.zeros(B, nh, S, hs) for _ in past)
            _export_graph(StaticDecodeGraph(model), (one, pos, *cache), tmp / "decode_static.onnx",
                          ["idx", "pos", *past], ["logits", *present], {}, opset)  # fmt: skip

        graphs = {name: check_graph(tmp / f"{name}.onnx", opset) for name in GRAPHS}
        parity = _parity(tmp, model, batch_size, config.block_size)
        worst = max(parity.values())
        if worst > settings.tolerance:
            raise ValueError(
                f"onnxruntime's logits differ from PyTorch's by up to {worst:.3g} "
                f"(> tolerance {settings.tolerance:g}): {parity}; the export was not written"
            )
        log.info(f"ONNX export: onnxruntime vs PyTorch fp32 logits, max abs difference {worst:.3g}")
        order = [p.cann for p in CANN_ONNX_PARSERS]
        cann = max((oldest_cann(g.ops, opset) for g in graphs.values()), key=lambda c: order.index(c))
        log.info(f"atc of CANN {cann} or later parses these graphs at opset {opset}")
        if settings.int8:  # CPU only: DynamicQuantizeLinear and MatMulInteger are not ops atc parses
            for name in ("full", "prefill", "decode"):
                quantize_int8(tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx")
                graphs[f"{name}_int8"] = check_graph(tmp / f"{name}.int8.onnx", opset, allowed_ops=None)
        manifest = Manifest(
            vocab=vocab.to_plain(),
            batch_size=batch_size,
            dynamic_dims=dynamic_dims,
            model=config,
            opset=opset,
            exporter=f"torch.onnx TorchScript exporter, torch {torch.__version__}",
            source=source,
            max_abs_diff=parity,
            graphs=graphs,
        )
        if settings.atc is not None:
            manifest.atc = run_atc(tmp, out, manifest, settings.atc)
        manifest.write(tmp)
    return manifest
