"""Lightning's per-step overhead against a plain PyTorch loop, and the share of a step spent making batches.

Both loops train the same model (the CPU recipe's unless told otherwise) on the same batches with the
same AdamW, schedule and gradient clipping; only the loop around them differs. Run on an idle machine:

    python benchmarks/bench_overhead.py --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from lit_nanogpt.data import CharDataModule, RandomWindows
from lit_nanogpt.module import LitGPT

CPU_RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                  learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)  # fmt: skip


def plain_loop(dm: CharDataModule, steps: int, batch_size: int) -> float:
    """Seconds per step of a hand-written loop: nanoGPT's train.py inner loop without its logging."""
    torch.manual_seed(1337)
    module = LitGPT(**CPU_RECIPE)
    model = module.model.train()
    opt = module.configure_optimizers()
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    batches = iter(RandomWindows(dm.train_data, CPU_RECIPE["block_size"], batch_size))
    for step in range(steps + 10):
        if step == 10:  # warm-up steps excluded
            start = time.perf_counter()
        x, y = next(batches)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss.item()  # what logging the loss costs (a sync on accelerators)
    return (time.perf_counter() - start) / steps


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
    batches = iter(RandomWindows(dm.train_data, CPU_RECIPE["block_size"], batch_size))
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=12)
    args = parser.parse_args()
    dm = CharDataModule(block_size=CPU_RECIPE["block_size"], batch_size=args.batch_size)
    dm.setup("fit")
    plain, lit = [], []
    for _ in range(args.repeats):  # interleaved, best of each, so load changes hit both alike
        plain.append(plain_loop(dm, args.steps, args.batch_size))
        lit.append(lightning_loop(dm, args.steps))
    p, q = min(plain), min(lit)
    b = batch_time(dm, args.batch_size)
    print(f"torch threads: {torch.get_num_threads()}, steps: {args.steps}, best of {args.repeats}")
    print(f"plain PyTorch loop : {p * 1e3:.2f} ms/step")
    print(f"Lightning Trainer  : {q * 1e3:.2f} ms/step")
    print(f"Lightning overhead : {(q - p) * 1e3:+.2f} ms/step ({(q / p - 1) * 100:+.1f}%)")
    print(f"batch production   : {b * 1e6:.1f} us/batch ({b / q * 100:.2f}% of a Lightning step)")


if __name__ == "__main__":
    main()
