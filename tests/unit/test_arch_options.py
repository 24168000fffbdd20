"""GPTConfig's speed-run options (rotary, qk_norm, relu2, an untied head), each alone and all together,
through every path a model takes: the KV cache, generation, checkpoints and the ONNX export."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_nanogpt.checkpoint import load_model, read_checkpoint
from lit_nanogpt.export import ExportedGPT, ExportSettings, Manifest, check_graph, export_model
from lit_nanogpt.export.atc import ATC_ONNX_OPS, oldest_cann
from lit_nanogpt.export.manifest import GRAPHS, MANIFEST
from lit_nanogpt.model import GPT, GPTConfig, apply_rotary, rms_norm, rotary_tables
from lit_nanogpt.module import LitGPT
from lit_nanogpt.text import Vocabulary
from tests.helpers import ARCH_OPTIONS, TINY, extend

VOCAB = Vocabulary("".join(chr(33 + i) for i in range(65)))
NEW_FIELDS = ("rotary", "qk_norm", "mlp_activation", "tie_weights")
options = pytest.mark.parametrize("options", list(ARCH_OPTIONS.values()), ids=list(ARCH_OPTIONS))


def config(**options) -> GPTConfig:
    return GPTConfig(**TINY, vocab_size=65, **options)


def lively(**options) -> GPT:
    """A tiny model with every matrix drawn at std 0.3 rather than the init's 0.02 (and the untied head
    not zero), so that its greedy text varies and a wrong position or cache entry changes it."""
    torch.manual_seed(0)
    model = GPT(config(**options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


def prompt() -> torch.Tensor:
    return torch.randint(65, (1, 5), generator=torch.Generator().manual_seed(1))


@options
def test_cached_forward_equals_full_forward(options: dict) -> None:
    """Rotary must place the new tokens at their true positions, past the cache's length."""
    model = lively(**options)
    x = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(x, x)  # (B, T, V): the training path, is_causal attention
        prefill, past = model.forward_cached(x[:, :10])
        torch.testing.assert_close(prefill, full[:, :10], atol=1e-5, rtol=1e-5)
        for t in range(10, 16):
            step, past = model.forward_cached(x[:, t : t + 1], past)
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


@options
def test_greedy_generation_is_the_same_with_and_without_the_cache(options: dict) -> None:
    model = lively(**options)
    cached = extend(model, prompt(), 40, temperature=0.0, use_cache=True)  # 29 past block_size=16
    uncached = extend(model, prompt(), 40, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 5:].tolist())) >= 5  # varied text, or the check would prove little


def test_each_option_changes_the_logits() -> None:
    """An option that silently did nothing would pass every parity check above."""
    x = torch.randint(0, 65, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base, _ = lively()(x, x)
        for name, opts in ARCH_OPTIONS.items():
            logits, _ = lively(**opts)(x, x)
            assert (logits - base).abs().max() > 0.1, name


def test_parameters_keys_and_counts() -> None:
    default = GPT(config())
    keys, n, total = set(default.state_dict()), default.get_num_params(), default.get_num_params(False)
    wpe, wte = 16 * 32, 65 * 32
    for name, opts in ARCH_OPTIONS.items():
        model = GPT(config(**opts))
        rotary, untied = opts.get("rotary", False), not opts.get("tie_weights", True)
        assert set(model.state_dict()) == keys - ({"transformer.wpe.weight"} if rotary else set()), name
        # Non-embedding: the position table was never counted; an untied head replaces the tied table's count.
        assert model.get_num_params() == n, name
        assert model.get_num_params(False) == total - rotary * wpe + untied * wte, name
        assert model.flops_per_token(16) == default.flops_per_token(16), name
        assert (model.lm_head.weight is model.transformer.wte.weight) != untied, name
    assert "rope_cos" not in GPT(config(rotary=True)).state_dict()  # tables come from the config


def test_untied_head_starts_at_zero_and_uniform_loss() -> None:
    torch.manual_seed(0)
    model = GPT(config(tie_weights=False))
    assert torch.count_nonzero(model.lm_head.weight) == 0 and torch.count_nonzero(model.transformer.wte.weight) > 0
    x = torch.randint(0, 65, (2, 16))
    logits, loss = model(x, x)
    assert torch.count_nonzero(logits) == 0
    assert loss is not None and loss.item() == pytest.approx(math.log(65), abs=1e-5)  # fp32 log-sum-exp


def test_rotary_scores_depend_on_relative_position_only() -> None:
    cos, sin = rotary_tables(16, 8)
    q, k = torch.randn(2, 1, 1, 8, generator=torch.Generator().manual_seed(0))

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q, (cos[m : m + 1], sin[m : m + 1]))
        kn = apply_rotary(k, (cos[n : n + 1], sin[n : n + 1]))
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    assert apply_rotary(q, (cos[:1], sin[:1])).equal(q)  # position 0: no rotation


def test_rms_norm_gives_unit_rms_per_head() -> None:
    x = 5 * torch.randn(2, 2, 3, 16, generator=torch.Generator().manual_seed(0))  # (B, nh, T, hs)
    rms = rms_norm(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"mlp_activation": "swiglu"}, "mlp_activation='swiglu' is not one of gelu, relu2"),
        ({"rotary": True, "n_embd": 30, "n_head": 2}, "rotary needs an even head size, not n_embd // n_head = 15"),
    ],
)
def test_bad_option_is_one_line(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        GPTConfig(**{**TINY, "vocab_size": 65, **bad})
    assert "\n" not in str(e.value)


# ---- checkpoints ----
@options
def test_checkpoint_round_trip(options: dict, tmp_path: Path) -> None:
    lit = LitGPT(config(**options))
    lit.model.load_state_dict(lively(**options).state_dict())
    lit.vocab = VOCAB
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.strategy.connect(lit)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    saved = torch.load(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["arch"] == dataclasses.asdict(config(**options))
    model, _ = load_model(tmp_path / "model.ckpt")  # generate's and export's way in
    reloaded = LitGPT.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)  # Lightning's: arch as a dict
    assert model.config == reloaded.config == config(**options)
    x = torch.randint(0, 65, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = lit.model.eval()(x, x)
        for m in (model, reloaded.model.eval()):
            assert torch.equal(m(x, x)[0], ref)


def test_checkpoint_from_before_the_options_loads(baby_ckpt: Path, tmp_path: Path) -> None:
    """nanoGPT's baby model imported by a lit-nanogpt without the options: its arch lacks their fields.
    (test_cli validates such a checkpoint, with its fields at the top level, through the command line.)"""
    ckpt = torch.load(baby_ckpt, map_location="cpu", weights_only=True)
    arch = ckpt["hyper_parameters"]["arch"]
    for name in NEW_FIELDS:
        del arch[name]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert (
        read_checkpoint(tmp_path / "old.ckpt")["hyper_parameters"]["arch"]
        == read_checkpoint(baby_ckpt)["hyper_parameters"]["arch"]
    )
    model, _ = load_model(tmp_path / "old.ckpt")
    assert model.config == load_model(baby_ckpt)[0].config and model.config.tie_weights and not model.config.rotary
    assert LitGPT.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True).config == model.config


# ---- ONNX export ----
@options
def test_onnx_export_uses_atc_ops_and_generates_pytorchs_text(options: dict, tmp_path: Path) -> None:
    model = lively(**options)
    dims = [8, 16] if len(options) > 1 else None  # the full graph with a dynamic length, once
    manifest = export_model(model, VOCAB, tmp_path / "export", ExportSettings(int8=False, dynamic_dims=dims, atc=None))
    assert Manifest.read(tmp_path / "export").model == model.config  # the options flow into the manifest
    for name in GRAPHS:
        ops = check_graph(tmp_path / "export" / f"{name}.onnx", 15).ops
        assert set(ops) <= ATC_ONNX_OPS and oldest_cann(ops, 15) == "7.0", name
    assert max(manifest.max_abs_diff.values()) <= 1e-4
    for use_cache in (True, False):
        expected = VOCAB.decode(extend(model, prompt(), 30, temperature=0.0, use_cache=use_cache)[0])
        for cache in ("dynamic", "static"):
            exported = ExportedGPT(tmp_path / "export", cache=cache)
            got = VOCAB.decode(extend(exported, prompt(), 30, temperature=0.0, use_cache=use_cache)[0])
            assert got == expected, (cache, use_cache)


def test_manifest_from_before_the_options_still_reads(tmp_path: Path) -> None:
    export_model(lively(), VOCAB, tmp_path / "export", ExportSettings(int8=False, atc=None))
    old = shutil.copytree(tmp_path / "export", tmp_path / "old")
    data = json.loads((old / MANIFEST).read_text())
    for name in NEW_FIELDS:
        del data["model"][name]
    (old / MANIFEST).write_text(json.dumps(data))
    assert Manifest.read(old) == Manifest.read(tmp_path / "export")
    assert Manifest.read(old).model == config()
