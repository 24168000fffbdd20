"""``NPUPrecision`` on the CPU: the very class the NPU uses, training a tiny model for real."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from fake_npu import VendorGradScaler
from lightning.pytorch.plugins.precision import MixedPrecision

from lit_nanogpt import CharDataModule, GPTConfig, LitGPT
from lit_nanogpt.npu import NPUPrecision
from tests.helpers import TINY

INIT_SCALE = 1024.0  # low enough that the tiny model never overflows by itself in fp16
INF_STEP = 12  # the optimizer step whose gradients get an inf
STEPS = 30
LOG_EVERY = 5


def current_scale(trainer: L.Trainer) -> float:
    """The scale as the scaler holds it, without get_scale() (whose calls a test counts)."""
    return float(trainer.precision_plugin.scaler._get_scale_async())


class Recorder(L.Callback):
    """Losses of every step, and the parameters and loss scale around the step with an inf gradient."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.scale_before = self.scale_after = math.nan
        self.params_before: list[torch.Tensor] = []
        self.params_after: list[torch.Tensor] = []
        self.params_next: list[torch.Tensor] = []

    @staticmethod
    def _params(pl_module: L.LightningModule) -> list[torch.Tensor]:
        return [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == INF_STEP:
            self.params_before = self._params(pl_module)
            self.scale_before = current_scale(trainer)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fit_loop.batch_idx == INF_STEP:
            pl_module.model.lm_head.weight.grad[0, 0] = math.inf

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int):
        self.losses.append(float(out["loss"]))
        if idx == INF_STEP:
            self.params_after = self._params(pl_module)
            self.scale_after = current_scale(trainer)
        if idx == INF_STEP + 1:
            self.params_next = self._params(pl_module)


def tiny_trainer(root: Path, plugin: Any, steps: int, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        plugins=[plugin],
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


def tiny_fit(root: Path, trainer: L.Trainer, ckpt_path: Path | None = None) -> LitGPT:
    L.seed_everything(1337)
    model = LitGPT(
        GPTConfig(**TINY, vocab_size=65), learning_rate=1e-2, min_lr=1e-3, warmup_iters=0, lr_decay_iters=STEPS
    )
    data = CharDataModule(block_size=TINY["block_size"], batch_size=16, cache_dir=str(root / "cache"))
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[L.Trainer, Recorder]:
    """One short fp16 AMP fit on the CPU through NPUPrecision, with an inf injected at step INF_STEP."""
    root = tmp_path_factory.mktemp("fp16")
    recorder = Recorder()
    plugin = NPUPrecision("16-mixed", device="cpu", init_scale=INIT_SCALE, growth_interval=1000)
    reads: list[float] = []
    get_scale = plugin.scaler.get_scale

    def counted() -> float:  # the reads that wait for the device: once the scale is a tensor
        scale = get_scale()
        if plugin.scaler._get_scale_async() is not None:
            reads.append(scale)
        return scale

    plugin.scaler.get_scale = counted
    trainer = tiny_trainer(root, plugin, STEPS, gradient_clip_val=1.0, log_every_n_steps=LOG_EVERY,
                           callbacks=[recorder])  # fmt: skip
    tiny_fit(root, trainer)
    trainer.reads = list(reads)  # type: ignore[attr-defined]  # during the fit only
    return trainer, recorder


def test_same_class_serves_the_cpu_with_fp16_autocast(fp16_run: tuple[L.Trainer, Recorder]) -> None:
    trainer, _ = fp16_run
    plugin = trainer.precision_plugin
    assert isinstance(plugin, NPUPrecision) and plugin.device == "cpu" and trainer.precision == "16-mixed"
    with plugin.forward_context():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.float16


def test_fp16_loss_goes_down(fp16_run: tuple[L.Trainer, Recorder]) -> None:
    _, rec = fp16_run
    assert len(rec.losses) == STEPS
    first, last = sum(rec.losses[:5]) / 5, sum(rec.losses[-5:]) / 5
    assert rec.losses[0] > 4.0  # about ln(65) = 4.17 untrained
    assert last < first - 0.4, rec.losses  # measured: 3.86 -> 3.26


def test_inf_gradient_skips_the_step_and_halves_the_scale(fp16_run: tuple[L.Trainer, Recorder]) -> None:
    trainer, rec = fp16_run
    assert rec.scale_before == INIT_SCALE
    assert rec.scale_after == INIT_SCALE / 2
    for before, after in zip(rec.params_before, rec.params_after, strict=True):
        assert torch.equal(before, after)
    # The next step is taken as usual: the skip was for the bad step only.
    assert any(not torch.equal(a, b) for a, b in zip(rec.params_after, rec.params_next, strict=True))
    assert trainer.precision_plugin.skipped_steps == 1


def test_loss_scale_and_skipped_steps_are_logged(fp16_run: tuple[L.Trainer, Recorder]) -> None:
    trainer, _ = fp16_run
    metrics = trainer.callback_metrics
    assert float(metrics["loss_scale"]) == INIT_SCALE / 2
    assert float(metrics["skipped_steps"]) == 1.0
    state = trainer.precision_plugin.state_dict()
    assert state["scale"] == INIT_SCALE / 2 and state["skipped_steps"] == 1


def test_scale_is_read_on_logging_steps_only(fp16_run: tuple[L.Trainer, Recorder]) -> None:
    """get_scale() waits for the device: once per logging step (steps 5, 10, ... 30), never per step."""
    trainer, _ = fp16_run
    assert trainer.reads == [INIT_SCALE] * 2 + [INIT_SCALE / 2] * 4  # the inf came at step 13


def test_npu_scaler_is_torchs() -> None:
    """The scaler built for "npu" (here "cpu": same code path) is torch's, not torch_npu's."""
    assert type(NPUPrecision("16-mixed", device="cpu").scaler) is torch.amp.GradScaler


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of a 4-step fp16 fit on CPU by NPUPrecision and by Lightning's MixedPrecision (a GPU run's).

    growth_interval=2 doubles the scale twice: 256 -> 1024, which a resume must pick up.
    """
    root = tmp_path_factory.mktemp("written")
    paths = {}
    for name, plugin in {
        "NPUPrecision": NPUPrecision("16-mixed", device="cpu", init_scale=256.0, growth_interval=2),
        "MixedPrecision": MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", 256.0, growth_interval=2)),
    }.items():
        trainer = tiny_trainer(root / name, plugin, 4)
        tiny_fit(root / name, trainer)
        trainer.save_checkpoint(paths.setdefault(name, root / f"{name}.ckpt"))
        assert name in torch.load(paths[name], weights_only=True)  # the plugin's state is under its class name
    return paths


class ScaleAtStart(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scale = trainer.precision_plugin.scaler.get_scale()
        self.growth_interval = trainer.precision_plugin.scaler.get_growth_interval()


@pytest.mark.parametrize("writer", ["NPUPrecision", "MixedPrecision"])
@pytest.mark.parametrize("scaler", ["torch", "torch_npu"])
def test_resume_takes_the_scale_written_anywhere(tmp_path: Path, written: dict[str, Path], writer: str, scaler: str):
    """A CPU/GPU scaler's state has no "dynamic", which torch_npu's scaler requires (KeyError otherwise)."""
    chosen = VendorGradScaler(init_scale=2.0**16) if scaler == "torch_npu" else None
    plugin = NPUPrecision("16-mixed", device="cpu", scaler=chosen)
    start = ScaleAtStart()
    tiny_fit(tmp_path, tiny_trainer(tmp_path, plugin, 5, callbacks=[start]), ckpt_path=written[writer])
    assert start.scale == 1024.0 and start.growth_interval == 2
    assert plugin.skipped_steps == 0


def test_state_round_trip_restores_scale_and_count() -> None:
    plugin = NPUPrecision("16-mixed", device="cpu", init_scale=8.0, growth_interval=3)
    plugin.load_state_dict({**NPUPrecision("16-mixed", device="cpu", init_scale=4.0).state_dict(), "skipped_steps": 5})
    assert plugin.scaler.get_scale() == 4.0 and plugin.skipped_steps == 5


def test_fused_optimizer_with_clipping_is_a_clear_error() -> None:
    params = [torch.nn.Parameter(torch.randn(3))]
    params[0].grad = torch.full((3,), 10.0)
    plugin = NPUPrecision("16-mixed", device="cpu")
    with pytest.raises(ValueError, match="fused optimizer AdamW.*gradient_clip_val to null"):
        plugin.clip_gradients(torch.optim.AdamW(params, fused=True), clip_val=1.0)
    plugin.clip_gradients(torch.optim.AdamW(params), clip_val=1.0)  # unfused: clipped
    assert torch.linalg.vector_norm(params[0].grad).item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize(
    ("precision", "scaler", "autocast"),
    [
        ("16-mixed", True, torch.float16),
        ("bf16-mixed", False, torch.bfloat16),
        ("32-true", False, torch.float32),
    ],  # fmt: skip
)
def test_precisions(precision: str, scaler: bool, autocast: torch.dtype) -> None:
    plugin = NPUPrecision(precision, device="cpu")  # type: ignore[arg-type]
    assert (plugin.scaler is not None) is scaler and plugin.precision == precision
    with plugin.forward_context():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == autocast


@pytest.mark.parametrize("bad", [{"precision": "16-true"}, {"init_scale": 0.0}, {"growth_interval": 0}])
def test_bad_settings_are_named(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        NPUPrecision(**{"device": "cpu", **bad})
