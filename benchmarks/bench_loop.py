#!/usr/bin/env python
"""Training steps in a plain PyTorch loop (nanoGPT's inner loop), no Lightning: against nanoGPT's model,
against Lightning's ``Trainer``, the whole CPU recipe, and a replay of nanoGPT's own batch order.

    python benchmarks/bench_loop.py vs-nanogpt [--rounds 6] [--steps 100]
    python benchmarks/bench_loop.py overhead [--rounds 5] [--steps 200] [--batch_size 12]
    python benchmarks/bench_loop.py recipe
    python benchmarks/bench_loop.py replay

Every mode uses the CPU recipe's model (4 layers, 4 heads, 128 wide, context 64, no bias, no dropout),
batch 12, AdamW and clipping at 1.0.

- ``vs-nanogpt``: nanoGPT's ``model.py`` (imported from ``../shared/reference/nanogpt``, run beside ours,
  not copied) and ours, same initial weights (same seed and init order), same batches, AdamW with
  nanoGPT's two weight-decay groups: forward, backward, clip, step, zero_grad. ms per step per round,
  alternating; medians and the median of the per-round ratios.
- ``overhead``: the same batches, AdamW, schedule and clipping in the plain loop and in the ``Trainer``
  (no validation, no checkpoints, ``self.log`` of the loss every step as in ``LitGPT``), alternating,
  after 10 warm-up steps; then the time to make one batch of random windows.
- ``recipe``: the whole CPU recipe (2000 steps, full validation every 250) in the plain loop, the
  Lightning-free baseline of ``lit-nanogpt fit --config configs/shakespeare_char_cpu.yaml``.
- ``replay``: nanoGPT's CPU recipe trained with lit-nanogpt's model, optimizer and schedule, drawing
  batches in the order nanoGPT's ``train.py`` draws them (seed 1337, model, first batch, then at every
  eval interval 20 batches of each split from the same global RNG), compared with the checkpoint
  nanoGPT itself wrote (tests/fixtures/nanogpt_baby): is the gap to nanoGPT the model or the windows?
"""

from __future__ import annotations

import argparse
import sys
import time

import lightning as L
import torch
from harness import ROOT, SHARED, alternate, format_list, machine_line

from lit_nanogpt.data import CharDataModule, RandomWindows, SequentialWindows
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.module import LitGPT

SHAPE = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
CPU_ARCH = GPTConfig(**SHAPE)
CPU_RECIPE = dict(arch=CPU_ARCH, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
NANOGPT = SHARED / "reference" / "nanogpt"
NANOGPT_CKPT = ROOT / "tests" / "fixtures" / "nanogpt_baby" / "ckpt.pt"
WARMUP = 10  # steps left out of the per-step timings: first-use allocations


@torch.no_grad()
def full_val_loss(model: torch.nn.Module, dm: CharDataModule) -> float:
    """Mean loss over every token of every validation window, as LitGPT's val_loss."""
    model.eval()
    total, count = 0.0, 0
    for x, y in SequentialWindows(dm.val_data, CPU_ARCH.block_size, 256):
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train()
    return total / count


def recipe_optimizer(module: LitGPT) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    config = module.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


# ---- vs-nanogpt ----
def nanogpt_adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """nanoGPT's ``configure_optimizers``: weight decay on the matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))


def ms_per_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        xy = batches[i % len(batches)]  # (B, T + 1)
        _, loss = model(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps * 1e3


def vs_nanogpt(rounds: int, steps: int) -> None:
    if not (NANOGPT / "model.py").is_file():
        raise SystemExit(f"{NANOGPT / 'model.py'} is missing: this benchmark needs the shared nanoGPT reference")
    sys.path.insert(0, str(NANOGPT))
    import model as nanogpt  # nanoGPT's model.py

    torch.manual_seed(0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(**SHAPE))
    torch.manual_seed(0)
    ours = GPT(CPU_ARCH)
    batches = torch.randint(0, 65, (400, 12, 65), generator=torch.Generator().manual_seed(0))
    runs = {"nanoGPT": (theirs, nanogpt_adamw(theirs)), "lit-nanogpt": (ours, nanogpt_adamw(ours))}
    for model, optimizer in runs.values():
        ms_per_step(model, optimizer, batches, 2 * WARMUP)
    arms = {name: lambda i, run=run: ms_per_step(*run, batches, steps) for name, run in runs.items()}
    results = alternate(arms, rounds, show=lambda name, ms: f"{ms:.2f} ms/step")
    print(f"\n{rounds} rounds of {steps} steps, {torch.get_num_threads()} torch threads")
    for name in runs:
        print(f"{name:12s} ms/step {format_list(results.values(name))}  median {results.median(name):.2f}")
    ratios, ratio = results.ratios("lit-nanogpt", "nanoGPT"), results.ratio("lit-nanogpt", "nanoGPT")
    print(f"lit-nanogpt / nanoGPT per round {format_list(ratios, 3)}  median {ratio:.3f}")


# ---- overhead ----
def plain_loop(dm: CharDataModule, steps: int, batch_size: int, val_every: int = 0) -> tuple[float, list[float]]:
    """Seconds per step of the hand-written loop and the validation losses it saw (every ``val_every`` steps)."""
    torch.manual_seed(1337)  # what seed_everything(1337) does for torch
    module = LitGPT(**CPU_RECIPE)
    model = module.model.train()
    optimizer, scheduler = recipe_optimizer(module)
    batches = iter(RandomWindows(dm.train_data, CPU_ARCH.block_size, batch_size))
    warmup = 0 if val_every else WARMUP  # the recipe keeps every step, as the fit it stands for
    val_losses = []
    start = time.perf_counter()
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss.item()  # what logging the loss costs (a sync on accelerators)
        if val_every and (step + 1) % val_every == 0:
            val_losses.append(full_val_loss(model, dm))
    return (time.perf_counter() - start) / steps, val_losses


class StepTimer(L.Callback):
    """From the start of batch ``WARMUP`` to the end of training."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if batch_idx == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):  # noqa: ANN001
        self.seconds = time.perf_counter() - self.start


def lightning_loop(dm: CharDataModule, steps: int) -> float:
    """Seconds per step of the Trainer as the CPU config runs it (no validation, no checkpoints)."""
    torch.manual_seed(1337)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + WARMUP, gradient_clip_val=1.0,
                        log_every_n_steps=50, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer])  # fmt: skip
    trainer.fit(LitGPT(**CPU_RECIPE), datamodule=dm)
    return timer.seconds / steps


def batch_seconds(dm: CharDataModule, batch_size: int, n: int = 2000) -> float:
    batches = iter(RandomWindows(dm.train_data, CPU_ARCH.block_size, batch_size))
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    return (time.perf_counter() - start) / n


def overhead(dm: CharDataModule, rounds: int, steps: int, batch_size: int) -> None:
    arms = {
        "plain PyTorch loop": lambda i: plain_loop(dm, steps, batch_size)[0] * 1e3,
        "Lightning Trainer": lambda i: lightning_loop(dm, steps) * 1e3,
    }
    results = alternate(arms, rounds, show=lambda name, ms: f"{ms:.2f} ms/step")
    ratios = sorted(results.ratios("Lightning Trainer", "plain PyTorch loop"))
    ratio = results.ratio("Lightning Trainer", "plain PyTorch loop")
    b = batch_seconds(dm, batch_size)
    print(
        f"\n{torch.get_num_threads()} torch threads, {steps} steps after {WARMUP} warm-up, {rounds} alternating rounds"
    )
    for name in arms:
        print(f"{name:19s}: median {results.median(name):.2f} ms/step (runs: {format_list(results.values(name), 1)})")
    print(f"Lightning overhead : median of pairs {(ratio - 1) * 100:+.1f}% "
          f"(pairs from {(ratios[0] - 1) * 100:+.1f}% to {(ratios[-1] - 1) * 100:+.1f}%)")  # fmt: skip
    share = b * 1e3 / results.median("Lightning Trainer") * 100
    print(f"batch production   : {b * 1e6:.1f} us/batch ({share:.2f}% of a Lightning step)")


# ---- recipe ----
def recipe(dm: CharDataModule, batch_size: int, steps: int) -> None:
    start = time.perf_counter()
    _, val_losses = plain_loop(dm, steps, batch_size, val_every=min(250, steps))
    print(f"plain PyTorch loop, CPU recipe ({steps} steps): best val_loss {min(val_losses):.4f} "
          f"(every {min(250, steps)} steps: {format_list(val_losses, 4)}), "
          f"{time.perf_counter() - start:.1f} s for training and validation")  # fmt: skip


# ---- replay ----
def replay(
    dm: CharDataModule, steps: int, batch_size: int = 12, eval_interval: int = 250, eval_iters: int = 20
) -> None:
    offsets = torch.arange(CPU_ARCH.block_size + 1)

    def get_batch(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # nanoGPT's, from the global RNG
        ix = torch.randint(len(data) - CPU_ARCH.block_size, (batch_size,))
        chunk = data[ix[:, None] + offsets]  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    torch.manual_seed(1337)
    module = LitGPT(**CPU_RECIPE)
    model = module.model.train()
    optimizer, scheduler = recipe_optimizer(module)
    x, y = get_batch(dm.train_data)
    start = time.perf_counter()
    for it in range(steps + 1):
        if it % eval_interval == 0:
            for split in (dm.train_data, dm.val_data):  # nanoGPT's estimate_loss draws
                for _ in range(eval_iters):
                    get_batch(split)
            if it:
                print(f"step {it}: full val_loss {full_val_loss(model, dm):.5f}", flush=True)
        if it == steps:  # nanoGPT's checkpoint is saved at this evaluation
            break
        _, loss = model(x, y)
        x, y = get_batch(dm.train_data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    print(f"{time.perf_counter() - start:.1f} s")
    theirs = torch.load(NANOGPT_CKPT, map_location="cpu", weights_only=True)["model"]
    ours = model.state_dict()
    worst = max((ours[k] - v).abs().max().item() for k, v in theirs.items())
    note = "" if steps == 2000 else f" (after {steps} steps; nanoGPT's checkpoint is from step 2000)"
    print(f"largest difference from nanoGPT's own checkpoint weights: {worst:.3g}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("vs-nanogpt", help="nanoGPT's model against ours, ms per step")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=100)
    p = modes.add_parser("overhead", help="the plain loop against Lightning's Trainer, and batch production")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=12)
    p = modes.add_parser("recipe", help="the whole CPU recipe in the plain loop")
    p.add_argument("--steps", type=int, default=2000, help="fewer for a smoke test")
    p.add_argument("--batch_size", type=int, default=12)
    p = modes.add_parser("replay", help="nanoGPT's batch order through our model, optimizer and schedule")
    p.add_argument("--steps", type=int, default=2000, help="fewer for a smoke test (2000 to compare weights)")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    if args.mode == "vs-nanogpt":
        vs_nanogpt(args.rounds, args.steps)
        return
    dm = CharDataModule(block_size=CPU_ARCH.block_size, batch_size=getattr(args, "batch_size", 12))
    dm.setup("fit")
    if args.mode == "overhead":
        overhead(dm, args.rounds, args.steps, args.batch_size)
    elif args.mode == "recipe":
        recipe(dm, args.batch_size, args.steps)
    else:
        replay(dm, args.steps)


if __name__ == "__main__":
    main()
