"""Start-up of ``lit-nanogpt`` beside a bare ``python -c "import torch"``, measured side by side.

Each command runs in a fresh process, alternating with its reference (``import torch`` for
``--help`` and ``generate``; the same ``fit`` from an older checkout with ``--old SRC``), ``--pairs``
times; the table gives the medians and the median of the per-pair ratios, which a shared, noisy
machine disturbs less than either median alone.

    python benchmarks/bench_startup.py --pairs 7
    git archive BASE | tar -x -C /tmp/base && python benchmarks/bench_startup.py --old /tmp/base

``fit`` is timed to its first training step (the progress bar's ``1/``), then stopped.
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
TINY = ["--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32", "--model.arch.block_size=16"]


def seconds(cmd: list[str], env: dict[str, str], until: str | None = None) -> float:
    """Wall time of ``cmd`` from launch to exit, or to the first stderr text matching ``until`` (then killed)."""
    start = time.perf_counter()
    if until is None:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    assert proc.stderr is not None
    while chunk := os.read(proc.stderr.fileno(), 4096):
        seen = (seen + chunk)[-4096:]
        if re.search(until.encode(), seen):
            elapsed = time.perf_counter() - start
            proc.kill()
            proc.wait()
            return elapsed
    proc.wait()
    raise RuntimeError(f"{cmd} ended (exit {proc.returncode}) without printing {until!r}: {seen[-500:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--old", type=Path, help="an older checkout's source tree, for fit to its first step")
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_startup."))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"), "LIT_NANOGPT_CACHE": str(tmp)}
    env.pop("WANDB_SILENT", None)
    cli = [sys.executable, "-m", "lit_nanogpt.commands"]  # what the lit-nanogpt console script runs
    from lit_nanogpt.checkpoint import import_nanogpt

    baby = ROOT / "tests" / "fixtures" / "nanogpt_baby"
    ckpt = import_nanogpt(baby / "ckpt.pt", baby / "meta.pkl", tmp / "baby.ckpt")
    torch_only = ([sys.executable, "-c", "import torch"], env, None)
    rows = [
        ("lit-nanogpt --help", (cli + ["--help"], env, None), "python -c 'import torch'", torch_only),
        (
            "lit-nanogpt generate --checkpoint X --max_new_tokens 1",
            (cli + ["generate", "--checkpoint", str(ckpt), "--max_new_tokens", "1"], env, None),
            "python -c 'import torch'",
            torch_only,
        ),
    ]
    if not args.skip_fit:
        fit = ["fit", "--config", str(ROOT / "configs/shakespeare_char_cpu.yaml"), *TINY,
               "--trainer.max_steps=20", f"--trainer.default_root_dir={tmp / 'run'}"]  # fmt: skip
        first_step = r"\b1/20\b"
        if args.old:
            old = args.old.resolve()
            if not (old / "lit_nanogpt" / "callbacks").exists():  # installed as lit_nanogpt.callbacks
                (old / "lit_nanogpt" / "callbacks").symlink_to(old / "callbacks")
            old_env = {**env, "PYTHONPATH": str(old)}
            old_fit = [*fit[:2], str(old / "configs/shakespeare_char_cpu.yaml"), *fit[3:]]
            old_cli = [sys.executable, "-m", "lit_nanogpt.cli"]  # its entry point then
            rows.append(("fit, to its first step", (cli + fit, env, first_step), f"the same, {old}",
                         (old_cli + old_fit, old_env, first_step)))  # fmt: skip
        else:
            rows.append(("fit, to its first step", (cli + fit, env, first_step), "python -c 'import torch'",
                         torch_only))  # fmt: skip

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.pairs} pairs each, alternating\n")
    print("| command | median s | reference | median s | ratio (median of pairs) |")
    print("| --- | ---: | --- | ---: | ---: |")
    for label, command, ref_label, reference in rows:
        seconds(*command)  # warm the file cache for both
        seconds(*reference)
        ours, refs = [], []
        for _ in range(args.pairs):
            refs.append(seconds(*reference))
            ours.append(seconds(*command))
        ratio = statistics.median(a / b for a, b in zip(ours, refs, strict=True))
        print(f"| `{label}` | {statistics.median(ours):.2f} | `{ref_label}` | {statistics.median(refs):.2f} | "
              f"{ratio:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
