"""Per-step cost of the tracking callbacks (TrainingMetrics, LossCurve, ValidationSamples) inside a real fit.

Every hook of the three callbacks is wrapped with a timer; the report splits the time between
steps that log (every ``log_every_n_steps``) and steps that do not, per training step.

    python benchmarks/wandb_callbacks.py [--steps 300] [--log-every 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lit_nanogpt.callbacks.loss_curve import LossCurve
from lit_nanogpt.callbacks.metrics import TrainingMetrics
from lit_nanogpt.callbacks.validation_samples import ValidationSamples

from lit_nanogpt import CharDataModule, GPTConfig, LitGPT

HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", default="/tmp/lit_nanogpt_bench_callbacks")
    args = parser.parse_args()

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

    arch = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0)
    model = LitGPT(arch, warmup_iters=10)
    data = CharDataModule(block_size=64, batch_size=12)
    trainer = L.Trainer(accelerator="cpu", max_steps=args.steps, log_every_n_steps=args.log_every,
                        logger=CSVLogger(args.out), callbacks=[*callbacks, Collect()], limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - t0
    for logging, values in sorted(spent.items()):
        kind = "logging steps" if logging else "other steps"
        print(f"{kind:14s}: {len(values):4d} steps, callbacks take median {statistics.median(values) / 1e3:8.1f} us, "
              f"mean {statistics.fmean(values) / 1e3:8.1f} us per step")  # fmt: skip
    print(f"whole fit: {args.steps} steps in {seconds:.1f} s ({1e3 * seconds / args.steps:.1f} ms per step)")


if __name__ == "__main__":
    main()
