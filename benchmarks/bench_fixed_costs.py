#!/usr/bin/env python
"""The fixed costs of ``lit-nanogpt``: a fit's validation, progress bar, export and what is left around the
steps (from Lightning's simple profiler), and the start-up of its commands; this checkout beside an older one.

    git worktree add --detach /tmp/old BASE   # or: git archive BASE | tar -x -C /tmp/old
    python benchmarks/bench_fixed_costs.py profile [--old /tmp/old] [--rounds 3] [--steps 500]
    python benchmarks/bench_fixed_costs.py startup [--old /tmp/old] [--pairs 7] [--skip-fit]

An older checkout runs with the python of its own ``.venv`` when it has one (``python -m venv .venv
--system-site-packages && .venv/bin/pip install --no-deps -e .`` there makes one), else on this one
with ``PYTHONPATH`` pointing at it (``harness.Checkout``).

- ``profile``: each round runs the CPU recipe (``configs/shakespeare_char_cpu.yaml`` as shipped by each
  checkout: W&B offline, progress bar, checkpoints, export) for ``--steps`` steps with
  ``--trainer.profiler simple``, in the old checkout and in this one, the order swapped every round.
  From the profiler's table: one validation inside the fit (the validation steps of one pass and the samples
  drawn after it; an estimate on ``data.val_est_windows`` windows since issue 19), the final full pass over the
  best checkpoint (0 in checkouts without one), the progress bar's time per training step, the fit-end
  export, the training steps, what is outside the fit, and the process's wall time; medians and the median
  of the per-round ratios. Without ``--old``, this checkout alone.
- ``startup``: each command in a fresh process, alternating with its reference, ``--pairs`` times:
  ``--help`` and ``generate --checkpoint X --max_new_tokens 1`` (nanoGPT's baby checkpoint) against
  ``python -c "import torch"``, and ``fit`` (CPU recipe, tiny model) timed to its first training step
  (the progress bar's ``1/20``), then stopped, against the same fit in ``--old`` (or ``import torch``).
  Medians and the median of the per-pair ratios, which a shared, noisy machine disturbs less.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from harness import (
    HERE,
    ROOT,
    Checkout,
    alternate,
    compare_checkouts,
    machine_line,
    old_checkout,
    print_table,
    run_process,
    scratch,
)

TINY = ["--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32", "--model.arch.block_size=16"]


# ---- profile ----
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


def profiled_fit(checkout: Checkout, steps: int, work: Path, env: dict[str, str]) -> dict[str, float]:
    config = checkout.root / "configs" / "shakespeare_char_cpu.yaml"
    cmd = checkout.cli("fit", "--config", config, "--trainer.profiler=simple", f"--trainer.default_root_dir={work}",
                       f"--trainer.max_steps={steps}")  # fmt: skip
    done = run_process(cmd, env=checkout.env(env), cwd=checkout.root)
    # Since issue 19 the fit ends with trainer.validate over its best checkpoint: a second table, VALIDATE, whose
    # rows are the same profiler's, so they add the final pass to the fit's (older checkouts print FIT alone).
    fit, _, validate = (done.stdout + done.stderr).partition("VALIDATE Profiler Report")
    rows = profile_rows(fit)
    after = profile_rows(validate) if validate else rows
    passes = max(1, steps // 250)  # val_check_interval 250 in every checkout's CPU recipe
    validation = total(rows, r"validation_step$") + total(rows, r"ValidationSamples\.on_validation_end")
    return {
        "validation pass s": validation / passes,
        "final full validation s": total(after, r"validation_step$") - total(rows, r"validation_step$"),
        "progress bar ms/step": 1e3 * total(rows, r"ProgressBar\.on_train_batch_end$") / steps,
        "export s": total(rows, r"OnnxExport\.on_fit_end"),
        "training steps s": total(rows, r"^run_training_batch$"),
        "outside the fit s": done.seconds - after["Total"][2] if "Total" in after else float("nan"),
        "process wall s": done.seconds,
    }


def profile(args: argparse.Namespace) -> None:
    work, env = scratch("bench_fixed_costs")

    def run(checkout: Checkout, i: int) -> dict[str, float]:
        return profiled_fit(checkout, args.steps, work / f"{'new' if checkout is HERE else 'old'}{i}", env)

    if args.old is None:
        results = alternate({"new": lambda i: run(HERE, i)}, args.rounds)
    else:
        results = compare_checkouts(old_checkout(args.old), run, args.rounds)
    print(f"\n{args.rounds} rounds of {args.steps} steps (scratch: {work})")
    keys = list(results.rounds[0]["new"])
    if args.old is None:
        print_table(["cost", "median"], [[k, f"{results.median('new', k):.3f}"] for k in keys])
        return
    rows = [[k, *(f"{results.median(side, k):.3f}" for side in ("old", "new")), f"{results.ratio('new', 'old', k):.2f}"]
            for k in keys]  # fmt: skip
    print_table(["cost", "old (median)", "new (median)", "new / old (median of rounds)"], rows)


# ---- startup ----
def startup(args: argparse.Namespace) -> None:
    tmp, env = scratch("bench_startup", silent=False)
    env["LIT_NANOGPT_CACHE"] = str(tmp)
    from lit_nanogpt.checkpoint import import_nanogpt

    baby = ROOT / "tests" / "fixtures" / "nanogpt_baby"
    ckpt = import_nanogpt(baby / "ckpt.pt", baby / "meta.pkl", tmp / "baby.ckpt")
    import_torch = (
        "python -c 'import torch'",
        lambda i: run_process([sys.executable, "-c", "import torch"], env).seconds,
    )

    def ours(*cli_args: object) -> Callable[[int], float]:
        return lambda i: run_process(HERE.cli(*cli_args), env).seconds

    rows = [
        (("lit-nanogpt --help", ours("--help")), import_torch),
        (("lit-nanogpt generate --checkpoint X --max_new_tokens 1",
          ours("generate", "--checkpoint", ckpt, "--max_new_tokens", "1")), import_torch),
    ]  # fmt: skip
    if not args.skip_fit:

        def fit(checkout: Checkout) -> Callable[[int], float]:
            cmd = checkout.cli("fit", "--config", checkout.root / "configs/shakespeare_char_cpu.yaml", *TINY,
                               "--trainer.max_steps=20", f"--trainer.default_root_dir={tmp / 'run'}")  # fmt: skip
            return lambda i: run_process(cmd, checkout.env(env), until=r"\b1/20\b").seconds

        reference = import_torch if args.old is None else (f"the same fit, {args.old}", fit(old_checkout(args.old)))
        rows.append((("fit, to its first step", fit(HERE)), reference))
    table = []
    for (label, command), (ref_label, reference) in rows:
        command(-1), reference(-1)  # warm the file cache for both
        results = alternate({label: command, ref_label: reference}, args.pairs, show=lambda n, s: f"{s:.2f} s")
        medians = [f"{results.median(label):.2f}", f"{results.median(ref_label):.2f}"]
        ratio = f"{results.ratio(label, ref_label):.2f}x"
        table.append([f"`{label}`", medians[0], f"`{ref_label}`", medians[1], ratio])
    print(f"\n{args.pairs} pairs each, alternating")
    print_table(["command", "median s", "reference", "median s", "ratio (median of pairs)"], table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("profile", help="a fit's fixed costs from Lightning's simple profiler")
    p.add_argument("--old", type=Path, help="an older checkout of lit_nanogpt to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500)
    p = modes.add_parser("startup", help="start-up of the commands in fresh processes")
    p.add_argument("--old", type=Path, help="an older checkout, for fit to its first step")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    if args.mode == "profile":
        profile(args)
    else:
        startup(args)


if __name__ == "__main__":
    main()
