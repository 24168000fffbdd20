"""The one harness every benchmark here runs on: alternation, medians and ratios, the machine, processes, checkouts.

* ``alternate(arms, rounds)``: every arm once per round, the order rotated each round, so that a change
  in a shared machine's load falls on every arm alike; gives ``Results`` (medians, per-round ratios and
  their median, best and worst).
* ``machine_line()``: the CPU, its cores and vector/matrix extensions, the versions that matter, and the
  load average at the start (whether the machine was quiet is not known to the script).
* ``run_process(cmd)``: whole-process wall time of a command (optionally only up to a line it prints).
* ``Checkout``: a source tree of lit_nanogpt, this one or an older one, run with its own
  ``.venv/bin/python`` when it has one; ``compare_checkouts`` alternates a command between two.
* ``cli(...)``, ``scratch(...)``, ``print_table(...)``: the ``python -m lit_nanogpt`` command line, a
  scratch folder with W&B kept offline inside it, and a Markdown table.

Nothing here imports torch or lit_nanogpt, so start-up timings are not disturbed by the harness.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

Measurement = float | Mapping[str, float]


# ---- alternation ----
@dataclass
class Results:
    """What ``alternate`` measured: ``rounds[i][arm]`` is a number or a dict of named numbers."""

    arms: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    firsts: list[str] = field(default_factory=list)  # the arm that ran first in each round

    def values(self, arm: str, key: str | None = None) -> list[float]:
        return [r[arm] if key is None else r[arm][key] for r in self.rounds]

    def median(self, arm: str, key: str | None = None) -> float:
        return statistics.median(self.values(arm, key))

    def best(self, arm: str, key: str | None = None, higher: bool = True) -> float:
        """The least disturbed round: the highest value (a rate) or, with ``higher=False``, the lowest (a time)."""
        return (max if higher else min)(self.values(arm, key))

    def ratios(self, arm: str, base: str, key: str | None = None) -> list[float]:
        """``arm / base`` within each round (nan where ``base`` is 0)."""
        pairs = zip(self.values(arm, key), self.values(base, key), strict=True)
        return [a / b if b else float("nan") for a, b in pairs]

    def ratio(self, arm: str, base: str, key: str | None = None) -> float:
        """The median of the per-round ratios: a load change within a round cancels, unlike in a ratio of medians."""
        return statistics.median(self.ratios(arm, base, key))


def rotated(names: Sequence[str], i: int) -> list[str]:
    """Round ``i``'s order: ``names`` rotated by ``i`` (with two arms, swapped every round)."""
    k = i % len(names)
    return [*names[k:], *names[:k]]


def describe(arm: str, value: Measurement) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v:.4g}" for k, v in value.items())
    return f"{value:.4g}"


def alternate(
    arms: Mapping[str, Callable[[int], Measurement]],
    rounds: int,
    show: Callable[[str, Any], str] | None = describe,
) -> Results:
    """Run every arm (called with the round's index) once per round, the order rotated every round.

    Each run's result is printed as ``round i arm: show(result)`` as it comes (``show=None``: silent).
    """
    names = list(arms)
    results = Results(names)
    for i in range(rounds):
        order = rotated(names, i)
        results.firsts.append(order[0])
        row: dict[str, Any] = {}
        for name in order:
            row[name] = arms[name](i)
            if show is not None:
                print(f"round {i + 1}/{rounds} {name}: {show(name, row[name])}", flush=True)
        results.rounds.append({name: row[name] for name in names})
    return results


def format_list(values: Sequence[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table, as BENCHMARKS.md quotes them; the first column left-aligned, the others right."""
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


# ---- the machine ----
def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if not model:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
            found = re.search(r"^Model name:\s*(.+)$", out, re.M)
            model = found.group(1).strip() if found else ""
            found = re.search(r"^Flags:\s*(.+)$", out, re.M)
            flags = set(found.group(1).split()) if found else flags
        except OSError:
            pass
    return model or platform.processor() or platform.machine(), flags


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """The facts a figure depends on, read without importing torch (so start-up timings stay clean)."""
    model, flags = _cpu_model_and_flags()
    known = (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile"))
    extensions = [name for name, flag in known if flag in flags]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "extensions": extensions,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "lightning": _version("lightning"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "quiet": "unknown",
    }


def machine_line() -> str:
    """One line for the top of a benchmark's output, for the "Machine" line of BENCHMARKS.md."""
    m = machine_info()
    load = "n/a" if m["load_average"] is None else " ".join(f"{x:.2f}" for x in m["load_average"])
    return (
        f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {'/'.join(m['extensions']) or 'no AVX2'}; "
        f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, Lightning {m['lightning']}; "
        f"load average at start {load}; quiet: unknown (nothing here can tell whether other work ran)"
    )


# ---- processes ----
@dataclass
class Process:
    seconds: float
    stdout: str
    stderr: str


def run_process(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    until: str | None = None,
) -> Process:
    """Wall time of ``cmd`` from launch to exit, its output, and a ``SystemExit`` naming it if it fails.

    ``until``: stop the clock at the first output (stdout or stderr) matching this regex, then kill the
    process (its ``stdout`` is then all it printed, stderr included). ``log``: also write the output there.
    """
    cmd = [str(c) for c in cmd]
    start = time.perf_counter()
    if until is not None:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        seen = b""
        while chunk := os.read(proc.stdout.fileno(), 4096):
            seen += chunk
            if re.search(until.encode(), seen[-8192:]):
                seconds = time.perf_counter() - start
                proc.kill()
                proc.wait()
                return Process(seconds, seen.decode(errors="replace"), "")
        proc.wait()
        tail = seen.decode(errors="replace")[-2000:]
        raise SystemExit(f"{' '.join(cmd)}\nended (exit code {proc.returncode}) without printing {until!r}:\n{tail}")
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, errors="replace")
    seconds = time.perf_counter() - start
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise SystemExit(f"{' '.join(cmd)}\nfailed with exit code {done.returncode}:\n{tail}")
    return Process(seconds, done.stdout, done.stderr)


def cli(*args: Any, python: str = sys.executable) -> list[str]:
    """``python -m lit_nanogpt ARGS``: what the ``lit-nanogpt`` console script runs."""
    return [python, "-m", "lit_nanogpt", *(str(a) for a in args)]


def scratch(prefix: str, silent: bool = True) -> tuple[Path, dict[str, str]]:
    """A fresh scratch folder and an environment whose W&B runs stay offline inside it."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}."))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(folder / "wandb")}
    (folder / "wandb").mkdir()
    if silent:
        env["WANDB_SILENT"] = "true"
    else:
        env.pop("WANDB_SILENT", None)
    return folder, env


# ---- checkouts ----
@dataclass(frozen=True)
class Checkout:
    """A lit_nanogpt source tree, run with its own ``.venv/bin/python`` when it has one.

    Without a venv the tree runs on this Python with ``PYTHONPATH`` pointing at it (its dependencies
    must then match this venv's; ``python -m venv .venv --system-site-packages && .venv/bin/pip install
    --no-deps -e .`` inside the tree gives it one of its own).
    """

    root: Path

    @property
    def python(self) -> str:
        own = self.root / ".venv" / "bin" / "python"
        return str(own) if own.exists() else sys.executable

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        if not (self.root / ".venv" / "bin" / "python").exists() and self.root.resolve() != ROOT:
            env["PYTHONPATH"] = os.pathsep.join([str(self.root), *filter(None, [env.get("PYTHONPATH")])])
            callbacks = self.root / "lit_nanogpt" / "callbacks"
            if (self.root / "callbacks").is_dir() and not callbacks.exists():
                # Trees that install the top-level callbacks/ as lit_nanogpt.callbacks, run uninstalled.
                callbacks.symlink_to(self.root / "callbacks")
        return env

    def cli(self, *args: Any) -> list[str]:
        """``python -m lit_nanogpt ARGS``; a tree from before ``lit_nanogpt/__main__.py`` existed
        (d62d03d) runs the ``lit-nanogpt`` entry point its own pyproject.toml names instead."""
        if (self.root / "lit_nanogpt" / "__main__.py").exists():
            return cli(*args, python=self.python)
        entry = re.search(r'^lit-nanogpt = "([\w.]+):(\w+)"', (self.root / "pyproject.toml").read_text(), re.M)
        if entry is None:
            raise SystemExit(f"{self.root}: neither lit_nanogpt/__main__.py nor a lit-nanogpt entry point")
        module, func = entry.groups()
        code = f"import sys; from {module} import {func}; sys.argv[0] = 'lit-nanogpt'; sys.exit({func}())"
        return [self.python, "-c", code, *(str(a) for a in args)]

    def __str__(self) -> str:
        return str(self.root)


HERE = Checkout(ROOT)


def old_checkout(path: Path) -> Checkout:
    root = path.resolve()
    if not (root / "lit_nanogpt").is_dir():
        raise SystemExit(f"--old {path}: no lit_nanogpt/ there; make one with: git worktree add --detach {path} COMMIT")
    return Checkout(root)


def compare_checkouts(
    old: Checkout,
    run: Callable[[Checkout, int], Measurement],
    rounds: int,
    show: Callable[[str, Any], str] | None = describe,
) -> Results:
    """``run`` on the old checkout and on this one, alternating (arms ``old`` and ``new``)."""
    return alternate({"old": lambda i: run(old, i), "new": lambda i: run(HERE, i)}, rounds, show)
