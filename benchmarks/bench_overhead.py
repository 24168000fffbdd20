"""Lightning's per-step overhead against a plain PyTorch loop, and the share of a step spent making batches.

Both loops train the same model (the CPU recipe's unless told otherwise) on the same batches with the
same AdamW, schedule and gradient clipping; only the loop around them differs. Run on an idle machine:

    python benchmarks/bench_overhead.py --steps 300 --repeats 3

``--recipe`` instead runs the whole CPU recipe in the plain loop (2000 steps, full validation every
250), the Lightning-free baseline for ``lit-nanogpt fit --config configs/shakespeare_char_cpu.yaml``:

    python benchmarks/bench_overhead.py --recipe
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from lit_nanogpt.data import CharDataModule, RandomWindows, SequentialWindows
from lit_nanogpt.model import GPTConfig
from lit_nanogpt.module import LitGPT

CPU_ARCH = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0, bias=False)
CPU_RECIPE = dict(arch=CPU_ARCH, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)


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


def plain_loop(dm: CharDataModule, steps: int, batch_size: int, val_every: int = 0) -> tuple[float, list[float]]:
    """Seconds per step of a hand-written loop (nanoGPT's train.py inner loop) and the val losses it saw."""
    torch.manual_seed(1337)  # what seed_everything(1337) does for torch
    module = LitGPT(**CPU_RECIPE)
    model = module.model.train()
    opt = module.configure_optimizers()
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    batches = iter(RandomWindows(dm.train_data, CPU_ARCH.block_size, batch_size))
    warmup = 0 if val_every else 10  # steps excluded from the per-step timing
    val_losses = []
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
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if batch_idx == 10:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):  # noqa: ANN001
        self.seconds = time.perf_counter() - self.start


def lightning_loop(dm: CharDataModule, steps: int) -> float:
    """Seconds per step of the Trainer as the CPU config runs it (no validation, no checkpoints)."""
    torch.manual_seed(1337)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + 10, gradient_clip_val=1.0,
                        log_every_n_steps=50, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer])  # fmt: skip
    trainer.fit(LitGPT(**CPU_RECIPE), datamodule=dm)
    # the timer starts at batch 10 and stops after the last: `steps` steps
    return timer.seconds / steps


def batch_time(dm: CharDataModule, batch_size: int, n: int = 2000) -> float:
    batches = iter(RandomWindows(dm.train_data, CPU_ARCH.block_size, batch_size))
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--recipe", action="store_true", help="the whole CPU recipe in the plain loop")
    args = parser.parse_args()
    dm = CharDataModule(block_size=CPU_ARCH.block_size, batch_size=args.batch_size)
    dm.setup("fit")
    if args.recipe:
        start = time.perf_counter()
        _, val_losses = plain_loop(dm, 2000, args.batch_size, val_every=250)
        print(f"plain PyTorch loop, CPU recipe: best val_loss {min(val_losses):.4f} "
              f"(every 250 steps: {', '.join(f'{v:.4f}' for v in val_losses)}), "
              f"{time.perf_counter() - start:.1f} s for training and validation")  # fmt: skip
        return
    plain, lit = [], []
    for _ in range(args.repeats):  # interleaved pairs, so a change of load hits both alike
        plain.append(plain_loop(dm, args.steps, args.batch_size)[0])
        lit.append(lightning_loop(dm, args.steps))
    ratios = sorted(q / p for p, q in zip(plain, lit, strict=True))
    p, q = statistics.median(plain), statistics.median(lit)
    b = batch_time(dm, args.batch_size)
    print(f"torch threads: {torch.get_num_threads()}, steps: {args.steps}, {args.repeats} interleaved pairs")
    print(f"plain PyTorch loop : median {p * 1e3:.2f} ms/step (runs: {', '.join(f'{x * 1e3:.1f}' for x in plain)})")
    print(f"Lightning Trainer  : median {q * 1e3:.2f} ms/step (runs: {', '.join(f'{x * 1e3:.1f}' for x in lit)})")
    print(f"Lightning overhead : median of pairs {(statistics.median(ratios) - 1) * 100:+.1f}% "
          f"(pairs from {(ratios[0] - 1) * 100:+.1f}% to {(ratios[-1] - 1) * 100:+.1f}%)")  # fmt: skip
    print(f"batch production   : {b * 1e6:.1f} us/batch ({b / q * 100:.2f}% of a Lightning step)")


if __name__ == "__main__":
    main()
