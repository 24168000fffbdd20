#!/usr/bin/env python
"""One training step of nanoGPT's model and of ours, side by side in a plain loop (no Lightning).

    python benchmarks/bench_step_vs_nanogpt.py [--rounds 6] [--steps 100]

nanoGPT's ``model.py`` is imported from ``../shared/reference/nanogpt`` (run beside ours, not copied).
Both models get the CPU recipe's shape (4 layers, 4 heads, 128 wide, context 64, no bias, no dropout),
the same initial weights (the same seed and init order), the same batches of 12 windows, AdamW with
nanoGPT's two weight-decay groups and clipping at 1.0: forward, backward, clip, step, zero_grad. The
rounds alternate the two; medians of the per-round milliseconds per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lit_nanogpt.model import GPT, GPTConfig

NANOGPT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "nanogpt"
SHAPE = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if not (NANOGPT / "model.py").is_file():
        raise SystemExit(f"{NANOGPT / 'model.py'} is missing: this benchmark needs the shared nanoGPT reference")
    sys.path.insert(0, str(NANOGPT))
    import model as nanogpt  # nanoGPT's model.py

    torch.manual_seed(0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(**SHAPE))
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**SHAPE))
    batches = torch.randint(0, 65, (400, 12, 65), generator=torch.Generator().manual_seed(0))
    runs = {"nanoGPT": (theirs, adamw(theirs)), "lit-nanogpt": (ours, adamw(ours))}
    for model, optimizer in runs.values():  # warm-up: first-use allocations
        ms_per_step(model, optimizer, batches, 20)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            times[name].append(ms_per_step(*runs[name], batches, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps")
    for name, ms in times.items():
        print(f"{name:12s} ms/step {[round(t, 2) for t in ms]} median {statistics.median(ms):.2f}")
    ratios = [o / t for o, t in zip(times["lit-nanogpt"], times["nanoGPT"], strict=True)]
    print(f"lit-nanogpt / nanoGPT per round {[round(r, 3) for r in ratios]} median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
