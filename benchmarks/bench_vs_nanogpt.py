#!/usr/bin/env python
"""nanoGPT's own CPU recipe and ``lit-nanogpt fit`` side by side, alternating, on this machine.

    python benchmarks/bench_vs_nanogpt.py [--pairs 3] [--config configs/shakespeare_char_cpu.yaml]
        [--fast configs/shakespeare_char_cpu_fast.yaml] [-- FIT_ARGS...]

Each round runs nanoGPT's ``train.py`` (through ``../shared/tools/nanogpt_cpu_recipe.sh``, its
README's CPU recipe), ``lit-nanogpt fit --config CONFIG`` and, with ``--fast``, ``lit-nanogpt fit
--config FAST`` one after the other, the order rotated every round so that a change in the machine's
load falls on all. The fast recipe runs with seed 1337 + round, so N rounds are N seeds; nanoGPT and
CONFIG keep their shipped seed. It reports whole-process wall times (the fit as shipped: progress bar,
W&B offline, checkpoints, export), their per-round ratios to nanoGPT's, and each side's best
full-validation loss: ours from the fit's
``Best checkpoint`` line; nanoGPT's by importing the checkpoint its train.py kept
(``import-nanogpt``) and running ``lit-nanogpt validate`` on it, since nanoGPT's own printed loss
is an estimate over 20 random batches.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RECIPE = SHARED / "tools" / "nanogpt_cpu_recipe.sh"


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` to completion with its output in ``log``; the wall time of the whole process."""
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit code {code}:\n" + "\n".join(tail))
    return seconds


def lit(work: Path, config: str, extra: list[str], env: dict[str, str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "lit_nanogpt.cli", "fit", "--config", config, f"--trainer.default_root_dir={work}",
           *extra]  # fmt: skip
    seconds = _run(cmd, env, work.with_suffix(".log"))
    match = re.search(r"^Best checkpoint: .* \(val_loss=([\d.]+)\)$", work.with_suffix(".log").read_text(), re.M)
    if not match:
        raise SystemExit(f"no 'Best checkpoint' line in {work.with_suffix('.log')}")
    return seconds, float(match.group(1))


def nanogpt(work: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float]:
    cmd = ["bash", str(RECIPE), str(work), *extra]
    _run(cmd, {**env, "PYTHON": sys.executable}, work.with_suffix(".log"))
    # The script times train.py's process alone, not its copying and data preparation (ours caches its own).
    seconds = float(re.search(r"wall_s=([\d.]+)", work.with_suffix(".log").read_text()).group(1))  # type: ignore[union-attr]
    ckpt, meta = work / "nanogpt_out" / "ckpt.pt", work / "nanogpt" / "data" / "shakespeare_char" / "meta.pkl"
    imported = work / "imported.ckpt"
    _run([sys.executable, "-m", "lit_nanogpt.cli", "import-nanogpt", "--ckpt", str(ckpt), "--meta", str(meta),
          "--out", str(imported)], env, work / "import.log")  # fmt: skip
    _run([sys.executable, "-m", "lit_nanogpt.cli", "validate", f"--ckpt_path={imported}",
          "--trainer.enable_progress_bar=false"], env, work / "validate.log")  # fmt: skip
    match = re.search(r"val_loss\s*│?\s*([\d.]+)", (work / "validate.log").read_text())
    if not match:
        raise SystemExit(f"no val_loss in {work / 'validate.log'}")
    return seconds, float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    parser.add_argument("--fast", help="also the fast recipe, e.g. configs/shakespeare_char_cpu_fast.yaml")
    parser.add_argument("--steps", type=int, help="a short run of this many steps on both sides (a smoke test)")
    parser.add_argument("fit_args", nargs="*", help="extra lit-nanogpt fit arguments (after --)")
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
    if not RECIPE.is_file():
        raise SystemExit(f"{RECIPE} is missing: this benchmark needs the shared nanoGPT reference beside the checkout")
    scratch = Path(tempfile.mkdtemp(prefix="bench_vs_nanogpt."))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(scratch / "wandb")}
    sides = ["nanogpt", "lit"] + (["fast"] if args.fast else [])
    names = {"nanogpt": "nanoGPT", "lit": Path(args.config).stem, "fast": Path(args.fast or "").stem}
    rows = []
    for i in range(args.pairs):
        order = sides[i % len(sides) :] + sides[: i % len(sides)]
        result = {}
        for side in order:
            work = scratch / f"{side}{i}"
            work.mkdir()
            if side == "nanogpt":
                result[side] = nanogpt(work, env, nanogpt_args)
            elif side == "lit":
                result[side] = lit(work, args.config, args.fit_args, env)
            else:
                result[side] = lit(work, args.fast, [f"--seed_everything={1337 + i}", *fast_args], env)
            print(
                f"round {i + 1} {names[side]}: {result[side][0]:.1f} s, best val_loss {result[side][1]:.4f}", flush=True
            )
        rows.append(result)
    med = statistics.median

    def cells(seconds: dict[str, float], losses: dict[str, float], ratios: dict[str, float]) -> str:
        return " | ".join(f"{seconds[s]:.1f} | {losses[s]:.4f}" + (f" | {ratios[s]:.2f}" if s in ratios else "")
                          for s in sides)  # fmt: skip

    print(f"\n{args.pairs} rounds, fit args: {' '.join(args.fit_args) or 'none'} (scratch: {scratch})")
    head = " | ".join(f"{names[s]} s | {names[s]} loss" + (f" | {names[s]} / nanoGPT" if s != "nanogpt" else "")
                      for s in sides)  # fmt: skip
    print(f"| round | first | {head} |")
    print("| --- | --- |" + " --- |" * (3 * len(sides) - 1))
    for i, r in enumerate(rows):
        ratio = {s: r[s][0] / r["nanogpt"][0] for s in sides[1:]}
        seconds, losses = ({s: r[s][k] for s in sides} for k in (0, 1))
        print(f"| {i + 1} | {names[sides[i % len(sides)]]} | {cells(seconds, losses, ratio)} |")
    medians = [{s: med(r[s][k] for r in rows) for s in sides} for k in (0, 1)]
    ratios = {s: med(r[s][0] / r["nanogpt"][0] for r in rows) for s in sides[1:]}
    print(f"| median | | {cells(*medians, ratios)} |")
    if args.fast:
        print(f"fast recipe, worst seed: {max(r['fast'][1] for r in rows):.4f} val_loss, "
              f"{max(r['fast'][0] / r['nanogpt'][0] for r in rows):.2f}x nanoGPT's wall time")  # fmt: skip


if __name__ == "__main__":
    main()
