"""On a real Ascend NPU only (skipped elsewhere, the reason shown): fp16 fit, DDP on 2 cards, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_nanogpt import CharDataModule, GPTConfig, LitGPT
from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.npu import NPUAccelerator, NPUPrecision, SingleNPUStrategy
from tests.helpers import ROOT, TINY, RunIf, run_python, run_without_torch_npu

pytestmark = RunIf(npu=True)


def _fit(
    root: Path, steps: int = 2, plugin: NPUPrecision | None = None, ckpt_path: Path | None = None, **trainer: object
) -> tuple[L.Trainer, LitGPT, torch.Tensor]:
    """The documented Python form: accelerator, strategy and precision plugin given explicitly."""
    L.seed_everything(1337)
    model = LitGPT(GPTConfig(**TINY, vocab_size=65), warmup_iters=0)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    trainer = L.Trainer(
        accelerator=NPUAccelerator(),
        strategy=SingleNPUStrategy("npu:0"),
        plugins=[plugin or NPUPrecision("16-mixed", device="npu", init_scale=1024.0)],
        max_steps=steps,
        limit_val_batches=0,
        log_every_n_steps=1,  # loss_scale is logged on logging steps
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=root,
        **trainer,
    )
    data = CharDataModule(block_size=TINY["block_size"], batch_size=8, cache_dir=str(root / "cache"))
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model, initial


def test_fp16_fit_step_on_npu(tmp_path: Path) -> None:
    trainer, model, initial = _fit(tmp_path)
    assert trainer.strategy.root_device.type == "npu" and trainer.precision == "16-mixed"
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert float(trainer.callback_metrics["loss_scale"]) > 0
    assert type(trainer.precision_plugin.scaler) is torch.amp.GradScaler  # torch's scaler, on torch_npu's kernels
    assert not torch.equal(torch.cat([p.detach().flatten().cpu() for p in model.parameters()]), initial)


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


class StartState(L.Callback):
    """The restored scale and where the optimizer state lives, once a resumed fit starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scaler = trainer.precision_plugin.scaler
        self.scale, self.growth_interval = scaler.get_scale(), scaler.get_growth_interval()
        self.step = trainer.global_step
        state = trainer.optimizers[0].state
        # Lightning leaves AdamW's "step" on the CPU (lightning/fabric/utilities/optimizer.py); the moments move.
        self.optimizer_devices = {t.device.type for s in state.values() for k, t in s.items() if k != "step"}


@pytest.mark.parametrize("scaler", ["torch", "torch_npu"])
def test_resume_a_cpu_written_checkpoint_on_the_npu(tmp_path: Path, scaler: str) -> None:
    """fp16 on the CPU (NPUPrecision's CPU form: no "dynamic" key in the scaler state), resumed on the NPU."""
    L.seed_everything(1337)
    model = LitGPT(GPTConfig(**TINY, vocab_size=65), warmup_iters=0)
    data = CharDataModule(block_size=TINY["block_size"], batch_size=8, cache_dir=str(tmp_path / "cache"))
    cpu = L.Trainer(accelerator="cpu", devices=1, max_steps=4, limit_val_batches=0, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path / "cpu",
                    plugins=[NPUPrecision("16-mixed", device="cpu", init_scale=256.0, growth_interval=2)])  # fmt: skip
    cpu.fit(model, data)
    cpu.save_checkpoint(tmp_path / "cpu.ckpt")
    written = torch.load(tmp_path / "cpu.ckpt", weights_only=True)["NPUPrecision"]
    assert "dynamic" not in written and written["scale"] == 1024.0  # 256, doubled every 2 good steps
    cpu_weights = torch.cat([p.detach().flatten() for p in model.parameters()])

    import torch_npu

    chosen = torch_npu.npu.amp.GradScaler() if scaler == "torch_npu" else None
    start = StartState()
    plugin = NPUPrecision("16-mixed", device="npu", scaler=chosen)
    trainer, resumed, _ = _fit(tmp_path / "npu", steps=6, plugin=plugin, ckpt_path=tmp_path / "cpu.ckpt",
                               callbacks=[start])  # fmt: skip
    assert start.step == 4 and start.scale == 1024.0 and start.growth_interval == 2
    assert start.optimizer_devices == {"npu"}
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["train_loss"])
    after = torch.cat([p.detach().flatten().cpu() for p in resumed.parameters()])
    assert after.shape == cpu_weights.shape and not torch.equal(after, cpu_weights)  # it went on training


@RunIf(min_npus=2)
@pytest.mark.parametrize("autoload", ["0", "1"])  # 1: torch_npu loaded by `import torch`, as in users' scripts
def test_ddp_step_on_two_npus(tmp_path: Path, autoload: str) -> None:
    proc = run_python(
        str(ROOT / "tests" / "ddp_npu_run.py"),
        str(tmp_path),
        "npu",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "TORCH_DEVICE_BACKEND_AUTOLOAD": autoload},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = torch.load(tmp_path / "params.pt")
    assert result["world_size"] == 2 and result["backend"] == "hccl"
    # DDPNPUStrategy._setup_model wrapped the model on the card, under an NPU stream (Lightning's would raise).
    assert result["wrapper"] == "DistributedDataParallel" and result["device_ids"] == [0]
    assert result["root_device"] == "npu:0" and result["param_device"] == "npu:0"
    assert 0 < result["scale"] <= 1024.0
    assert not torch.equal(result["ranks"][0], result["initial"])
    torch.testing.assert_close(result["ranks"][0], result["ranks"][1], rtol=0, atol=0)
    ckpt = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
