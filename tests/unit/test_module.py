"""LitGPT's optimizer and schedule follow nanoGPT's train.py."""

from __future__ import annotations

import math

import pytest

from lit_nanogpt.model import GPTConfig
from lit_nanogpt.module import LitGPT, nanogpt_lr
from tests.helpers import TINY

LR, MIN_LR, WARMUP, DECAY = 1e-3, 1e-4, 100, 5000


def test_schedule_warmup_peak_and_end() -> None:
    assert nanogpt_lr(0, LR, MIN_LR, WARMUP, DECAY) == pytest.approx(LR / 101)
    assert nanogpt_lr(50, LR, MIN_LR, WARMUP, DECAY) == pytest.approx(LR * 51 / 101)
    assert nanogpt_lr(WARMUP, LR, MIN_LR, WARMUP, DECAY) == pytest.approx(LR)  # peak
    mid = (WARMUP + DECAY) // 2
    assert nanogpt_lr(mid, LR, MIN_LR, WARMUP, DECAY) == pytest.approx((LR + MIN_LR) / 2, rel=1e-3)
    assert nanogpt_lr(DECAY, LR, MIN_LR, WARMUP, DECAY) == pytest.approx(MIN_LR)
    assert nanogpt_lr(DECAY + 10, LR, MIN_LR, WARMUP, DECAY) == MIN_LR
    lrs = [nanogpt_lr(s, LR, MIN_LR, WARMUP, DECAY) for s in range(WARMUP, DECAY)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone decay


def test_scheduler_drives_the_optimizer_per_step() -> None:
    module = LitGPT(
        GPTConfig(**TINY, vocab_size=65), learning_rate=LR, min_lr=MIN_LR, warmup_iters=10, lr_decay_iters=50
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(60):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(LR / 11)
    assert seen[10] == pytest.approx(LR)
    assert seen[30] == pytest.approx(MIN_LR + 0.5 * (1 + math.cos(math.pi * 0.5)) * (LR - MIN_LR))
    assert seen[55] == pytest.approx(MIN_LR)


def test_weight_decay_only_on_matrices() -> None:
    module = LitGPT(GPTConfig(**TINY, vocab_size=65), weight_decay=0.1, beta2=0.99, lr_decay_iters=100)
    optimizer = module.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n_params = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in module.parameters())  # tied weights counted once
    assert optimizer.defaults["betas"] == (0.9, 0.99)
