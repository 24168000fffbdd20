#!/usr/bin/env python
"""nanoGPT's own CPU recipe and ``lit-nanogpt fit`` side by side, alternating, on this machine.

    python benchmarks/bench_vs_nanogpt.py [--pairs 3] [--config configs/shakespeare_char_cpu.yaml]
        [--fast configs/shakespeare_char_cpu_fast.yaml] [--without-nanogpt] [--steps N] [-- FIT_ARGS...]

Each round runs nanoGPT's ``train.py`` (through ``../shared/tools/nanogpt_cpu_recipe.sh``, its
README's CPU recipe), ``python -m lit_nanogpt fit --config CONFIG`` and, with ``--fast``, ``lit-nanogpt fit
--config FAST`` one after the other, the order rotated every round so that a change in the machine's
load falls on all. The fast recipe runs with seed 1337 + round, so N rounds are N seeds; nanoGPT and
CONFIG keep their shipped seed. It reports whole-process wall times (the fit as shipped: progress bar,
W&B offline, checkpoints, export), their per-round ratios to nanoGPT's, and each side's best
full-validation loss: ours from the fit's
``Best checkpoint`` line; nanoGPT's by importing the checkpoint its train.py kept
(``import-nanogpt``) and running ``lit-nanogpt validate`` on it, since nanoGPT's own printed loss
is an estimate over 20 random batches.

``--without-nanogpt`` times our fits alone, e.g. the CPU recipe end to end as a user runs it:
``--without-nanogpt --pairs 1 -- --trainer.enable_progress_bar false``. ``--steps N`` makes every side
a short run (a smoke test).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from harness import ROOT, SHARED, alternate, cli, machine_line, print_table, run_process, scratch

RECIPE = SHARED / "tools" / "nanogpt_cpu_recipe.sh"


def lit(work: Path, config: str, extra: list[str], env: dict[str, str]) -> dict[str, float]:
    """``lit-nanogpt fit``: whole-process seconds and the best val_loss from its ``Best checkpoint`` line."""
    log = work.with_suffix(".log")
    done = run_process(cli("fit", "--config", config, f"--trainer.default_root_dir={work}", *extra), env, ROOT, log)
    match = re.search(r"^Best checkpoint: .* \(val_loss=([\d.]+)\)$", log.read_text(), re.M)
    if not match:
        raise SystemExit(f"no 'Best checkpoint' line in {log}")
    return {"s": done.seconds, "loss": float(match.group(1))}


def nanogpt(work: Path, env: dict[str, str], extra: list[str]) -> dict[str, float]:
    """nanoGPT's train.py (its own timing of train.py's process alone), and its checkpoint's full validation."""
    log = work.with_suffix(".log")
    run_process(["bash", RECIPE, work, *extra], {**env, "PYTHON": sys.executable}, ROOT, log)
    # The script times train.py's process alone, not its copying and data preparation (ours caches its own).
    seconds = re.search(r"wall_s=([\d.]+)", log.read_text())
    if not seconds:
        raise SystemExit(f"no wall_s= line in {log}")
    ckpt, meta = work / "nanogpt_out" / "ckpt.pt", work / "nanogpt" / "data" / "shakespeare_char" / "meta.pkl"
    imported = work / "imported.ckpt"
    run_process(cli("import-nanogpt", "--ckpt", ckpt, "--meta", meta, "--out", imported), env, ROOT)
    done = run_process(cli("validate", f"--ckpt_path={imported}", "--trainer.enable_progress_bar=false"), env, ROOT,
                       work / "validate.log")  # fmt: skip
    match = re.search(r"val_loss\s*│?\s*([\d.]+)", done.stdout + done.stderr)
    if not match:
        raise SystemExit(f"no val_loss in {work / 'validate.log'}")
    return {"s": float(seconds.group(1)), "loss": float(match.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="rounds (every side once per round)")
    parser.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    parser.add_argument("--fast", help="also the fast recipe, e.g. configs/shakespeare_char_cpu_fast.yaml")
    parser.add_argument("--without-nanogpt", action="store_true", help="our fits alone (no ratios)")
    parser.add_argument("--steps", type=int, help="a short run of this many steps on every side (a smoke test)")
    parser.add_argument("fit_args", nargs="*", help="extra lit-nanogpt fit arguments for CONFIG (after --)")
    args = parser.parse_args()
    nanogpt_args: list[str] = []
    fast_args: list[str] = []
    if args.steps:
        every = max(1, args.steps // 2)
        nanogpt_args = [f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}", f"--eval_interval={every}"]
        args.fit_args += [f"--trainer.max_steps={args.steps}", f"--model.lr_decay_iters={args.steps}",
                          f"--trainer.val_check_interval={every}"]  # fmt: skip
        fast_args = [f"--trainer.max_steps={args.steps}", f"--model.lr_decay_iters={args.steps}",
                     f"--trainer.val_check_interval={args.steps}"]  # fmt: skip
    if not args.without_nanogpt and not RECIPE.is_file():
        raise SystemExit(f"{RECIPE} is missing: this benchmark needs the shared nanoGPT reference beside the checkout")
    print(machine_line(), flush=True)
    work, env = scratch("bench_vs_nanogpt")
    names = {"nanogpt": "nanoGPT", "lit": Path(args.config).stem, "fast": Path(args.fast or "").stem}
    arms = {
        "nanogpt": lambda i: nanogpt(work / f"nanogpt{i}", env, nanogpt_args),
        "lit": lambda i: lit(work / f"lit{i}", args.config, args.fit_args, env),
        # The fast recipe runs with seed 1337 + round: N rounds are N seeds.
        "fast": lambda i: lit(work / f"fast{i}", args.fast, [f"--seed_everything={1337 + i}", *fast_args], env),
    }
    sides = [s for s in arms if (s != "nanogpt" or not args.without_nanogpt) and (s != "fast" or args.fast)]
    results = alternate({s: arms[s] for s in sides}, args.pairs,
                        show=lambda s, r: f"{names[s]} {r['s']:.1f} s, best val_loss {r['loss']:.4f}")  # fmt: skip
    base = "nanogpt" if "nanogpt" in sides else None

    def cells(seconds: dict[str, float], losses: dict[str, float], ratios: dict[str, float]) -> list[str]:
        out = []
        for s in sides:
            out += [f"{seconds[s]:.1f}", f"{losses[s]:.4f}"] + ([f"{ratios[s]:.2f}"] if s in ratios else [])
        return out

    print(f"\n{args.pairs} rounds, fit args: {' '.join(args.fit_args) or 'none'} (scratch: {work})")
    header = ["round", "first"]
    for s in sides:
        header += [f"{names[s]} s", f"{names[s]} loss"] + ([f"{names[s]} / nanoGPT"] if base and s != base else [])
    rows = []
    for i, r in enumerate(results.rounds):
        ratios = {s: r[s]["s"] / r[base]["s"] for s in sides if s != base} if base else {}
        seconds, losses = ({s: r[s][k] for s in sides} for k in ("s", "loss"))
        rows.append([str(i + 1), names[results.firsts[i]], *cells(seconds, losses, ratios)])
    medians = [{s: results.median(s, k) for s in sides} for k in ("s", "loss")]
    ratios = {s: results.ratio(s, base, "s") for s in sides if s != base} if base else {}
    rows.append(["median", "", *cells(*medians, ratios)])
    print_table(header, rows)
    if args.fast:
        worst = max(results.values("fast", "loss"))
        slowest = f", {max(results.ratios('fast', base, 's')):.2f}x nanoGPT's wall time" if base else ""
        print(f"fast recipe, worst seed: {worst:.4f} val_loss{slowest}")


if __name__ == "__main__":
    main()
