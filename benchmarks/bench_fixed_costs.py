#!/usr/bin/env python
"""The fixed costs of a ``lit-nanogpt fit`` (validation, progress bar, export, what is left around the steps),
this checkout beside an older one, alternating, from Lightning's simple profiler.

    git worktree add --detach /tmp/old BASE   # or: git archive BASE | tar -x -C /tmp/old
    python benchmarks/bench_fixed_costs.py --old /tmp/old [--rounds 3] [--steps 500]

Each round runs the CPU recipe (``configs/shakespeare_char_cpu.yaml`` as shipped by each checkout:
W&B offline, progress bar, checkpoints, export) for ``--steps`` steps with ``--trainer.profiler simple``
from the old checkout and from this one (each with the python of its ``.venv``, where lit_nanogpt is
installed from that checkout; ``pip install --no-deps -e .`` there makes one),
order swapped every round. Per run it reads from the profiler's table: one full validation (the
validation steps of one pass and the samples drawn after it), the progress bar's time per training
step, the fit-end export, the training steps, and the process's wall time; the table gives medians and
the median of the per-round ratios (new / old).
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


def profile_rows(text: str) -> dict[str, tuple[float, int, float]]:
    """Action -> (mean s, calls, total s) from the simple profiler's table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"[\d.e-]+|-", cells[1]) and cells[2].isdigit():
            mean = float("nan") if cells[1] == "-" else float(cells[1])  # the Total row has no mean
            rows[cells[0]] = (mean, int(cells[2]), float(cells[3]))
    return rows


def total(rows: dict[str, tuple[float, int, float]], pattern: str) -> float:
    return sum(t for name, (_, _, t) in rows.items() if re.search(pattern, name))


def fit(src: Path, steps: int, work: Path, env: dict[str, str]) -> dict[str, float]:
    config = src / "configs" / "shakespeare_char_cpu.yaml"
    python = src / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "lit_nanogpt.cli", "fit", "--config",
           str(config), "--trainer.profiler=simple", f"--trainer.default_root_dir={work}",
           f"--trainer.max_steps={steps}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{src}: fit failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rows = profile_rows(done.stdout + done.stderr)
    passes = max(1, steps // 250)  # val_check_interval 250 in both checkouts' CPU recipe
    return {
        "validation pass s": (total(rows, r"validation_step$") + total(rows, r"ValidationSamples\.on_validation_end"))
        / passes,
        "progress bar ms/step": 1e3 * total(rows, r"ProgressBar\.on_train_batch_end$") / steps,
        "export s": total(rows, r"OnnxExport\.on_fit_end"),
        "training steps s": total(rows, r"^run_training_batch$"),
        "outside the fit s": wall - rows["Total"][2] if "Total" in rows else float("nan"),
        "process wall s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="an older checkout of lit_nanogpt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench_fixed_costs."))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(scratch / "wandb")}
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for i in range(args.rounds):
        for side in ["old", "new"] if i % 2 == 0 else ["new", "old"]:
            src = args.old.resolve() if side == "old" else ROOT
            results[side].append(fit(src, args.steps, scratch / f"{side}{i}", env))
            print(
                f"round {i + 1} {side}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[side][-1].items()), flush=True
            )
    med = statistics.median
    print(f"\n{args.rounds} rounds of {args.steps} steps (scratch: {scratch})")
    print("| cost | old (median) | new (median) | new / old (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for key in results["new"][0]:
        old, new = (med(r[key] for r in results[side]) for side in ("old", "new"))
        ratio = med(
            n[key] / o[key] if o[key] else float("nan") for o, n in zip(results["old"], results["new"], strict=True)
        )
        print(f"| {key} | {old:.3f} | {new:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
