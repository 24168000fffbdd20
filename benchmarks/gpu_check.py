#!/usr/bin/env python
"""The stages of ``benchmarks/gpu_check.sh``, which sets up the environment and then runs this file.

    bash benchmarks/gpu_check.sh [--smoke] [--out DIR]       # not this file directly

Four stages, in order, on one CUDA GPU (``--smoke``: on the CPU, every model tiny), each under its own time
budget and a deadline for the whole run; each stage's record is written into ``OUT/gpu_check.json`` as the stage
ends (the file is rewritten whole, atomically, so a run cut off at any point leaves valid JSON with every stage
that finished), and everything each command printed goes to ``OUT/gpu_check.log``:

1. ``vs_nanogpt``: nanoGPT's own ``train.py`` with its GPU recipe (``config/train_shakespeare_char.py``: bf16,
   ``torch.compile``, fused AdamW), then ``lit-nanogpt fit --config configs/shakespeare_char.yaml``, on the same
   card, both cut to the same number of steps (``--vs-steps``; the learning rate decays over them on both sides);
   each side's whole-process wall time, step time and best full-validation loss (nanoGPT's kept checkpoint
   imported with ``import-nanogpt`` and scored by ``lit-nanogpt validate``, as ``bench_vs_nanogpt.py`` does on
   the CPU, since nanoGPT's own figure is an estimate over 200 random batches).
2. ``fast``: ``lit-nanogpt fit --config configs/shakespeare_char_fast.yaml`` as shipped: best val loss against
   the goal of 1.47 within its 2000 steps.
3. ``fp16``: a short ``configs/shakespeare_char_npu.yaml`` run on CUDA through the NPU's own precision plugin,
   ``NPUPrecision("16-mixed", device="cuda")`` given as ``--trainer.plugins`` (``--trainer.precision null``):
   fp16 autocast with torch's ``GradScaler``; its loss scale, skipped steps and losses from the CSV log.
4. ``export_generate``: ``lit-nanogpt export`` of stage 2's best checkpoint, then ``generate --checkpoint
   --device cuda`` and ``generate --onnx`` (onnxruntime on the CPU) on it: load time and tokens/s as printed.

Every command is timed from launch to exit and run in its own process group; a command past its time is sent
SIGTERM (a fit then writes last.ckpt and stops), then SIGKILL, and recorded with exit code 124. A failure is
recorded with its exit code and the tail of its output, and the later stages still run. W&B is off (it is not on
the GPU machine): the fits log to Lightning's ``CSVLogger`` in their run folders instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import ROOT, cli, machine_info

STAGES = ("vs_nanogpt", "fast", "fp16", "export_generate")
SHIPPED = {"vs_nanogpt": 5000, "fast": 2000}  # the recipes' own max_steps
GOAL_LOSS = 1.47  # nanoGPT's 1.4697 after 5000 steps, and the fast recipe's goal within 2000
TINY_ARCH = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}
CONFIGS = ROOT / "configs"


@dataclass
class Plan:
    """What each stage runs: the GPU plan, or ``--smoke``'s tiny one on the CPU."""

    smoke: bool
    vs_steps: int
    fast_steps: int
    fp16_steps: int
    deadline_s: float  # the whole run, from this script's start (gpu_check.sh's set-up comes before)
    caps: dict[str, float]  # the most one command may take
    floor: dict[str, float]  # the least time a stage needs, kept free for it while the stages before it run
    new_tokens: int
    lit_extra: list[str] = field(default_factory=list)  # for every fit
    validate_extra: list[str] = field(default_factory=list)  # for the validation of nanoGPT's checkpoint
    nanogpt_extra: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"

    @property
    def accelerator(self) -> str:
        return "cpu" if self.smoke else "gpu"

    @property
    def val_precision(self) -> str:
        """What nanoGPT's checkpoint is validated in: the precision our fits validate in."""
        return "32-true" if self.smoke else "bf16-mixed"

    @property
    def tokens_per_step(self) -> int:
        return 8 * TINY_ARCH["block_size"] if self.smoke else 64 * 256


def gpu_plan(args: argparse.Namespace) -> Plan:
    # Sized from the first H200 run (2026-12-04, BENCHMARKS.md "The GPU check"): nanoGPT's 1000 steps 51 s, its
    # import 12 s and validation 15 s, our fit's compile about 25 s, the fast recipe 1500 steps in 100 s before
    # Muon's blocks were batched. The deadline keeps the whole within 7 minutes with gpu_check.sh's set-up (about
    # 20 s); a command may take its cap (its timeout) only while the floors of the stages after it stay free.
    return Plan(
        smoke=False,
        vs_steps=args.vs_steps or 1000,
        fast_steps=args.fast_steps or SHIPPED["fast"],
        fp16_steps=args.fp16_steps or 300,
        deadline_s=args.deadline or 380,
        caps={"nanogpt": 80, "lit": 90, "import": 25, "validate": 30, "fast": 130, "fp16": 40, "export": 30,
              "generate": 20},
        floor={"vs_nanogpt": 120, "fast": 80, "fp16": 30, "export_generate": 40},
        new_tokens=500,
    )  # fmt: skip


def smoke_plan(args: argparse.Namespace) -> Plan:
    arch = [f"--model.arch.{k}={v}" for k, v in TINY_ARCH.items()]
    return Plan(
        smoke=True,
        vs_steps=args.vs_steps or 20,
        fast_steps=args.fast_steps or 20,
        fp16_steps=args.fp16_steps or 10,
        deadline_s=args.deadline or 480,  # about a minute when the CPU is free; generous for a shared one
        caps={"nanogpt": 120, "lit": 120, "import": 60, "validate": 60, "fast": 120, "fp16": 120, "export": 60,
              "generate": 60},
        floor={"vs_nanogpt": 0, "fast": 0, "fp16": 0, "export_generate": 0},
        new_tokens=50,
        lit_extra=[*arch, "--model.arch.dropout=0.0", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                   "--model.compile=false", "--model.fused=null", "--data.batch_size=8", "--data.val_batch_size=256"],
        nanogpt_extra=["--device=cpu", "--compile=False", "--dtype=float32", "--dropout=0.0", "--batch_size=8",
                       "--eval_iters=2", "--log_interval=2",
                       *(f"--{k}={v}" for k, v in TINY_ARCH.items())],
        validate_extra=["--data.val_batch_size=256"],
    )  # fmt: skip


# ---- the record ----
class Report:
    """``gpu_check.json``: rewritten whole after every change, through a temporary file and a rename."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "stages": {}}
        self.write()

    def stage(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


@dataclass
class Done:
    """One command's run: the record that goes into the JSON, and its output for parsing."""

    record: dict[str, Any]
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.record.get("rc") == 0


class Runner:
    """Runs the commands, each under ``min(its cap, the time left before the deadline less a reserve)``."""

    def __init__(self, log: Path, work: Path, deadline: float) -> None:
        self.log, self.work, self.deadline = log, work, deadline

    def run(self, name: str, cmd: list[str], cap: float, reserve: float = 0, cwd: Path | None = None) -> Done:
        """``cmd`` in ``cwd``, by default the work folder: never the checkout, whose ``lit_nanogpt/`` (no
        ``callbacks/`` inside) would shadow the one gpu_check.sh put on PYTHONPATH."""
        cmd = [str(c) for c in cmd]
        left = self.deadline - time.monotonic() - reserve
        timeout = min(cap, left)
        record: dict[str, Any] = {"name": name, "cmd": shlex.join(cmd), "timeout_s": round(max(timeout, 0), 1)}
        if left < 5:
            record.update(rc=None, skipped=f"{left:.0f} s left before the run's deadline (less the later stages')")
            self._log(name, cmd, "", "", record)
            return Done(record)
        env = {
            **os.environ,
            "WANDB_MODE": "disabled",
            "PYTHONUNBUFFERED": "1",
            "LIT_NANOGPT_CACHE": str(self.work / "cache"),
            # A cold compile for every command, so neither side of a comparison reuses the other's kernels.
            "TORCHINDUCTOR_CACHE_DIR": str(self.work / "inductor" / name),
            "TRITON_CACHE_DIR": str(self.work / "triton" / name),
        }
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd or self.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, errors="replace", start_new_session=True)  # fmt: skip
        except OSError as e:  # no such program
            record.update(rc=127, seconds=0.0, timed_out=False, stderr_tail=f"{type(e).__name__}: {e}")
            self._log(name, cmd, "", record["stderr_tail"], record)
            return Done(record)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            out, err = _stop(proc)
        seconds = time.perf_counter() - start
        record.update(rc=124 if timed_out else proc.returncode, seconds=round(seconds, 2), timed_out=timed_out)
        if record["rc"] != 0:
            record["stderr_tail"] = (err or out)[-1500:]
        self._log(name, cmd, out, err, record)
        return Done(record, out, err)

    def _log(self, name: str, cmd: list[str], out: str, err: str, record: dict[str, Any]) -> None:
        summary = {k: v for k, v in record.items() if k not in ("cmd", "stderr_tail")}
        with self.log.open("a") as f:
            f.write(f"\n===== {name}: {shlex.join(cmd)}\n{out}")
            if err:
                f.write(f"----- stderr\n{err}")
            f.write(f"----- {json.dumps(summary)}\n")


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM to the command's whole process group (a fit writes last.ckpt and stops), SIGKILL 20 s later."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


# ---- reading what the commands printed and wrote ----
def best_checkpoint_loss(text: str) -> float | None:
    """The fit's last line, ``Best checkpoint: PATH (val_loss=L)``."""
    found = re.findall(r"^Best checkpoint: .* \(val_loss=([\d.]+)\)$", text, re.M)
    return float(found[-1]) if found else None


def validate_loss(text: str) -> float | None:
    """``val_loss`` from the table ``lit-nanogpt validate`` prints."""
    found = re.search(r"val_loss\s*[│|]?\s*([\d.]+)", text)
    return float(found.group(1)) if found else None


def csv_log(root: Path) -> dict[str, list[float]]:
    """Every column of the fit's ``CSVLogger`` ``metrics.csv`` under ``root``, its empty cells left out."""
    columns: dict[str, list[float]] = {}
    for path in sorted(root.glob("**/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value not in ("", None):
                        columns.setdefault(key, []).append(float(value))
    return columns


def settled_median(values: list[float]) -> float | None:
    """The median after the first fifth (compilation and warm-up); None when there is nothing."""
    rest = values[len(values) // 5 :]
    return round(statistics.median(rest), 4) if rest else None


def nanogpt_log(text: str) -> dict[str, Any]:
    """nanoGPT's printed evaluations (estimates over eval_iters batches) and per-iteration times."""
    evals = re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", text, re.M)
    times = [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", text, re.M)]
    return {
        "own_val_estimate_best": min((float(v) for v in evals), default=None),
        "evaluations": len(evals),
        "step_ms_median": settled_median(times),
    }


def generate_figures(text: str) -> dict[str, Any]:
    """``generate``'s stderr lines: ``Loaded X in S s`` and ``N tokens in S s (R tokens/s)``."""
    loaded = re.search(r"^Loaded .* in ([\d.]+) s", text, re.M)
    speed = re.search(r"^(\d+) tokens in ([\d.]+) s \(([\d.]+) tokens/s\)", text, re.M)
    return {
        "load_s": float(loaded.group(1)) if loaded else None,
        "tokens": int(speed.group(1)) if speed else None,
        "tokens_per_s": float(speed.group(3)) if speed else None,
    }


# ---- the stages ----
class Stages:
    def __init__(self, plan: Plan, runner: Runner, work: Path, nanogpt: Path | None, python: str,
                 onnx_error: str | None, selected: list[str]) -> None:  # fmt: skip
        self.plan, self.runner, self.work, self.nanogpt, self.python = plan, runner, work, nanogpt, python
        self.onnx_error, self.selected = onnx_error, selected

    def reserve(self, stage: str) -> float:
        """The time kept free for the selected stages after ``stage``."""
        later = self.selected[self.selected.index(stage) + 1 :]
        return sum(self.plan.floor[s] for s in later)

    def lit(self, *args: Any) -> list[str]:
        return cli(*args, python=self.python)

    def fit(self, name: str, config: Path, root: Path, steps: int, cap: float, reserve: float, *extra: str) -> Done:
        args = ["fit", "--config", config, f"--trainer.default_root_dir={root}", f"--trainer.max_steps={steps}",
                "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}",
                "--overwrite=true", *self.plan.lit_extra, *extra]  # fmt: skip
        return self.runner.run(name, self.lit(*args), cap, reserve)

    def vs_nanogpt(self) -> dict[str, Any]:
        plan, caps, reserve = self.plan, self.plan.caps, self.reserve("vs_nanogpt")
        steps = plan.vs_steps
        every = steps if plan.smoke else 250  # both recipes' evaluation interval (nanoGPT's eval_interval)
        record: dict[str, Any] = {
            "steps": steps,
            "shipped_steps": SHIPPED["vs_nanogpt"],
            "reduced": None if steps == SHIPPED["vs_nanogpt"] else
            f"max_steps {SHIPPED['vs_nanogpt']} -> {steps} on both sides, the learning rate decaying over {steps}; "
            f"evaluation every {every} steps (nanoGPT: an estimate over eval_iters random batches per split; ours: "
            "the whole validation split)",
        }  # fmt: skip
        commands = record["commands"] = []
        # nanoGPT's side
        side: dict[str, Any] = {}
        record["nanogpt"] = side
        if self.nanogpt is None:
            side["error"] = "nanoGPT's code and data were not found: run gpu_check.sh --prepare first"
        else:
            out_dir = self.work / "nanogpt_out"
            args = [self.python, "train.py", "config/train_shakespeare_char.py", f"--out_dir={out_dir}",
                    f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={every}",
                    *plan.nanogpt_extra]  # fmt: skip
            done = self.runner.run("nanogpt", args, caps["nanogpt"], reserve + caps["lit"], cwd=self.nanogpt)
            commands.append(done.record)
            side.update(wall_s=done.record.get("seconds"), **nanogpt_log(done.stdout))
            if side["step_ms_median"]:
                side["tokens_per_s_median"] = round(plan.tokens_per_step / side["step_ms_median"] * 1000)
            ckpt = out_dir / "ckpt.pt"
            if ckpt.is_file():
                meta = self.nanogpt / "data" / "shakespeare_char" / "meta.pkl"
                imported = self.work / "nanogpt_imported.ckpt"
                done = self.runner.run("import", self.lit("import-nanogpt", "--ckpt", ckpt, "--meta", meta, "--out",
                                                          imported), caps["import"], reserve + caps["lit"])  # fmt: skip
                commands.append(done.record)
                if done.ok:
                    args = ["validate", f"--ckpt_path={imported}", "--trainer.enable_progress_bar=false",
                            f"--trainer.accelerator={plan.accelerator}", f"--trainer.precision={plan.val_precision}",
                            *plan.validate_extra]  # fmt: skip
                    done = self.runner.run("validate", self.lit(*args), caps["validate"], reserve + caps["lit"])
                    commands.append(done.record)
                    side["best_val_loss"] = validate_loss(done.stdout + done.stderr)
                    side["validated_in"] = plan.val_precision
            else:
                side["error"] = f"nanoGPT kept no checkpoint ({ckpt} is missing)"
        # our side
        root = self.work / "vs_lit"
        extra = [f"--trainer.val_check_interval={every}"] if plan.smoke else []
        done = self.fit("lit", CONFIGS / "shakespeare_char.yaml", root, steps, caps["lit"], reserve, *extra)
        commands.append(done.record)
        logged = csv_log(root)
        ours = record["lit"] = {
            "wall_s": done.record.get("seconds"),
            "best_val_loss": best_checkpoint_loss(done.stdout),
            "tokens_per_s_median": settled_median(logged.get("tokens_per_s", [])),
        }
        if ours["tokens_per_s_median"]:
            ours["step_ms_median"] = round(plan.tokens_per_step / ours["tokens_per_s_median"] * 1000, 2)
        if side.get("wall_s") and ours["wall_s"]:
            record["wall_ratio"] = round(ours["wall_s"] / side["wall_s"], 3)
        if side.get("best_val_loss") is not None and ours["best_val_loss"] is not None:
            record["loss_difference"] = round(ours["best_val_loss"] - side["best_val_loss"], 4)
        record["goal"] = f"lit-nanogpt's wall time <= nanoGPT's, at best val loss <= {GOAL_LOSS} (5000 steps)"
        if not plan.smoke and "wall_ratio" in record:
            full = steps == SHIPPED["vs_nanogpt"]
            loss_ok = ours["best_val_loss"] is not None and ours["best_val_loss"] <= GOAL_LOSS
            record["goal_met"] = record["wall_ratio"] <= 1.0 and (loss_ok if full else True)
            if not full:
                record["goal_note"] = f"wall time only: at {steps} steps the loss goal does not apply"
        record["required_numbers"] = ["nanogpt.wall_s", "nanogpt.best_val_loss", "lit.wall_s", "lit.best_val_loss",
                             "wall_ratio"]  # fmt: skip
        return record

    def fast(self) -> dict[str, Any]:
        plan, root = self.plan, self.work / "fast"
        steps = plan.fast_steps
        extra = [f"--trainer.val_check_interval={steps}"] if plan.smoke else []
        done = self.fit("fast", CONFIGS / "shakespeare_char_fast.yaml", root, steps, plan.caps["fast"],
                        self.reserve("fast"), *extra)  # fmt: skip
        logged = csv_log(root)
        best = best_checkpoint_loss(done.stdout)
        record: dict[str, Any] = {
            "steps": steps,
            "reduced": None if steps == SHIPPED["fast"] else f"max_steps {SHIPPED['fast']} -> {steps}",
            "wall_s": done.record.get("seconds"),
            "best_val_loss": best,
            # The validations inside the fit are estimates (val_loss_est, data.val_est_windows windows); val_loss is
            # the fit's one full pass at the end, over best.ckpt (best_val_loss).
            "val_loss_estimates": logged.get("val_loss_est", []),
            "val_losses": logged.get("val_loss", []),
            "tokens_per_s_median": settled_median(logged.get("tokens_per_s", [])),
            "goal": f"best val loss <= {GOAL_LOSS} within 2000 steps",
            "commands": [done.record],
            "required_numbers": ["wall_s", "best_val_loss", "tokens_per_s_median"],
        }
        if not plan.smoke and best is not None:
            record["goal_met"] = best <= GOAL_LOSS and steps <= SHIPPED["fast"]
        return record

    def fp16(self) -> dict[str, Any]:
        plan, root, steps = self.plan, self.work / "fp16", self.plan.fp16_steps
        plugin = {"class_path": "lit_nanogpt.npu.NPUPrecision", "init_args": {"precision": "16-mixed",
                                                                             "device": plan.device}}  # fmt: skip
        done = self.fit("fp16", CONFIGS / "shakespeare_char_npu.yaml", root, steps, plan.caps["fp16"],
                        self.reserve("fp16"), f"--trainer.accelerator={plan.accelerator}", "--trainer.precision=null",
                        f"--trainer.plugins={json.dumps(plugin)}", f"--trainer.val_check_interval={steps}",
                        f"--trainer.log_every_n_steps={max(1, min(10, steps // 5))}")  # fmt: skip
        logged = csv_log(root)

        def last(key: str) -> float | None:
            return logged[key][-1] if logged.get(key) else None

        return {
            "steps": steps,
            "how": f"configs/shakespeare_char_npu.yaml with --trainer.accelerator {plan.accelerator} "
            f"--trainer.precision null --trainer.plugins NPUPrecision(precision='16-mixed', device='{plan.device}')",
            "wall_s": done.record.get("seconds"),
            "best_val_loss": best_checkpoint_loss(done.stdout),
            "train_loss_first": logged["train_loss"][0] if logged.get("train_loss") else None,
            "train_loss_last": last("train_loss"),
            # Logged only by NPUPrecision: their presence shows the plugin ran the steps.
            "loss_scale_last": last("loss_scale"),
            "skipped_steps": last("skipped_steps"),
            "tokens_per_s_median": settled_median(logged.get("tokens_per_s", [])),
            "commands": [done.record],
            "required_numbers": ["wall_s", "best_val_loss", "train_loss_last", "loss_scale_last", "skipped_steps"],
        }

    def export_generate(self) -> dict[str, Any]:
        plan, caps = self.plan, self.plan.caps
        candidates = [self.work / "fast" / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")]
        candidates += [self.work / "vs_lit" / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")]
        ckpt = next((c for c in candidates if c.is_file()), None)
        record: dict[str, Any] = {"checkpoint": str(ckpt) if ckpt else None, "commands": []}
        if ckpt is None:
            record["error"] = "no checkpoint from stage fast or vs_nanogpt to export"
            return record
        record["required_numbers"] = ["generate_checkpoint.tokens_per_s", "generate_checkpoint.load_s"]
        prompt = ["--prompt", "ROMEO:", "--max_new_tokens", str(plan.new_tokens), "--seed", "1337"]
        done = self.runner.run("generate_checkpoint", self.lit("generate", "--checkpoint", ckpt, "--device",
                                                               plan.device, *prompt), caps["generate"])  # fmt: skip
        record["commands"].append(done.record)
        record["generate_checkpoint"] = {"device": plan.device, **generate_figures(done.stderr)}
        if self.onnx_error:
            record["onnx_skipped"] = (f"onnx or onnxruntime cannot be imported here ({self.onnx_error}); "
                                      "gpu_check.sh --prepare --with-onnx ships their wheels")  # fmt: skip
            return record
        out = self.work / "export"
        done = self.runner.run("export", self.lit("export", "--checkpoint", ckpt, "--out", out), caps["export"])
        record["commands"].append(done.record)
        record["export_s"] = done.record.get("seconds")
        manifest = out / "manifest.json"
        if done.ok and manifest.is_file():
            data = json.loads(manifest.read_text())
            diffs = data.get("max_abs_diff") or {}
            record["export_max_abs_diff"] = max(diffs.values()) if diffs else None
            record["export_mb"] = round(sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6, 1)
            done = self.runner.run("generate_onnx", self.lit("generate", "--onnx", out, *prompt), caps["generate"])
            record["commands"].append(done.record)
            record["generate_onnx"] = {"device": "cpu (onnxruntime)", **generate_figures(done.stderr)}
        record["required_numbers"] += ["export_s", "generate_onnx.tokens_per_s"]
        return record


def run_stage(name: str, body: Callable[[], dict[str, Any]], report: Report) -> None:
    """One stage: marked running in the JSON first, then its record, whatever happens inside."""
    start = time.perf_counter()
    report.stage(name, {"status": "running", "started": _now()})
    try:
        record = body()
    except Exception:  # a bug here must not cost the later stages
        record = {"error": traceback.format_exc()[-1500:]}
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["status"] = _status(record)
    report.stage(name, {"status": record.pop("status"), **record})
    figures = ", ".join(f"{key} {_lookup(record, key)}" for key in record.get("required_numbers", []))
    status = report.data["stages"][name]["status"]
    print(f"gpu_check: {name}: {status} in {record['seconds']} s{': ' + figures if figures else ''}", flush=True)


def _status(record: dict[str, Any]) -> str:
    commands = record.get("commands", [])
    if any(c.get("skipped") for c in commands):
        return "skipped"
    if any(c.get("timed_out") for c in commands):
        return "timed_out"
    if record.get("error") or any(c.get("rc") != 0 for c in commands):
        return "failed"
    missing = [key for key in record.get("required_numbers", []) if not isinstance(_lookup(record, key), int | float)]
    if missing:
        record["missing"] = missing
        return "failed"
    return "ok"


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(python: str, runner: Runner, smoke: bool) -> dict[str, Any]:
    """The machine and the versions the run uses, read in a fresh process (through gpu_check.sh's PYTHONPATH)."""
    code = (
        "import json, importlib.metadata as m, torch\n"
        "v = {}\n"
        "for d in ('lightning', 'jsonargparse', 'torchmetrics', 'onnx', 'onnxruntime', 'numpy', 'PyYAML'):\n"
        "    try: v[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: v[d] = None\n"
        "try:\n"
        "    import onnx, onnxruntime; onnx_error = None\n"
        "except Exception as e:\n"
        "    onnx_error = f'{type(e).__name__}: {e}'\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': cuda,\n"
        "    'gpu': torch.cuda.get_device_name(0) if cuda else None, 'gpus': torch.cuda.device_count(),\n"
        "    'bf16': cuda and torch.cuda.is_bf16_supported(), 'onnx_error': onnx_error, 'versions': v}))\n"
    )
    done = runner.run("environment", [python, "-c", code], 120)
    info: dict[str, Any] = {"machine": machine_info()}
    try:
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        info["environment_error"] = done.record.get("stderr_tail") or "no output"
        info["onnx_error"] = "not known: the environment could not be read"
    if not smoke:
        smi = runner.run("nvidia-smi", ["nvidia-smi", "-L"], 20)
        info["nvidia_smi"] = smi.stdout.strip() if smi.ok else smi.record.get("stderr_tail")
    return info


def without_export(work: Path) -> Path:
    """A config whose ``trainer.callbacks`` are fit_defaults.yaml's less ``OnnxExport`` (which needs onnx), so a
    fit on a machine without onnx still ends with its ``Best checkpoint`` line."""
    import yaml  # a dependency of Lightning's, so wherever lit-nanogpt runs

    callbacks = yaml.safe_load((ROOT / "lit_nanogpt" / "fit_defaults.yaml").read_text())["trainer"]["callbacks"]
    kept = [c for c in callbacks if not c["class_path"].endswith("OnnxExport")]
    path = work / "without_export.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": kept}}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of gpu_check.json and gpu_check.log")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for run folders and checkpoints")
    parser.add_argument("--nanogpt", type=Path, help="nanoGPT's code with data/shakespeare_char prepared")
    parser.add_argument("--smoke", action="store_true", help="every stage on the CPU with tiny settings")
    parser.add_argument("--vs-steps", type=int, help="stage 1's steps on both sides (GPU default 1000 of 5000)")
    parser.add_argument("--fast-steps", type=int, help="stage 2's steps (default the recipe's 2000)")
    parser.add_argument("--fp16-steps", type=int, help="stage 3's steps (GPU default 300)")
    parser.add_argument("--deadline", type=float, help="seconds for all stages (GPU default 380, smoke 480)")
    parser.add_argument("--setup", type=Path, help="gpu_check.sh's set-up record (JSON), put first in the report")
    parser.add_argument("--stages", default=",".join(STAGES), help="a comma-separated subset (run in the order above)")
    args = parser.parse_args()
    plan = smoke_plan(args) if args.smoke else gpu_plan(args)
    selected = [s for s in STAGES if s in args.stages.split(",")]
    if unknown := set(args.stages.split(",")) - set(STAGES):
        parser.error(f"--stages: {', '.join(sorted(unknown))} not among {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    runner = Runner(log, args.work, time.monotonic() + plan.deadline_s)
    python = sys.executable
    setup = json.loads(args.setup.read_text()) if args.setup and args.setup.is_file() else None
    report = Report(args.out / "gpu_check.json", {
        "script": "benchmarks/gpu_check.sh", "mode": "smoke (CPU, tiny)" if plan.smoke else "gpu",
        "started": _now(), "deadline_s": plan.deadline_s, "work": str(args.work), "setup": setup, "environment": None,
    })  # fmt: skip
    env = report.data["environment"] = environment(python, runner, plan.smoke)
    if env.get("onnx_error"):
        plan.lit_extra += ["--config", str(without_export(args.work))]
        env["fit_end_export"] = "off: onnx or onnxruntime cannot be imported here"
    report.write()
    stages = Stages(plan, runner, args.work, args.nanogpt, python, env.get("onnx_error"), selected)
    for name in selected:
        run_stage(name, getattr(stages, name), report)
    report.data["finished"] = _now()
    report.data["ok"] = all(s.get("status") == "ok" for s in report.data["stages"].values())
    report.write()
    sys.exit(0 if report.data["ok"] else 1)


if __name__ == "__main__":
    main()
