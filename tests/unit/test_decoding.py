"""The one decoding loop over every backend: rows at different positions share each step and still get
their solo tokens; earlier export folders still decode; the sampling rules."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lit_nanogpt.decoding import Decoder, Row, Sampler, TorchBackend, generate, sample_next
from lit_nanogpt.export import ExportedGPT, ExportSettings, Manifest, export_model, onnxrt
from lit_nanogpt.export.graphs import _attention_symbolic, _export_graph, check_graph
from lit_nanogpt.export.manifest import MANIFEST, past_names
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.text import Vocabulary
from tests.helpers import TINY

VOCAB = Vocabulary("".join(chr(33 + i) for i in range(65)))
# Rows joining a running batch: the step each joins at and its prompt. 30 new tokens each run past
# block_size=16, so the exact window joins in too.
STARTS = [(0, [1, 2, 3]), (0, [9, 8, 7, 6, 5, 4]), (5, [5, 6, 7, 8, 9, 10, 11]), (6, [12, 13])]
NEW = 30


def lively(**options) -> GPT:
    """Matrices at std 0.3, so that the greedy text varies and a wrong position or cache entry changes it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, vocab_size=65, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(
    scope="module", params=[{}, {"rotary": True, "qk_norm": True, "tie_weights": False}], ids=["gpt2", "rotary"]
)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT, Path]:
    """A lively model and its export, the static pair at batch 4 (rows held at once on Ascend)."""
    model = lively(**request.param)
    folder = tmp_path_factory.mktemp("export") / "export"
    export_model(model, VOCAB, folder, ExportSettings(batch_size=4, int8=False, atc=None))
    return model, folder


def staggered(backend, window: str = "exact") -> tuple[list[list[int]], list[list[torch.Tensor]]]:  # noqa: ANN001
    """Each row of ``STARTS`` joins at its step; every row's tokens and per-step logits."""
    decoder = Decoder(backend, window=window)
    rows: list[Row] = []
    logits: list[list[torch.Tensor]] = []
    for step in range(STARTS[-1][0] + NEW):
        for prompt in [p for start, p in STARTS if start == step]:  # rows joining together prefill together
            rows.append(Row(list(prompt), Sampler(0.0)))
            logits.append([])
            assert decoder.admit(rows[-1])
        prompts = [p for _, p in STARTS]
        active = [i for i, row in enumerate(rows) if len(row.ids) < len(prompts[i]) + NEW]
        if not active:
            break
        batch = decoder.logits([rows[i] for i in active])
        for j, i in enumerate(active):
            logits[i].append(batch[j])
            rows[i].ids.append(int(batch[j].argmax()))
    return [row.ids for row in rows], logits


def backends(model: GPT, folder: Path) -> dict:
    return {
        "torch": lambda n: TorchBackend(model, max_batch=n),
        "onnx": lambda n: ExportedGPT(folder, max_batch=n),
        "onnx_static": lambda n: ExportedGPT(folder, cache="static", max_batch=n),
    }


@pytest.mark.parametrize(
    "backend,window", [("torch", "exact"), ("onnx", "exact"), ("onnx_static", "exact"), ("torch", "half")]
)
def test_rows_started_at_different_steps_give_each_rows_solo_tokens(
    exported: tuple[GPT, Path], backend: str, window: str
) -> None:
    model, folder = exported
    make = backends(model, folder)[backend]
    together, logits = staggered(make(4), window)
    for (_, prompt), ids, row_logits in zip(STARTS, together, logits, strict=True):
        solo, solo_logits = staggered_one(make(1), prompt, window)
        assert ids == solo
        assert len(set(ids[len(prompt) :])) >= 4  # varied text, or the check would prove little
        worst = max(float((a - b).abs().max()) for a, b in zip(row_logits, solo_logits, strict=True))
        assert worst <= 1e-5


def staggered_one(backend, prompt: list[int], window: str) -> tuple[list[int], list[torch.Tensor]]:  # noqa: ANN001
    decoder = Decoder(backend, window=window)
    row = Row(list(prompt), Sampler(0.0))
    decoder.admit(row)
    logits = []
    for _ in range(NEW):
        (z,) = decoder.logits([row])
        logits.append(z)
        row.ids.append(int(z.argmax()))
    return row.ids, logits


def test_every_backend_gives_pytorchs_greedy_and_seeded_tokens(exported: tuple[GPT, Path]) -> None:
    model, folder = exported
    prompts = [[1, 2, 3], [7, 7, 7]]
    for sampler in (lambda: Sampler(0.0), lambda: Sampler(0.8, 20, generator=torch.Generator().manual_seed(3))):
        results = {name: generate(make(2), prompts, 30, sampler())
                   for name, make in backends(model, folder).items()}  # fmt: skip
        two = ExportedGPT(folder, threads=2, max_batch=2)  # every graph on 2 spinning threads (generate --threads 2)
        results["onnx_2_threads"] = generate(two, prompts, 30, sampler())
        assert results["onnx"] == results["torch"] == results["onnx_static"] == results["onnx_2_threads"]
    bound = "25" if onnxrt.bounded_spin() else ""  # onnxruntime 1.26 and later take the bound
    assert set(threading_of(two).values()) == {(2, "1", bound)}  # prefill, decode and full alike


def threading_of(exported: ExportedGPT) -> dict[str, tuple[int, str, str]]:
    """Each open session's threads (0: one per core), whether they spin, and for how long at most (µs)."""
    generate(exported, [[1, 2]], 2, Sampler(0.0))  # opens prefill and decode
    return {graph: (session.get_session_options().intra_op_num_threads, entry(session, "allow_spinning"),
                    entry(session, "spin_duration_us")) for graph, session in exported._sessions.items()}  # fmt: skip


def entry(session: ort.InferenceSession, key: str) -> str:
    """A session's ``session.intra_op.KEY`` setting, "" where it has none."""
    try:
        return session.get_session_options().get_session_config_entry(f"session.intra_op.{key}")
    except RuntimeError:  # onnxruntime's "does not have configuration with key"
        return ""


def test_decode_spins_on_two_threads_by_default_where_the_spin_is_bounded(
    exported: tuple[GPT, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, folder = exported
    monkeypatch.setattr(onnxrt, "usable_cpus", lambda: 4)
    monkeypatch.setattr(onnxrt, "bounded_spin", lambda: True)
    assert onnxrt.decode_weights(model.config) < onnxrt.DECODE_THREADS_FROM  # a tiny model: one thread
    assert threading_of(ExportedGPT(folder)) == {"prefill": (0, "0", ""), "decode": (1, "0", "")}
    monkeypatch.setattr(onnxrt, "DECODE_THREADS_FROM", onnxrt.decode_weights(model.config))  # as large as it takes
    assert threading_of(ExportedGPT(folder)) == {"prefill": (0, "0", ""), "decode": (2, "1", "25")}
    assert set(threading_of(ExportedGPT(folder, threads=1)).values()) == {(1, "0", "")}  # --threads 1: no spin
    assert set(threading_of(ExportedGPT(folder, threads=3)).values()) == {(3, "1", "25")}
    monkeypatch.setattr(onnxrt, "usable_cpus", lambda: 1)  # one CPU to run on: one thread, nothing to spin for
    assert threading_of(ExportedGPT(folder))["decode"] == (1, "0", "")
    monkeypatch.setattr(onnxrt, "usable_cpus", lambda: 4)
    monkeypatch.setattr(onnxrt, "bounded_spin", lambda: False)  # before onnxruntime 1.26: no bound to set
    assert threading_of(ExportedGPT(folder))["decode"] == (1, "0", "")  # so one thread, as before
    assert set(threading_of(ExportedGPT(folder, threads=2)).values()) == {(2, "1", "")}  # asked: it spins unbounded
    with pytest.raises(ValueError, match="threads=0 must be at least 1, or None for the defaults"):
        ExportedGPT(folder, threads=0)


def test_decode_weights_count_the_products_of_a_decode_step() -> None:
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False))
    products = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # head tied to wte
    assert onnxrt.decode_weights(model.config) == products == 6 * 12 * 384**2 + 65 * 384
    assert onnxrt.decode_weights(model.config) >= onnxrt.DECODE_THREADS_FROM  # nanoGPT's 10.65M model: 2 threads


def test_usable_cpus_are_the_affinity_else_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert onnxrt.usable_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS and Windows have none
    assert onnxrt.usable_cpus() == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undetermined"
    assert onnxrt.usable_cpus() == 1


@pytest.mark.parametrize(("version", "bounded"), [("1.25.1", False), ("1.26.0", True), ("1.32.0", True),
                                                  ("1.26.0.dev20260501", True), ("1.26rc1", True), ("2.0.0", True),
                                                  ("1", False), ("nightly", False)])  # fmt: skip
def test_bounded_spin_reads_onnxruntimes_version(version: str, bounded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "__version__", version)
    assert onnxrt.bounded_spin() is bounded


def test_slots_are_taken_and_given_back(exported: tuple[GPT, Path]) -> None:
    model, _ = exported
    decoder = Decoder(TorchBackend(model, max_batch=2))
    rows = [Row([1]), Row([2]), Row([3])]
    assert [decoder.admit(r) for r in rows] == [True, True, False] and decoder.free_slots == 0
    decoder.release(rows[0])
    assert decoder.admit(rows[2]) and rows[2].slot == 0
    with pytest.raises(ValueError, match="admit a row before stepping it"):
        decoder.step([rows[0]])
    with pytest.raises(ValueError, match="2 prompts at once, but the backend holds 1 rows"):
        generate(TorchBackend(model), [[1], [2]], 3)


def test_static_pair_caps_the_rows_at_its_batch(exported: tuple[GPT, Path]) -> None:
    _, folder = exported
    assert ExportedGPT(folder, cache="static", max_batch=16).max_batch == 4
    assert ExportedGPT(folder, max_batch=16).max_batch == 16


class Version2Decode(torch.nn.Module):
    """The decode graph before format version 3: (idx, *past) -> (logits, *past one position longer)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, present = self.model.forward_cached(idx, [(past[i], past[i + 1]) for i in range(0, len(past), 2)])
        return (logits, *(t for kv in present for t in kv))


def test_a_version_2_folder_still_decodes_one_row_at_a_time(exported: tuple[GPT, Path], tmp_path: Path) -> None:
    """Before format version 3 the decode graph took no positions and returned the whole cache, one longer."""
    model, folder = exported
    old = tmp_path / "v2"
    shutil.copytree(folder, old)
    L, nh, hs = model.config.n_layer, model.config.n_head, model.config.n_embd // model.config.n_head
    past, present = past_names(L, "past"), past_names(L, "present")
    axes = {"idx": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes |= {n: {0: "batch", 2: "past" if n.startswith("past") else "total"} for n in past + present}
    cache = tuple(torch.zeros(1, nh, 2, hs) for _ in past)
    with _attention_symbolic(hs, 15), torch.no_grad():
        _export_graph(Version2Decode(model), (torch.zeros(1, 1, dtype=torch.long), *cache), old / "decode.onnx",
                      ["idx", *past], ["logits", *present], axes, 15)  # fmt: skip
    manifest = Manifest.read(folder)
    manifest.graphs["decode"] = check_graph(old / "decode.onnx", 15)
    assert [t.name for t in manifest.graphs["decode"].inputs][:2] == ["idx", "past_key_0"]
    manifest.write(old)
    data = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**data, "format_version": 2}))
    backend = ExportedGPT(old, max_batch=4)
    assert backend.max_batch == 1
    prompt = [[3, 1, 4, 1, 5]]
    assert generate(backend, prompt, 30, Sampler(0.0)) == generate(TorchBackend(model), prompt, 30, Sampler(0.0))


def test_sampling_rules() -> None:
    """nanoGPT's temperature and top-k, and nucleus sampling (top-p) for the server."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_next(logits, 0.0, None).item() == 1  # temperature 0 is greedy
    assert sample_next(logits, 5.0, 1).item() == 1  # top_k 1 is greedy
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, 2, g).item() for _ in range(200)} == {1, 3}  # top_k=2: the two largest
    # softmax([0, 3, 1, 2]) = .03, .64, .09, .24: top_p 0.7 keeps 3 and 2 (the first to reach 0.7), never 1 or 0
    assert {sample_next(logits, 1.0, None, g, top_p=0.7).item() for _ in range(300)} == {1, 3}
    assert {sample_next(logits, 1.0, None, g, top_p=0.5).item() for _ in range(50)} == {1}  # the first alone
    for bad, message in [({"temperature": -1}, "temperature=-1"), ({"top_p": 0.0}, "top_p=0.0"),
                         ({"top_k": 0}, "top_k=0")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            Sampler(**bad)
    # Rows that share a sampler draw from its generator in one call, in row order, as one batch.
    a = Sampler(1.0, generator=torch.Generator().manual_seed(5))
    b = torch.multinomial(torch.softmax(logits.repeat(3, 1), -1), 1, generator=torch.Generator().manual_seed(5))
    assert a(logits.repeat(3, 1)).tolist() == b[:, 0].tolist()
    assert np.array_equal(np.array(sample_next(logits.repeat(2, 1), 0.0, None)[:, 0]), [1, 1])
