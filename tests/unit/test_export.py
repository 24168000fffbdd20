"""ONNX export, the atc step and generation from the exported graphs, on nanoGPT's baby model (CPU)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import shutil
import stat
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lit_nanogpt.callbacks import OnnxExport

from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.commands import main
from lit_nanogpt.data import CharDataModule, Vocabulary
from lit_nanogpt.decoding import nll
from lit_nanogpt.export import (
    MANIFEST,
    ExportedGPT,
    ExportSettings,
    Manifest,
    TensorSpec,
    check_graph,
    export_model,
    onnxrt,
    open_export,
)
from lit_nanogpt.export.atc import ATC_ONNX_OPS, AtcOptions, oldest_cann
from lit_nanogpt.export.manifest import AtcRecord, AtcStatic
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.module import LitGPT
from lit_nanogpt.sampling import SEPARATOR
from tests.helpers import NANOGPT_BABY, ROOT, TINY, RunIf, export_baby, extend, run_cli

EXPECTED = json.loads((NANOGPT_BABY / "expected.json").read_text())
TOKENS_LINE = re.compile(r"^(\d+) tokens in [\d.]+ s \([\d.]+ tokens/s\)$", re.M)


@pytest.fixture(scope="module")
def baby(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The baby checkpoint and its export (fp32 + int8, no atc), made once for the module."""
    return export_baby(tmp_path_factory.mktemp("baby_export"), int8=True)


def _atc_calls(bin_dir: Path) -> dict[str, dict[str, str]]:
    """The fake atc's calls, by the name of the model each compiled."""
    calls = [json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()]
    return {Path(c["model"]).stem: c for c in calls}


def _copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _fake_atc(bin_dir: Path, exit_code: int = 0) -> Path:
    """An ``atc`` that checks its arguments as CANN's would need them, records them, and writes the .om."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "atc"
    script.write_text(
        f"""#!{sys.executable}
import json, sys
import onnx
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
here = __import__("pathlib").Path(sys.argv[0]).parent
(here / "args.json").write_text(json.dumps(args))
with (here / "calls.jsonl").open("a") as f:
    f.write(json.dumps(args) + "\\n")
assert args["framework"] == "5", args
assert args["input_format"] == "ND", args
assert args["soc_version"].startswith("Ascend"), args
assert args["log"] in ("debug", "info", "warning", "error", "null"), args
assert "precision_mode" in args, args
model = onnx.load(args["model"])
assert model.opset_import[0].version <= 15
# --input_shape names every input of the graph, in order, with its fixed sizes (-1 for a dynamic one)
shapes = [entry.split(":") for entry in args["input_shape"].split(";")]
assert [name for name, _ in shapes] == [i.name for i in model.graph.input], args
for (name, dims), i in zip(shapes, model.graph.input):
    graph_dims = [d.dim_value if d.dim_value else -1 for d in i.type.tensor_type.shape.dim]
    assert [int(d) for d in dims.split(",")] == graph_dims, (name, dims, graph_dims)
print("ATC start working now, please wait for a moment.")
if {exit_code}:
    print("E19999: fake atc failure")
    sys.exit({exit_code})
open(args["output"] + ".om", "wb").write(b"fake om for " + args["soc_version"].encode())
print("ATC run success, welcome to the next use.")
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _atc_tool():
    """tools/atc/compile.py as a module."""
    spec = importlib.util.spec_from_file_location("atc_compile", ROOT / "tools" / "atc" / "compile.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


# ---- the graphs ----
def test_graphs_are_opset_15_with_atc_ops_only(baby: tuple[Path, Path]) -> None:
    _, folder = baby
    manifest = Manifest.read(folder)
    assert manifest.opset == 15 and manifest.block_size == 64
    for name in ("full", "prefill", "decode"):
        model = onnx.load(str(folder / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 15)]
        ops = {n.op_type for n in model.graph.node}
        assert "Trilu" not in ops and "IsNaN" not in ops
        assert ops <= ATC_ONNX_OPS, ops - ATC_ONNX_OPS
        assert sorted(ops) == manifest.graphs[name].ops
    full = manifest.graphs["full"]
    assert full.inputs == [TensorSpec(name="idx", shape=[1, 64], dtype="int64")]
    assert full.outputs == [TensorSpec(name="logits", shape=[1, 64, 65], dtype="float32")]
    decode = manifest.graphs["decode"]
    # A position per row; the past as long as the longest row's; only the new position comes back.
    assert decode.inputs[:3] == [TensorSpec("idx", ["batch", 1], "int64"), TensorSpec("pos", ["batch"], "int64"),
                                 TensorSpec("past_key_0", ["batch", 4, "past", 32], "float32")]  # fmt: skip
    assert [o.name for o in decode.outputs][:2] == ["logits", "present_key_0"] and len(decode.outputs) == 1 + 2 * 4
    feeds = {"idx": np.zeros((3, 1), np.int64), "pos": np.array([5, 1, 3]),
             **{t.name: np.zeros((3, 4, 5, 32), np.float32) for t in decode.inputs[2:]}}  # fmt: skip
    _, key, *_ = ort.InferenceSession(str(folder / "decode.onnx")).run(None, feeds)
    assert key.shape == (3, 4, 1, 32)  # (B, nh, 1, hs): the new position only
    assert set(manifest.files) >= {"full.onnx", "prefill.onnx", "decode.onnx", "full.int8.onnx"}


def test_onnx_logits_match_pytorch(baby: tuple[Path, Path]) -> None:
    ckpt, folder = baby
    model, _ = load_model(ckpt)
    manifest = Manifest.read(folder)
    assert 0 <= max(manifest.max_abs_diff.values()) <= 1e-4
    idx = torch.randint(65, (1, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, _ = model(idx, idx)  # (1, 64, 65): the training path, with is_causal attention
    (logits,) = ort.InferenceSession(str(folder / "full.onnx")).run(None, {"idx": idx.numpy()})
    assert np.abs(logits - ref.numpy()).max() <= 1e-4


def test_kv_cache_decode_equals_full_recompute(baby: tuple[Path, Path]) -> None:
    _, folder = baby
    exported = ExportedGPT(folder)
    ids = np.random.default_rng(0).integers(0, 65, size=64)
    steps = [exported.prefill(np.array([0]), ids[None, :5], np.array([5]))[0]]
    for t in range(5, 64):
        steps.append(exported.decode(ids[t : t + 1], np.array([t]), np.array([0]))[0])
    assert exported._cache[0].shape == (1, 4, 64, 32)  # (slots, nh, block_size, hs)
    for t, got in zip(range(4, 64), steps, strict=True):
        full = exported.full(ids[None, : t + 1])  # padded to 64 on the right
        assert np.abs(got.numpy() - full[0]).max() <= 1e-4, t


@pytest.mark.parametrize("use_cache", [True, False])
def test_onnx_greedy_text_is_nanogpts(baby: tuple[Path, Path], use_cache: bool) -> None:
    """200 tokens from 6 runs 142 past block_size=64: the sliding window must be exact."""
    _, folder = baby
    exported = ExportedGPT(folder)
    idx = torch.from_numpy(exported.vocab.encode(EXPECTED["prompt"]))[None]
    out = extend(exported, idx, 200, temperature=0.0, use_cache=use_cache)
    assert exported.vocab.decode(out[0]) == EXPECTED["greedy"]


# ---- the static pair ----
STATIC = ("prefill_static", "decode_static")


def test_static_pair_has_fixed_shapes_and_atc_ops_at_its_opset(baby: tuple[Path, Path]) -> None:
    _, folder = baby
    manifest = Manifest.read(folder)
    for name in STATIC:
        graph = manifest.graphs[name]
        assert all(isinstance(d, int) for t in graph.inputs + graph.outputs for d in t.shape), name
        assert set(graph.ops) <= ATC_ONNX_OPS, name
        assert manifest.max_abs_diff[name] <= 1e-4
    prefill, decode = manifest.graphs["prefill_static"], manifest.graphs["decode_static"]
    assert prefill.inputs == [TensorSpec("idx", [1, 64], "int64"), TensorSpec("length", [1], "int64")]
    assert prefill.outputs[:2] == [TensorSpec("logits", [1, 1, 65], "float32"),
                                   TensorSpec("present_key_0", [1, 4, 64, 32], "float32")]  # fmt: skip
    assert decode.inputs[:3] == [TensorSpec("idx", [1, 1], "int64"), TensorSpec("pos", [1], "int64"),
                                 TensorSpec("past_key_0", [1, 4, 64, 32], "float32")]  # fmt: skip
    assert decode.outputs[-1] == TensorSpec("present_value_3", [1, 4, 64, 32], "float32")
    assert (len(decode.inputs), len(decode.outputs)) == (2 + 2 * 4, 1 + 2 * 4)
    # The slot written and the positions seen come from pos inside the graph, with no ScatterND.
    assert {"Equal", "LessOrEqual", "Where"} <= set(decode.ops) and "ScatterND" not in decode.ops
    assert manifest.max_abs_diff["decode_static_cache"] <= 1e-4
    # Every graph atc may compile, checked by (op, opset): opset 15 needs CANN 7.0+, 13 also reads on 5.0.
    for name in ("full", "prefill", "decode", *STATIC):
        assert oldest_cann(manifest.graphs[name].ops, 15) == "7.0", name
        assert oldest_cann(manifest.graphs[name].ops, 13) == "5.0", name


# ---- generate: what its tokens/s line times ----
# Options of `generate`, and the graphs its timed loop runs for 80 tokens after "ROMEO:" (past block_size=64):
# "window" marks a block_size-long input, the sliding window every token past block_size runs.
TIMED_GRAPHS = {
    "pytorch": ([], {"prefill", "decode", "forward window"}),
    "pytorch_no_cache": (["--use_cache", "false"], {"forward", "forward window"}),
    "onnx": ([], {"prefill", "decode", "full window"}),
    "onnx_int8": (["--int8", "true"], {"prefill", "decode", "full window"}),
    "onnx_static": (["--cache", "static"], {"prefill_static window", "decode_static"}),
    "onnx_half": (["--window", "half"], {"prefill", "decode"}),
    "onnx_no_cache": (["--use_cache", "false"], {"full window"}),  # full.onnx takes block_size, right-padded
}


@pytest.mark.parametrize("case", TIMED_GRAPHS)
def test_cli_generate_warms_every_graph_before_the_timer(
    baby: tuple[Path, Path], case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every onnxruntime session is built, and every graph run once at the shape the tokens use, before
    the first character is printed (the timer starts there): the tokens/s line times generation alone."""
    ckpt, folder = baby
    events: list[str] = []
    gpt_forward, gpt_forward_cached, gpt_decode = GPT.forward, GPT.forward_cached, GPT.decode_in_place
    onnx_run, onnx_session = ExportedGPT._run, onnxrt._session

    def label(graph: str, idx: torch.Tensor | np.ndarray) -> str:
        return f"{graph} window" if idx.shape[1] == 64 else graph  # the baby model's block_size

    def forward(self: GPT, idx: torch.Tensor, targets: torch.Tensor | None = None):
        events.append(label("forward", idx))
        return gpt_forward(self, idx, targets)

    def forward_cached(self: GPT, idx: torch.Tensor, past=None):
        events.append(label("prefill", idx))
        return gpt_forward_cached(self, idx, past)

    def decode_in_place(self: GPT, idx: torch.Tensor, *args):
        events.append("decode")
        return gpt_decode(self, idx, *args)

    def run(self: ExportedGPT, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        events.append(label(graph, feeds["idx"]))
        return onnx_run(self, graph, feeds)

    def session(path: Path, *args, **kwargs):
        events.append(f"session {Path(path).name}")
        return onnx_session(path, *args, **kwargs)

    class Stdout(io.StringIO):
        def write(self, text: str) -> int:
            events.append("print")
            return super().write(text)

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(GPT, "forward_cached", forward_cached)
    monkeypatch.setattr(GPT, "decode_in_place", decode_in_place)
    monkeypatch.setattr(ExportedGPT, "_run", run)
    monkeypatch.setattr(onnxrt, "_session", session)
    monkeypatch.setattr(sys, "stdout", stdout := Stdout())
    source = ["--checkpoint", str(ckpt)] if case.startswith("pytorch") else ["--onnx", str(folder)]
    options, timed = TIMED_GRAPHS[case]
    args = ["generate", *source, *options, "--prompt", "ROMEO:", "--max_new_tokens", "80", "--temperature", "0"]
    assert main(args) == 0
    first = events.index("print")
    after = {e for e in events[first:] if e != "print"}
    assert after == timed
    assert after <= set(events[:first]), f"first run inside the timed loop: {after - set(events[:first])}"
    assert len(stdout.getvalue()) == len("ROMEO:") + 80 + len("\n" + SEPARATOR + "\n")
    if case not in ("onnx_int8", "onnx_half"):  # both may pick other tokens past block_size
        assert stdout.getvalue() == EXPECTED["greedy"][:86] + "\n" + SEPARATOR + "\n"  # the same text as nanoGPT
    loaded, timing = capsys.readouterr().err.splitlines()[-2:]
    assert re.fullmatch(rf"Loaded {re.escape(source[1])} in \d+\.\d\d s", loaded)
    assert TOKENS_LINE.fullmatch(timing).group(1) == "80"


@pytest.mark.parametrize("source", ["--checkpoint", "--onnx"])
def test_cli_generate_warm_up_leaves_seeded_samples_alone(
    baby: tuple[Path, Path], source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warm-up samples before ``torch.manual_seed(seed)``: the printed samples are those of ``generate``
    called straight after the seed, as nanoGPT's sample.py does (and as this command did before it warmed up)."""
    ckpt, folder = baby
    args = ["--prompt", "ROMEO:", "--max_new_tokens", "70", "--temperature", "0.8", "--top_k", "20"]
    assert main(["generate", source, str(ckpt if source == "--checkpoint" else folder), *args,
                 "--num_samples", "2", "--seed", "7"]) == 0  # fmt: skip
    model, vocab = load_model(ckpt)
    sampler = model if source == "--checkpoint" else ExportedGPT(folder)
    idx = torch.from_numpy(vocab.encode("ROMEO:"))[None]
    torch.manual_seed(7)
    samples = [vocab.decode(extend(sampler, idx, 70, temperature=0.8, top_k=20)[0]) for _ in range(2)]
    assert capsys.readouterr().out == "".join(f"{sample}\n{SEPARATOR}\n" for sample in samples)


def test_cli_generate_static_cache_is_pytorchs(baby: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``--cache static``: 200 tokens from 6 run 142 past block_size=64, each re-reading the last window."""
    ckpt, folder = baby
    args = ["--prompt", EXPECTED["prompt"], "--max_new_tokens", "200", "--temperature", "0"]
    assert main(["generate", "--checkpoint", str(ckpt), *args]) == 0
    pytorch = capsys.readouterr().out
    assert pytorch.startswith(EXPECTED["greedy"] + "\n---------------")
    assert main(["generate", "--onnx", str(folder), "--cache", "static", *args]) == 0
    assert capsys.readouterr().out == pytorch
    exported = ExportedGPT(folder, cache="static")
    idx = torch.from_numpy(exported.vocab.encode(EXPECTED["prompt"]))[None]
    out = extend(exported, idx, 70, temperature=0.0, use_cache=False)  # every token a whole window
    assert exported.vocab.decode(out[0]) == EXPECTED["greedy"][:76]
    assert sorted(exported._sessions) == ["prefill_static"]


def test_cann_provider_gets_the_static_pair_and_options_that_write_nothing(
    baby: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CANN here: the provider list each session is asked for is recorded, and CPU runs it."""
    _, folder = baby
    opened, session = [], ort.InferenceSession

    def recording_session(path: str, providers: list):
        opened.append((Path(path).name, providers))
        return session(path, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CANNExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    exported, backend = open_export(folder, backend="cann")
    assert (backend, exported.cache) == ("cann", "static")
    idx = torch.from_numpy(exported.vocab.encode(EXPECTED["prompt"]))[None]
    assert exported.vocab.decode(extend(exported, idx, 80, temperature=0.0)[0]) == EXPECTED["greedy"][:86]
    options = {"device_id": "0", "enable_cann_graph": "1", "dump_graphs": "0", "dump_om_model": "0"}
    providers = [("CANNExecutionProvider", options), "CPUExecutionProvider"]
    assert opened == [("prefill_static.onnx", providers), ("decode_static.onnx", providers)]


def test_om_runners_take_their_mode_from_the_manifest(
    baby: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in ais_bench whose sessions run the matching .onnx: the static pair's .om files run in
    mode ``static``, the full graph's in ``dymdims`` exactly when the manifest lists dynamic_dims (the
    stand-in has no ``get_inputs``: nothing may be guessed from the loaded model)."""
    _, folder = baby
    out = _copy_export(folder, tmp_path / "export")
    manifest, soc, modes = Manifest.read(out), "Ascend310P3", []
    for graph in ("full", *STATIC):
        (out / f"{graph}_{soc}.om").write_bytes(b"fake om")
    static = {g: AtcStatic("atc ...", f"{g}_{soc}.om") for g in STATIC}
    manifest.atc = AtcRecord(soc, "atc ...", om=f"full_{soc}.om", static=static)
    manifest.write(out)

    class InferSession:
        def __init__(self, device_id: int, path: str) -> None:
            self.graph = Path(path).name.removesuffix(f"_{soc}.om")
            self.session = ort.InferenceSession(str(out / f"{self.graph}.onnx"))

        def infer(self, feeds: list[np.ndarray], mode: str = "static") -> list[np.ndarray]:
            modes.append((self.graph, mode))
            # ais_bench checks only byte sizes: the runner must hand over the model's own dtypes and order.
            dtypes = [
                {"tensor(int64)": np.int64, "tensor(float)": np.float32}[i.type] for i in self.session.get_inputs()
            ]
            assert [f.dtype for f in feeds] == dtypes and all(f.flags.c_contiguous for f in feeds)
            return self.session.run(None, dict(zip([i.name for i in self.session.get_inputs()], feeds, strict=True)))

    interface = ModuleType("ais_bench.infer.interface")
    interface.InferSession = InferSession
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)
    monkeypatch.setattr("lit_nanogpt.export.ascend.ais_bench_available", lambda: True)
    idx = torch.from_numpy(Vocabulary(manifest.vocab).encode(EXPECTED["prompt"]))[None]
    exported, backend = open_export(out, backend="om")
    assert (backend, exported.cache) == ("om", "static")
    assert exported.vocab.decode(extend(exported, idx, 80, temperature=0.0)[0]) == EXPECTED["greedy"][:86]
    assert sorted(set(modes)) == [("decode_static", "static"), ("prefill_static", "static")]
    for dims, mode in [(None, "static"), ([32, 64], "dymdims")]:
        manifest.dynamic_dims = dims
        manifest.write(out)
        modes.clear()
        exported, backend = open_export(out, backend="om", cache="dynamic")
        assert exported.vocab.decode(extend(exported, idx, 4, temperature=0.0)[0]) == EXPECTED["greedy"][:10]
        assert set(modes) == {("full", mode)}


def test_onnx_sampling_matches_pytorch(baby: tuple[Path, Path]) -> None:
    ckpt, folder = baby
    model, vocab = load_model(ckpt)
    exported = ExportedGPT(folder)
    idx = torch.from_numpy(vocab.encode("\n"))[None]
    torch.manual_seed(7)
    ref = extend(model, idx, 100, temperature=0.8, top_k=20)
    torch.manual_seed(7)
    got = extend(exported, idx, 100, temperature=0.8, top_k=20)
    assert vocab.decode(got[0]) == vocab.decode(ref[0])


def test_half_window_sees_the_documented_context(baby: tuple[Path, Path]) -> None:
    """window='half': once the cache is full, the last block_size // 2 tokens are read again."""
    ckpt, folder = baby
    model, vocab = load_model(ckpt)
    ids = vocab.encode(EXPECTED["greedy"])[:110]
    block, keep, start = 64, 32, 6
    losses, begin, cached = [], 0, None
    for t in range(start, len(ids)):  # predict ids[t] from ids[begin:t]
        if cached is not None and cached < block:
            cached += 1
        else:
            begin = max(0, t - block) if cached is None else t - keep
            cached = t - begin
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(ids[begin:t])[None])
        losses.append(torch.nn.functional.cross_entropy(logits[0], torch.tensor(ids[t : t + 1])).item())
    exported = ExportedGPT(folder)
    assert nll(exported, ids, start=start, window="half") == pytest.approx(np.mean(losses), abs=1e-5)
    assert nll(exported, ids, start=start, window="half") != pytest.approx(nll(exported, ids, start=start), abs=1e-6)


def test_int8_graphs_cost_little_validation_loss(baby: tuple[Path, Path]) -> None:
    _, folder = baby
    dm = CharDataModule(block_size=64)
    val = dm.corpus.split("val").numpy()
    fp32, int8 = ExportedGPT(folder), ExportedGPT(folder, int8=True)
    windows = [val[i * 64 : i * 64 + 65] for i in range(0, 1700, 85)]  # 20 windows spread over the split

    def loss(exported: ExportedGPT) -> float:
        total = 0.0
        for w in windows:
            (logits,) = exported._run("full", {"idx": w[None, :64]})
            z = logits[0].astype(np.float64)
            total += np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(64), w[1:]])
        return total / len(windows)

    assert 1.7 < loss(fp32) < 2.1  # nanoGPT's own figure for the whole split is 1.898
    assert abs(loss(int8) - loss(fp32)) < 0.02


# ---- bad input ----
def test_bad_export_folders_give_one_clear_error(baby: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = baby
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Manifest.read(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        Manifest.read(empty)
    broken = _copy_export(folder, tmp_path / "broken")
    (broken / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="damaged or not a lit-nanogpt manifest"):
        Manifest.read(broken)
    tampered = _copy_export(folder, tmp_path / "tampered")
    with (tampered / "decode.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="decode.onnx does not match the manifest's sha256"):
        Manifest.read(tampered)
    missing = _copy_export(folder, tmp_path / "missing")
    (missing / "full.onnx").unlink()
    with pytest.raises(ValueError, match="lists full.onnx but it is missing"):
        ExportedGPT(missing)


def test_format_version_1_folders_still_read(
    baby: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder from the exporter before the typed manifest (format_version 1, ``atc`` absent) reads as it is."""
    _, folder = baby
    old = _copy_export(folder, tmp_path / "v1")
    v2 = Manifest.read(folder).to_dict()
    assert v2.pop("atc") is None and v2["format_version"] == 3
    # Version 1 kept block_size beside a model of the five shape fields, and had no dropout.
    model = v2.pop("model")
    assert model["dropout"] == 0.0
    v1 = {"format": v2.pop("format"), "format_version": 1, "vocab": v2.pop("vocab"), "block_size": model["block_size"],
          "batch_size": v2.pop("batch_size"), "dynamic_dims": v2.pop("dynamic_dims"),
          "model": {k: model[k] for k in ("n_layer", "n_head", "n_embd", "vocab_size", "bias")}}  # fmt: skip
    v1.update({k: v for k, v in v2.items() if k != "format_version"})
    assert list(v1) == ["format", "format_version", "vocab", "block_size", "batch_size", "dynamic_dims", "model",
                        "opset", "exporter", "source", "max_abs_diff", "graphs", "files"]  # fmt: skip
    (old / MANIFEST).write_text(json.dumps(v1, indent=1))
    assert Manifest.read(old) == Manifest.read(folder)
    generate = ["generate", "--onnx", str(old), "--prompt", "ROMEO:", "--max_new_tokens", "20", "--temperature", "0"]
    assert main(generate) == 0
    assert capsys.readouterr().out.startswith(EXPECTED["greedy"][:26] + "\n")
    for change, message in [
        ({"graphs": None}, f"{old / MANIFEST} is damaged or not a lit-nanogpt manifest (AttributeError: "),
        ({"format_version": 4}, f"{old / MANIFEST} has format_version 4: upgrade lit-nanogpt to read it"),
        ({"format_version": "1"}, "(ValueError: format_version '1' is not 1, 2 or 3); export again"),
    ]:
        (old / MANIFEST).write_text(json.dumps({**v1, **change}))
        assert main(generate) == 1
        err = capsys.readouterr().err
        assert err.startswith("lit-nanogpt: error: ") and err.count("\n") == 1 and message in err, err


def test_failed_export_keeps_the_previous_one(baby: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, folder = baby
    out = _copy_export(folder, tmp_path / "export")
    before = (out / MANIFEST).read_text()
    model, vocab = load_model(ckpt)
    with pytest.raises(ValueError, match="differ from PyTorch's"):
        export_model(model, vocab, out, ExportSettings(int8=False, tolerance=-1.0, atc=None))  # no export can pass this
    assert (out / MANIFEST).read_text() == before
    Manifest.read(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no partial folder left


# ---- atc ----
@pytest.mark.slow  # a real process
@pytest.mark.parametrize("dims", [None, [16, 32, 64]])
def test_fake_atc_compiles_the_full_graph(
    baby: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dims: list[int] | None
) -> None:
    ckpt, _ = baby
    _fake_atc(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    model, vocab = load_model(ckpt)
    out = tmp_path / "export"
    atc = AtcOptions(soc_version="Ascend910B3", precision_mode="must_keep_origin_dtype", log="info")
    manifest = export_model(model, vocab, out, ExportSettings(int8=False, dynamic_dims=dims, atc=atc))
    calls = _atc_calls(tmp_path / "bin")
    args = calls["full"]
    assert args["soc_version"] == "Ascend910B3" and args["precision_mode"] == "must_keep_origin_dtype"
    assert args["input_shape"] == ("idx:1,-1" if dims else "idx:1,64")
    assert args.get("dynamic_dims") == ("16;32;64" if dims else None)
    assert manifest.atc.om == "full_Ascend910B3.om"
    assert (out / "full_Ascend910B3.om").read_bytes() == b"fake om for Ascend910B3"
    assert "ATC run success" in (out / manifest.atc.log).read_text()
    assert manifest.atc.command.startswith("atc --framework=5 --model=" + str((out / "full.onnx").resolve()))
    assert "full_Ascend910B3.om" in Manifest.read(out).files
    # The static pair: one .om each, every input's shape fixed, no --dynamic_dims whatever the full graph has.
    cache = ";".join(f"past_{kind}_{i}:1,4,64,32" for i in range(4) for kind in ("key", "value"))
    assert sorted(calls) == ["decode_static", "full", "prefill_static"]
    assert calls["prefill_static"]["input_shape"] == "idx:1,64;length:1"
    assert calls["decode_static"]["input_shape"] == f"idx:1,1;pos:1;{cache}"
    for graph in ("prefill_static", "decode_static"):
        assert "dynamic_dims" not in calls[graph] and calls[graph]["precision_mode"] == "must_keep_origin_dtype"
        record = manifest.atc.static[graph]
        assert (record.om, record.log) == (f"{graph}_Ascend910B3.om", f"{graph}_Ascend910B3.atc.log")
        assert (out / record.om).read_bytes() == b"fake om for Ascend910B3"
        assert record.command.startswith(f"atc --framework=5 --model={out.resolve()}/{graph}.onnx ")
        assert shlex.split(record.command)[5] == f"--input_shape={calls[graph]['input_shape']}"
    assert Manifest.read(out).atc == manifest.atc
    if dims:  # the dynamic-length full graph still pads to a profile length and stays exact
        exported = ExportedGPT(out)
        idx = torch.from_numpy(vocab.encode(EXPECTED["prompt"]))[None]
        assert vocab.decode(extend(exported, idx, 200, temperature=0.0)[0]) == EXPECTED["greedy"]


@pytest.mark.slow  # a real process
def test_failing_atc_fails_clearly_and_keeps_the_previous_export(
    baby: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, folder = baby
    out = _copy_export(folder, tmp_path / "export")
    script = _fake_atc(tmp_path / "bin", exit_code=2)
    model, vocab = load_model(ckpt)
    with pytest.raises(ValueError, match=r"atc failed \(exit code 2\).*E19999: fake atc failure"):
        export_model(model, vocab, out, ExportSettings(int8=False, atc=AtcOptions(atc=str(script))))
    assert Manifest.read(out).atc is None  # the good export is untouched
    assert "E19999" in (tmp_path / "export.full_Ascend310P3.atc.log").read_text()


def test_no_atc_writes_the_command_and_goes_on(
    baby: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = baby
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    model, vocab = load_model(ckpt)
    out = tmp_path / "export"
    manifest = export_model(model, vocab, out, ExportSettings(int8=False, atc=AtcOptions(soc_version="Ascend310B1")))
    lines = (out / "atc_command.sh").read_text().splitlines()
    static = [manifest.atc.static[g].command for g in ("prefill_static", "decode_static")]
    assert lines == [manifest.atc.command, *static]
    assert lines[0] == (
        f"atc --framework=5 --model={out.resolve()}/full.onnx --output={out.resolve()}/full_Ascend310B1 "
        "--soc_version=Ascend310B1 --input_shape=idx:1,64 --input_format=ND "
        "--precision_mode=allow_fp32_to_fp16 --log=error"
    )
    assert lines[1] == (
        f"atc --framework=5 --model={out.resolve()}/prefill_static.onnx "
        f"--output={out.resolve()}/prefill_static_Ascend310B1 --soc_version=Ascend310B1 "
        "'--input_shape=idx:1,64;length:1' --input_format=ND --precision_mode=allow_fp32_to_fp16 --log=error"
    )
    assert lines[2].startswith(f"atc --framework=5 --model={out.resolve()}/decode_static.onnx ")
    assert " '--input_shape=idx:1,1;pos:1;past_key_0:1,4,64,32;past_value_0:1,4,64,32;" in lines[2]
    assert manifest.atc.om is None
    assert [(r.om, r.log) for r in manifest.atc.static.values()] == [(None, None), (None, None)]
    # Expected without CANN: one plain line on stderr, not a logger warning.
    notices = [line for line in capsys.readouterr().err.splitlines() if "atc" in line]
    assert notices == [f"atc is not on PATH: compile for Ascend310B1 later with {out / 'atc_command.sh'}"]


@pytest.mark.slow  # a real process
def test_atc_tool_prints_and_runs_the_command(
    baby: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder = baby
    out = _copy_export(folder, tmp_path / "export")
    script = _fake_atc(tmp_path / "bin")
    tool = _atc_tool()
    assert tool.main([str(out), "--soc_version", "Ascend310", "--print_only", "true"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"atc --framework=5 --model={out.resolve()}/full.onnx " + (
        f"--output={out.resolve()}/full_Ascend310 --soc_version=Ascend310 --input_shape=idx:1,64 --input_format=ND "
        "--precision_mode=allow_fp32_to_fp16 --log=error\n"
    ))  # fmt: skip
    assert printed.splitlines()[1:] == [
        f"atc --framework=5 --model={out.resolve()}/{g}.onnx --output={out.resolve()}/{g}_Ascend310 "
        f"--soc_version=Ascend310 '--input_shape={shape}' --input_format=ND --precision_mode=allow_fp32_to_fp16 "
        "--log=error"
        for g, shape in [
            ("prefill_static", "idx:1,64;length:1"),
            ("decode_static", "idx:1,1;pos:1;" + ";".join(
                f"past_{k}_{i}:1,4,64,32" for i in range(4) for k in ("key", "value"))),
        ]
    ]  # fmt: skip
    assert tool.main([str(out), "--soc_version", "Ascend310", "--atc", str(tmp_path / "nope")]) == 1
    assert "atc " + str(tmp_path / "nope") + " does not exist" in capsys.readouterr().err
    assert tool.main([str(out), "--atc", str(script)]) == 0
    manifest = Manifest.read(out)  # re-hashed: the .om and its log are now part of the folder
    assert manifest.atc.om == "full_Ascend310P3.om" and "full_Ascend310P3.om" in manifest.files
    assert {"prefill_static_Ascend310P3.om", "decode_static_Ascend310P3.om"} <= set(manifest.files)
    # A failing recompile leaves that compiled folder exactly as it was, and no staging folder behind.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failing = _fake_atc(tmp_path / "bin2", exit_code=2)
    assert tool.main([str(out), "--atc", str(failing)]) == 1
    assert "atc failed (exit code 2)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    Manifest.read(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]


# ---- command line ----
def test_cli_export_then_generate_with_onnx(
    baby_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no atc
    assert main(["export", "--checkpoint", str(baby_ckpt), "--out", str(out), "--int8", "false"]) == 0
    assert "Wrote " + str(out) in capsys.readouterr().err and (out / "atc_command.sh").is_file()
    monkeypatch.undo()
    done = run_cli("generate", "--onnx", str(out), "--prompt", "ROMEO:", "--max_new_tokens", "200",
                   "--temperature", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(EXPECTED["greedy"] + "\n---------------")
    assert TOKENS_LINE.search(done.stderr).group(1) == "200"
    long = "ROMEO:\n" * 20
    assert main(["generate", "--onnx", str(out), "--prompt", long, "--max_new_tokens", "5", "--temperature", "0"]) == 0
    assert (
        "prompt has 140 characters, more than block_size=64: the model sees only the last 64" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pass exactly one of --checkpoint"),
        (["--checkpoint", "X", "--onnx", "Y"], "pass exactly one of --checkpoint"),
        (["--onnx", "NOPE"], "export folder NOPE does not exist"),
        (["--onnx", "EXPORT", "--prompt", "ROMEO€"], "not in the model's vocabulary: '€'"),
        (["--onnx", "EXPORT", "--int8", "true"], "no full_int8, prefill_int8, decode_int8 graph"),
        (["--checkpoint", "X", "--cache", "static"], "--int8, --backend, --cache and --threads apply to --onnx"),
        (["--checkpoint", "X", "--threads", "2"], "--int8, --backend, --cache and --threads apply to --onnx"),
        (["--onnx", "EXPORT", "--threads", "0"], "--threads 0: give at least 1, or leave it unset"),
        (["--onnx", "EXPORT", "--int8", "true", "--cache", "static"], "the static KV-cache graphs have no int8"),
        (
            ["--onnx", "EXPORT", "--int8", "true", "--backend", "cann"],
            "--int8 runs on the CPU only, not with "
            "--backend cann: the int8 graphs' DynamicQuantizeLinear and MatMulInteger are not ops atc parses",
        ),
        (
            ["--onnx", "EXPORT", "--int8", "true", "--backend", "om"],
            "--int8 runs on the CPU only, not with --backend om",
        ),
    ],
)
def test_cli_generate_bad_input_is_one_line(
    baby: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    _, folder = baby
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    manifest = Manifest.read(folder)
    for name in ("full", "prefill", "decode"):
        shutil.copy(folder / f"{name}.onnx", fp32_only)
        del manifest.graphs[f"{name}_int8"], manifest.files[f"{name}.int8.onnx"]
    for name in ("prefill_static", "decode_static"):
        shutil.copy(folder / f"{name}.onnx", fp32_only)
    (fp32_only / MANIFEST).write_text(json.dumps(manifest.to_dict()))
    assert main(["generate", *[str(fp32_only) if a == "EXPORT" else a for a in args]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lit-nanogpt: error: ") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--atc.soc_version", "Ascend910B"], "soc_version='Ascend910B' is not a chip atc knows (Atlas A2 (910B) "
         'chips are Ascend910B1..Ascend910B4, "Ascend" + the Name column of npu-smi info); e.g. Ascend310, '),
        (["--atc.soc_version", "910B3"], "Ascend910B1, Ascend910B2, Ascend910B2C, Ascend910B3, Ascend910B4"),
        (["--atc.soc_version", "Ascend310", "--atc.precision_mode", "must_keep_origin_dtype"],
         "precision_mode=must_keep_origin_dtype cannot compile for Ascend310: it has no fp32 MatMul"),
        (["--atc.precision_mode", "fp16"], "precision_mode='fp16' is not one of force_fp32, force_fp16, "),
        (["--dynamic_dims", "[64, 64]"], "has 1 distinct length(s): atc's --dynamic_dims takes 2 to 100 profiles"),
        (["--opset", "19"], "opset=19 is outside what atc parses: 9-13 (CANN 5.0+), 8-18 (CANN 7.0+)"),
    ],
)  # fmt: skip
def test_cli_export_bad_atc_settings_are_one_line(
    baby_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["export", "--checkpoint", str(baby_ckpt), "--out", str(tmp_path / "export"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lit-nanogpt: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "export").exists()


def test_check_graph_refuses_an_op_at_an_opset_atc_does_not_parse(tmp_path: Path) -> None:
    """atc looks ops up as ai.onnx::<opset>::<Op>: ReduceMean is registered up to 16 (CANN 7.0+), 13 (5.0)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 1])
    node = onnx.helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])
    path = tmp_path / "mean.onnx"
    for opset, cann in [(17, None), (16, "7.0"), (13, "5.0")]:
        graph = onnx.helper.make_graph([node], "mean", [x], [y])
        onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)]), path)
        assert oldest_cann(["ReduceMean"], opset) == cann
        if cann is None:
            with pytest.raises(ValueError, match=re.escape(
                "mean.onnx at opset 17 parses with no supported CANN's atc (ops atc of CANN 7.0+ reads only at "
                "other opsets: ReduceMean (8-16)): export with --opset 15 (CANN 7.0+) or 13 (CANN 5.0+)"
            )):  # fmt: skip
                check_graph(path, opset)
        else:
            assert check_graph(path, opset).ops == ["ReduceMean"]


# ---- the callback ----
def test_callback_exports_the_best_checkpoint_at_fit_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    L.seed_everything(0)
    dm = CharDataModule(block_size=TINY["block_size"], batch_size=4, val_batch_size=64)
    # Dropout on, as the GPU and NPU recipes have it: the export must run the model in eval mode throughout.
    model = LitGPT(GPTConfig(**{**TINY, "dropout": 0.2}, vocab_size=dm.vocab_size), warmup_iters=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss_est", save_top_k=1)
    export = OnnxExport(settings=ExportSettings(int8=False))
    trainer = L.Trainer(max_steps=6, val_check_interval=3, limit_val_batches=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[checkpoint, export])  # fmt: skip
    trainer.fit(model, dm)
    manifest = Manifest.read(tmp_path / "export")
    assert manifest.source == checkpoint.best_model_path and manifest.vocab == dm.vocab.chars
    assert manifest.atc.om is None and (tmp_path / "export" / "atc_command.sh").is_file()
    best, _ = load_model(checkpoint.best_model_path)
    idx = torch.randint(dm.vocab_size, (1, TINY["block_size"]))
    with torch.no_grad():
        ref, _ = best.forward_cached(idx)
    (logits,) = ort.InferenceSession(str(tmp_path / "export" / "full.onnx")).run(None, {"idx": idx.numpy()})
    assert np.abs(logits - ref.numpy()).max() <= 1e-4


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_enable_the_export(config: Path) -> None:
    from lit_nanogpt.cli import FIT_DEFAULTS, LitNanoGPTCLI

    callbacks = yaml.safe_load(FIT_DEFAULTS.read_text())["trainer"]["callbacks"]
    assert "lit_nanogpt.callbacks.OnnxExport" in [c["class_path"] for c in callbacks]
    assert "callbacks" not in yaml.safe_load(config.read_text())["trainer"]  # the recipes build on the defaults
    on_cpu = ["--trainer.accelerator=cpu", "--trainer.precision=32-true"]  # the NPU recipe, here
    cli = LitNanoGPTCLI(args=["--config", str(config), *on_cpu], run=False)
    assert [type(c) for c in cli.trainer.callbacks].count(OnnxExport) == 1


# ---- each setting defined once ----
def _field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring, read from the class's source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        field.target.id: doc.value.value
        for field, doc in zip(body, body[1:], strict=False)
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
    }


def test_each_export_setting_is_defined_once(
    baby_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ExportSettings and AtcOptions define every setting: their field docstrings are the help of
    ``lit-nanogpt export`` and tools/atc/compile.py, and the callback's YAML entry, through the CLI's
    parser and back, gives the same settings as the same names given to ``lit-nanogpt export``."""
    settings_docs, atc_docs = _field_docs(ExportSettings), _field_docs(AtcOptions)
    assert set(settings_docs) == {"opset", "batch_size", "dynamic_dims", "int8", "tolerance", "atc"}
    assert set(atc_docs) == {"soc_version", "precision_mode", "log", "atc", "enabled"}
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    export_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        _atc_tool().main(["--help"])
    tool_help = capsys.readouterr().out
    options = {f"--{k}": v for k, v in settings_docs.items() if k != "atc"}
    options |= {f"--atc.{k}": v for k, v in atc_docs.items()}
    options_tool = {f"--{k}": v for k, v in atc_docs.items() if k != "enabled"}
    for text, expected in [(export_help, options), (tool_help, options_tool)]:
        squeezed = "".join(text.split())  # the help is re-wrapped
        for option, doc in expected.items():
            assert f"  {option} " in text and "".join(doc.split()) in squeezed, option
        assert "atc_log" not in text and "--compile" not in text

    init_args = {
        "dirpath": str(tmp_path / "fit_export"),
        "weights": "last",
        "settings": {
            "opset": 14,
            "batch_size": 2,
            "dynamic_dims": [16, 32],
            "int8": False,
            "tolerance": 0.001,
            "atc": {"soc_version": "Ascend910B3", "precision_mode": "force_fp16", "log": "info", "atc": "/opt/atc",
                    "enabled": False},
        },
    }  # fmt: skip
    atc = AtcOptions(soc_version="Ascend910B3", precision_mode="force_fp16", log="info", atc="/opt/atc", enabled=False)
    expected = ExportSettings(opset=14, batch_size=2, dynamic_dims=[16, 32], int8=False, tolerance=0.001, atc=atc)
    config = yaml.safe_load((ROOT / "configs" / "shakespeare_char_cpu.yaml").read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lit_nanogpt.callbacks.OnnxExport", "init_args": init_args}]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    from lit_nanogpt.cli import LitNanoGPTCLI

    with pytest.raises(SystemExit):
        LitNanoGPTCLI(args=["fit", "--config", str(config_file), "--print_config"])
    (printed,) = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert printed == {"class_path": "lit_nanogpt.callbacks.OnnxExport", "init_args": init_args}
    config["trainer"]["callbacks"] = [printed]
    config_file.write_text(yaml.safe_dump(config))
    trainer = LitNanoGPTCLI(args=["--config", str(config_file)], run=False).trainer
    (callback,) = [c for c in trainer.callbacks if isinstance(c, OnnxExport)]
    assert (callback.dirpath, callback.weights, callback.settings) == (init_args["dirpath"], "last", expected)

    seen = {}

    def fake_export(model, vocab, out, settings, source=None):
        seen["settings"] = settings
        return SimpleNamespace(max_abs_diff={"full": 0.0})

    monkeypatch.setattr("lit_nanogpt.export.export_model", fake_export)
    flags = []
    for key, value in init_args["settings"].items():
        pairs = value.items() if key == "atc" else [(None, value)]
        for sub, v in pairs:
            flags += [f"--{key}.{sub}" if sub else f"--{key}", v if isinstance(v, str) else json.dumps(v)]
    assert main(["export", "--checkpoint", str(baby_ckpt), "--out", str(tmp_path / "export"), *flags]) == 0
    assert seen["settings"] == expected
    (tmp_path / "atc.yaml").write_text(yaml.safe_dump(init_args["settings"]["atc"]))  # the YAML block, as a file
    assert main(["export", "--checkpoint", str(baby_ckpt), "--out", str(tmp_path / "export"),
                 "--atc", str(tmp_path / "atc.yaml")]) == 0  # fmt: skip
    assert seen["settings"] == ExportSettings(atc=atc)


# ---- Ascend runtimes: gated ----
@RunIf(ais_bench=True)
def test_om_generation_on_ascend(baby: tuple[Path, Path], tmp_path: Path) -> None:  # pragma: no cover
    ckpt, _ = baby
    model, vocab = load_model(ckpt)
    atc = AtcOptions(precision_mode="must_keep_origin_dtype")
    export_model(model, vocab, tmp_path / "export", ExportSettings(int8=False, atc=atc))
    exported, backend = open_export(tmp_path / "export", backend="om")
    idx = torch.from_numpy(vocab.encode(EXPECTED["prompt"]))[None]
    assert backend == "om"
    assert vocab.decode(extend(exported, idx, 200, temperature=0.0)[0]) == EXPECTED["greedy"]


@RunIf(cann_provider=True)
def test_cann_execution_provider(baby: tuple[Path, Path]) -> None:  # pragma: no cover
    _, folder = baby
    exported, backend = open_export(folder, backend="cann")
    idx = torch.from_numpy(exported.vocab.encode(EXPECTED["prompt"]))[None]
    assert backend == "cann"
    assert exported.vocab.decode(extend(exported, idx, 200, temperature=0.0)[0]) == EXPECTED["greedy"]
