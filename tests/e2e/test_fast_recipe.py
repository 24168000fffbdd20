"""The fast CPU recipe (issue 11) through every path: fit as a user runs it (a real process), then validate and
generate with the KV cache and the exported graphs (dynamic and static KV cache) giving PyTorch's greedy text,
in-process on what the fit wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, cli, run_cli

FAST = ROOT / "configs" / "shakespeare_char_cpu_fast.yaml"


def test_fast_recipe_trains_exports_and_generates_the_same_text_everywhere(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    root = tmp_path / "run"
    done = run_cli("fit", "--config", str(FAST), "--trainer.max_steps=30", "--trainer.val_check_interval=30",
                   "--trainer.logger=false", f"--trainer.default_root_dir={root}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    best = root / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    arch = ckpt["hyper_parameters"]["arch"]
    assert {k: arch[k] for k in ("rotary", "qk_norm", "mlp_activation", "tie_weights")} == {
        "rotary": True, "qk_norm": True, "mlp_activation": "relu2", "tie_weights": False}  # fmt: skip
    assert ckpt["hyper_parameters"]["optimizer"] == "muon"
    assert "model.transformer.wpe.weight" not in ckpt["state_dict"]  # rotary: no position table
    manifest = yaml.safe_load((root / "export" / "manifest.json").read_text())
    assert manifest["model"]["rotary"] is True and manifest["model"]["mlp_activation"] == "relu2"

    validated = cli(capfd, "validate", "--config", str(FAST), f"--ckpt_path={best}", "--trainer.logger=false",
                        f"--trainer.default_root_dir={tmp_path / 'validate'}")  # fmt: skip
    assert validated.returncode == 0, validated.stderr[-3000:]
    printed = float(done.stdout.split("val_loss=")[-1].split(")")[0])
    assert f"{printed:.4f}" in validated.stdout

    greedy = ["--prompt", "ROMEO:", "--max_new_tokens", "100", "--temperature", "0"]  # past block_size=64
    texts = {}
    for name, source in {"checkpoint": ["--checkpoint", str(best)], "onnx": ["--onnx", str(root / "export")],
                         "onnx static": ["--onnx", str(root / "export"), "--cache", "static"]}.items():  # fmt: skip
        out = cli(capfd, "generate", *source, *greedy)
        assert out.returncode == 0, out.stderr[-3000:]
        texts[name] = out.stdout
    assert texts["checkpoint"].startswith("ROMEO:") and len(set(texts["checkpoint"][6:106])) > 3  # not one letter
    assert texts["onnx"] == texts["checkpoint"] and texts["onnx static"] == texts["checkpoint"]
