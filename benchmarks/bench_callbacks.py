#!/usr/bin/env python
"""Per-step cost of the tracking callbacks (TrainingMetrics, LossCurve, ValidationSamples) inside a real fit.

    python benchmarks/bench_callbacks.py [--steps 300] [--log-every 50] [--runs 2]

The CPU recipe's model (4 layers, 4 heads, 128 wide, context 64), batch 12, CSV logger, no validation.
Every training hook of the three callbacks is wrapped with a timer; per run, the report splits the
time between steps that log (every ``log_every_n_steps``) and steps that do not, per training step
(median and mean over the steps), and gives the whole step for scale. ``--runs`` repeats the fit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace

import lightning as L
from bench_loop import CPU_ARCH
from harness import alternate, machine_line
from lightning.pytorch.loggers import CSVLogger
from lit_nanogpt.callbacks.loss_curve import LossCurve
from lit_nanogpt.callbacks.metrics import TrainingMetrics
from lit_nanogpt.callbacks.validation_samples import ValidationSamples

from lit_nanogpt.data import CharDataModule
from lit_nanogpt.module import LitGPT

# The CPU recipe's shape with GPTConfig's default biases, as the figures in BENCHMARKS.md were measured.
ARCH = replace(CPU_ARCH, bias=True)
HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")


def timed_fit(steps: int, log_every: int, out: str) -> dict[str, float]:
    """One fit with every hook of the three callbacks timed; per-step figures in microseconds."""
    L.seed_everything(1337)
    callbacks = [TrainingMetrics(peak_flops=1e12), LossCurve(), ValidationSamples()]
    spent: dict[bool, list[int]] = defaultdict(list)  # logging step? -> ns per step
    per_step = [0]

    for cb in callbacks:
        for hook in HOOKS:
            real = getattr(cb, hook)

            def timed(*a, _real=real, **k):
                t0 = time.perf_counter_ns()
                _real(*a, **k)
                per_step[0] += time.perf_counter_ns() - t0

            setattr(cb, hook, timed)

    class Collect(L.Callback):  # runs last: closes the step's account
        def on_train_batch_end(self, trainer, *_):
            spent[trainer._logger_connector.should_update_logs].append(per_step[0])
            per_step[0] = 0

    model = LitGPT(ARCH, warmup_iters=10)
    data = CharDataModule(block_size=ARCH.block_size, batch_size=12)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, log_every_n_steps=log_every,
                        logger=CSVLogger(out), callbacks=[*callbacks, Collect()], limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(model, data)
    result = {"whole step us": 1e6 * (time.perf_counter() - t0) / steps}
    for logging, values in sorted(spent.items()):
        kind = "logging steps" if logging else "other steps"
        result[f"{kind}: count"] = len(values)
        result[f"{kind}: median us"] = statistics.median(values) / 1e3
        result[f"{kind}: mean us"] = statistics.fmean(values) / 1e3
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1, help="fits, one after the other")
    parser.add_argument("--out", default=None, help="the CSV logger's folder (default: a temporary one)")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    out = args.out or tempfile.mkdtemp(prefix="bench_callbacks.")
    results = alternate({"fit": lambda i: timed_fit(args.steps, args.log_every, out)}, args.runs, show=None)
    for i, r in enumerate(results.rounds):
        run = r["fit"]
        print(f"run {i + 1}:")
        for kind in ("other steps", "logging steps"):
            if f"{kind}: count" in run:
                count, median, mean = (run[f"{kind}: {k}"] for k in ("count", "median us", "mean us"))
                print(f"  {kind:14s}: {count:4.0f} steps, callbacks take median {median:8.1f} us, mean {mean:8.1f} us")
        print(f"  whole step     : {run['whole step us'] / 1e3:.1f} ms ({args.steps} steps, the fit's set-up included)")


if __name__ == "__main__":
    main()
