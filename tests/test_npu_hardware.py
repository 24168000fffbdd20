"""On a real Ascend NPU only (skipped elsewhere, the reason shown): fp16 fit, DDP on 2 cards, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, TINY, RunIf, run_without_torch_npu

from lit_nanogpt import CharDataModule, GPTConfig, LitGPT
from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.npu import NPUAccelerator, NPUPrecision, SingleNPUStrategy

pytestmark = RunIf(npu=True)


def _fit(root: Path, steps: int = 2) -> tuple[L.Trainer, LitGPT, torch.Tensor]:
    """The documented Python form: accelerator, strategy and precision plugin given explicitly."""
    L.seed_everything(1337)
    model = LitGPT(GPTConfig(**TINY, vocab_size=65), warmup_iters=0)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    trainer = L.Trainer(
        accelerator=NPUAccelerator(),
        strategy=SingleNPUStrategy("npu:0"),
        plugins=[NPUPrecision("16-mixed", device="npu", init_scale=1024.0)],
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=root,
    )
    data = CharDataModule(block_size=TINY["block_size"], batch_size=8, cache_dir=str(root / "cache"))
    trainer.fit(model, data)
    return trainer, model, initial


def test_fp16_fit_step_on_npu(tmp_path: Path) -> None:
    trainer, model, initial = _fit(tmp_path)
    assert trainer.strategy.root_device.type == "npu" and trainer.precision == "16-mixed"
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert float(trainer.callback_metrics["loss_scale"]) > 0
    assert not torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), initial)


def test_checkpoint_round_trip_loads_without_torch_npu(tmp_path: Path) -> None:
    trainer, model, _ = _fit(tmp_path)
    path = tmp_path / "npu.ckpt"
    trainer.save_checkpoint(path)
    # A fresh interpreter where torch_npu cannot be imported (nor auto-loaded) stands for a machine without it.
    code = (
        "import torch; from lit_nanogpt.checkpoint import load_model\n"
        f"m, _ = load_model({str(path)!r}); print(float(sum(p.double().sum() for p in m.parameters())))"
    )
    proc = run_without_torch_npu(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = float(sum(p.detach().cpu().double().sum() for p in model.parameters()))
    assert float(proc.stdout.split()[-1]) == pytest.approx(expected, rel=1e-6)
    reloaded, _ = load_model(path)
    for a, b in zip(reloaded.parameters(), model.model.parameters(), strict=True):
        assert torch.equal(a, b.detach().cpu())


@pytest.mark.skipif(NPUAccelerator.auto_device_count() < 2, reason="needs 2 Ascend NPUs with torch_npu and CANN")
def test_ddp_on_two_npus(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_npu_run.py"), str(tmp_path), "npu"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = torch.load(tmp_path / "params.pt")
    assert result["world_size"] == 2 and result["backend"] == "hccl"
    assert not torch.equal(result["ranks"][0], result["initial"])
    torch.testing.assert_close(result["ranks"][0], result["ranks"][1], rtol=0, atol=0)
