#!/usr/bin/env python
"""The test suite's wall time, this checkout against an older one, alternating (issue 17's side by side).

    git worktree add --detach /tmp/old 3911f8b   # the checkout issue 17 was filed against, with its own venv:
    (cd /tmp/old && python -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[dev]")
    python benchmarks/bench_suite.py --old /tmp/old [--rounds 2] [--serial] [--new-args "--ignore=F ..."] [--out F.json]

Each arm runs ``python -m pytest -q -p no:cacheprovider`` in its own tree with its own settings (this tree's
``pyproject.toml`` spreads the files over pytest-xdist's workers; the old one runs them one at a time), W&B
offline and lit-nanogpt's cache in a fresh temporary folder. ``--serial`` adds this tree with ``-n 0``: the
same tests one at a time, so what the structure saved and what the workers saved read apart. Reported: wall
time of each run, pytest's own count and time, medians and per-round ratios against ``old``; each run's output
(with its 20 slowest tests) is kept in a temporary folder the script names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import tempfile
from pathlib import Path

from harness import HERE, Checkout, alternate, format_list, machine_info, machine_line, old_checkout, run_process

SUMMARY = re.compile(r"^=*\s*(\d+) passed(?:, (\d+) skipped)?.* in ([\d.]+)s", re.M)


def run_suite(tree: Checkout, log: Path, *options: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_suite.") as tmp:
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": tmp, "LIT_NANOGPT_CACHE": f"{tmp}/cache"}
        env.pop("PYTEST_ADDOPTS", None)
        cmd = [tree.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=20", *options]
        print(f"  {' '.join(cmd)} (in {tree.root}; output in {log})", flush=True)
        done = run_process(cmd, env=env, cwd=tree.root, log=log)  # a failing suite stops the benchmark, naming it
    summary = SUMMARY.search(done.stdout)
    if summary is None:
        raise SystemExit(f"{' '.join(cmd)} printed no pytest summary:\n{done.stdout[-2000:]}")
    passed, skipped, pytest_s = summary.groups()
    return {"seconds": done.seconds, "passed": int(passed), "skipped": int(skipped or 0), "pytest_s": float(pytest_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="the older checkout (a git worktree with a .venv)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serial", action="store_true", help="also this tree with -n 0 (one test at a time)")
    parser.add_argument("--new-args", default="", help="more pytest options for this tree, e.g. --ignore=FILE ...")
    parser.add_argument("--out", type=Path, help="write the rounds and the summary as JSON here")
    args = parser.parse_args()
    old = old_checkout(args.old)
    print(machine_line(), flush=True)
    logs = Path(tempfile.mkdtemp(prefix="bench_suite_logs."))
    extra = shlex.split(args.new_args)
    arms = {
        "old": lambda i: run_suite(old, logs / f"old.{i}.log"),
        "new": lambda i: run_suite(HERE, logs / f"new.{i}.log", *extra),
    }
    if args.serial:
        arms["new -n 0"] = lambda i: run_suite(HERE, logs / f"serial.{i}.log", "-n", "0", *extra)
    results = alternate(arms, args.rounds, show=lambda arm, r: f"{r['seconds']:.0f} s ({r['passed']} passed)")
    summary = {}
    for arm in arms:
        row = summary[arm] = {"seconds": results.median(arm, "seconds"),
                              "passed": [r[arm]["passed"] for r in results.rounds]}  # fmt: skip
        if arm != "old":
            row["ratio"] = results.ratio(arm, "old", "seconds")
            row["ratios"] = [round(r, 3) for r in results.ratios(arm, "old", "seconds")]
    print(f"\nmedians of {args.rounds} rounds:")
    for arm, row in summary.items():
        versus = f"; {row['ratio']:.2f}x old (per round {format_list(row['ratios'])})" if "ratio" in row else ""
        print(f"  {arm:9s} {row['seconds']:6.0f} s, {row['passed'][0]} passed{versus}")
    if args.out:
        data = {"machine": machine_info(), "old": str(old), "rounds": results.rounds, "summary": summary}
        args.out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
