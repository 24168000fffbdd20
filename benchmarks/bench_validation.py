#!/usr/bin/env python
"""One full validation pass of the CPU recipe's model at several validation batch sizes, and where its time goes.

    python benchmarks/bench_validation.py [--rounds 5] [--batch-sizes 8 16 32 64 128 256]

The model is the CPU recipe's (4 layers, 4 heads, 128 wide, context 64; random weights: the time does
not depend on their values); the pass is what ``validate`` computes, every non-overlapping 64-token
window of the Tiny Shakespeare validation split (1742), plain forwards with targets under
``torch.inference_mode``. Each round times every batch size once, the order rotated every round
(``harness.alternate``); the table gives the median over rounds. Then ``torch.profiler`` over 20
batches of 64 windows gives each op's share of the time, and the pass's matmul FLOPs are counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from bench_loop import CPU_ARCH
from harness import alternate, format_list, machine_line, print_table
from torch.profiler import profile

from lit_nanogpt.data import CharDataModule
from lit_nanogpt.model import GPT


def windows() -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping block_size window of the validation split: inputs and targets (N, T)."""
    dm = CharDataModule(block_size=CPU_ARCH.block_size, cache_dir=tempfile.mkdtemp())
    dm.setup("validate")
    val, t = dm.val_data, CPU_ARCH.block_size
    n = (len(val) - 1) // t
    return val[: n * t].view(n, t).long(), val[1 : n * t + 1].view(n, t).long()


def one_pass(model: GPT, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            model(xb, yb)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    args = parser.parse_args()
    print(machine_line(), flush=True)
    torch.manual_seed(0)
    model = GPT(CPU_ARCH).eval()
    x, y = windows()
    one_pass(model, x, y, 64)  # warm-up
    arms = {str(b): lambda i, b=b: one_pass(model, x, y, b) for b in args.batch_sizes}
    results = alternate(arms, args.rounds, show=lambda b, s: f"batch {b}: {s:.3f} s")
    print(f"\n{torch.get_num_threads()} torch threads, {len(x)} windows, {args.rounds} rounds")
    rows = [[b, f"{results.median(b):.3f}", format_list(results.values(b), 3)] for b in arms]
    print_table(["validation batch", "one pass, median s", "per round"], rows)

    with torch.inference_mode(), profile() as prof:
        for xb, yb in zip(x[: 20 * 64].split(64), y[: 20 * 64].split(64), strict=True):
            model(xb, yb)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("\nshare of one pass's time (torch.profiler, 20 batches of 64):")
    for e in events[:5]:
        print(f"  {e.key:55s} {100 * e.self_cpu_time_total / total:5.1f}%")
    c = CPU_ARCH
    per_token = 2 * (12 * c.n_layer * c.n_embd**2 + c.n_embd * c.vocab_size)  # the Linear layers' forward FLOPs
    print(f"matmul FLOPs of one pass: {per_token * x.numel() / 1e12:.3f} TFLOP")


if __name__ == "__main__":
    main()
