#!/usr/bin/env python
"""nanoGPT's own CPU recipe and ``lit-nanogpt fit`` side by side, alternating, on this machine.

    python benchmarks/bench_vs_nanogpt.py [--pairs 3] [--config configs/shakespeare_char_cpu.yaml] [-- FIT_ARGS...]

Each pair runs nanoGPT's ``train.py`` (through ``../shared/tools/nanogpt_cpu_recipe.sh``, its
README's CPU recipe) and ``lit-nanogpt fit --config CONFIG`` one after the other, the order swapped
every pair so that a change in the machine's load falls on both. It reports whole-process wall
times, their per-pair ratio, and each side's best full-validation loss: ours from the fit's
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
    cmd = [sys.executable, "-m", "lit_nanogpt.cli", "fit", "--config", config,
           f"--trainer.default_root_dir={work}", "--trainer.enable_progress_bar=false", *extra]  # fmt: skip
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
    parser.add_argument("--steps", type=int, help="a short run of this many steps on both sides (a smoke test)")
    parser.add_argument("fit_args", nargs="*", help="extra lit-nanogpt fit arguments (after --)")
    args = parser.parse_args()
    nanogpt_args: list[str] = []
    if args.steps:
        every = max(1, args.steps // 2)
        nanogpt_args = [f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}", f"--eval_interval={every}"]
        args.fit_args += [f"--trainer.max_steps={args.steps}", f"--model.lr_decay_iters={args.steps}",
                          f"--trainer.val_check_interval={every}"]  # fmt: skip
    if not RECIPE.is_file():
        raise SystemExit(f"{RECIPE} is missing: this benchmark needs the shared nanoGPT reference beside the checkout")
    scratch = Path(tempfile.mkdtemp(prefix="bench_vs_nanogpt."))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(scratch / "wandb")}
    rows = []
    for i in range(args.pairs):
        order = ["nanogpt", "lit"] if i % 2 == 0 else ["lit", "nanogpt"]
        result = {}
        for side in order:
            work = scratch / f"{side}{i}"
            work.mkdir()
            if side == "nanogpt":
                result[side] = nanogpt(work, env, nanogpt_args)
            else:
                result[side] = lit(work, args.config, args.fit_args, env)
            print(f"pair {i + 1} {side}: {result[side][0]:.1f} s, best val_loss {result[side][1]:.4f}", flush=True)
        rows.append(result)
    print(f"\n{args.pairs} pairs, {args.config} {' '.join(args.fit_args)} (scratch: {scratch})")
    print("| pair | first | nanoGPT s | lit-nanogpt s | ratio | nanoGPT loss | lit-nanogpt loss |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(rows):
        (ns, nl), (ls, ll) = r["nanogpt"], r["lit"]
        first = "nanoGPT" if i % 2 == 0 else "lit-nanogpt"
        print(f"| {i + 1} | {first} | {ns:.1f} | {ls:.1f} | {ls / ns:.2f} | {nl:.4f} | {ll:.4f} |")
    med = statistics.median
    ratios = [r["lit"][0] / r["nanogpt"][0] for r in rows]
    times = [med(r[side][0] for r in rows) for side in ("nanogpt", "lit")]
    losses = [med(r[side][1] for r in rows) for side in ("nanogpt", "lit")]
    print(f"| median | | {times[0]:.1f} | {times[1]:.1f} | {med(ratios):.2f} | {losses[0]:.4f} | {losses[1]:.4f} |")


if __name__ == "__main__":
    main()
