"""``benchmarks/gpu_check.sh``: its ``--smoke`` run goes through every stage on the CPU and reports numbers; a stage
that fails, hangs or raises is recorded and the next one still runs."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, run

NANOGPT_REF = ROOT.parent / "shared" / "reference" / "nanogpt"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def _number(record: dict[str, Any], dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@pytest.mark.skipif(not (NANOGPT_REF / "train.py").is_file(), reason=f"needs nanoGPT's code at {NANOGPT_REF}")
def test_smoke_run_reports_every_stage_with_numbers(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out), "--work", str(work)]
    result = run(args, cwd=tmp_path, env={"PYTHON": sys.executable, "NANOGPT_REF": str(NANOGPT_REF)}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The device tool brings back at most 8 files: the script writes two.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] is True and report["setup"]["rc"] == 0
    stages = report["stages"]
    assert list(stages) == ["vs_nanogpt", "fast", "fp16", "export_generate"]
    for name, stage in stages.items():
        assert stage["status"] == "ok", (name, stage)
        assert stage["required_numbers"], name
        for key in stage["required_numbers"]:
            value = _number(stage, key)
            assert isinstance(value, int | float) and math.isfinite(value), (name, key, value)
        assert all(c["rc"] == 0 for c in stage["commands"]), name
    # Both sides of stage 1 trained and were validated on the whole split: a 65-character model starts at ln 65.
    vs = stages["vs_nanogpt"]
    for side in ("nanogpt", "lit"):
        assert 3.0 < vs[side]["best_val_loss"] < math.log(65) + 0.1, (side, vs[side])
    assert vs["wall_ratio"] == pytest.approx(vs["lit"]["wall_s"] / vs["nanogpt"]["wall_s"], rel=1e-2)
    # Stage 3 ran through NPUPrecision: only it logs a loss scale (fp16's first, 2**16, as no step overflowed).
    assert stages["fp16"]["loss_scale_last"] == 2.0**16 and stages["fp16"]["skipped_steps"] == 0
    eg = stages["export_generate"]
    assert eg["checkpoint"].endswith("fast/checkpoints/best.ckpt")
    assert eg["generate_checkpoint"]["tokens"] == eg["generate_onnx"]["tokens"] == 50
    assert eg["export_max_abs_diff"] < 1e-4


def test_a_failing_hanging_or_raising_stage_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    report = gpu_check.Report(tmp_path / "gpu_check.json", {"mode": "test"})
    runner = gpu_check.Runner(tmp_path / "gpu_check.log", tmp_path, time.monotonic() + 60)

    def failing() -> dict[str, Any]:
        done = runner.run("fails", ["bash", "-c", "echo half-way; echo 'no such device' >&2; exit 3"], 30)
        return {"commands": [done.record]}

    def hanging() -> dict[str, Any]:
        return {"commands": [runner.run("hangs", ["bash", "-c", "sleep 30"], cap=1).record]}

    def raising() -> dict[str, Any]:
        raise RuntimeError("a bug in a stage")

    def fine() -> dict[str, Any]:
        done = runner.run("fine", [sys.executable, "-c", "print(1.5)"], 30)
        return {"commands": [done.record], "value": float(done.stdout), "required_numbers": ["value"]}

    start = time.monotonic()
    for name, body in [("fails", failing), ("hangs", hanging), ("raises", raising), ("fine", fine)]:
        gpu_check.run_stage(name, body, report)
    assert time.monotonic() - start < 20  # the hung command was stopped at its cap
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert stages["fails"]["status"] == "failed"
    (command,) = stages["fails"]["commands"]
    assert command["rc"] == 3 and "no such device" in command["stderr_tail"]
    assert stages["hangs"]["status"] == "timed_out" and stages["hangs"]["commands"][0]["rc"] == 124
    assert stages["raises"]["status"] == "failed" and "RuntimeError: a bug in a stage" in stages["raises"]["error"]
    assert stages["fine"]["status"] == "ok" and stages["fine"]["value"] == 1.5
    log = (tmp_path / "gpu_check.log").read_text()
    assert "half-way" in log and "no such device" in log  # every command's output, failed ones too
    # A required figure that is missing fails the stage even when every command succeeded.
    gpu_check.run_stage("no_figure", lambda: {"commands": [], "required_numbers": ["loss"], "loss": None}, report)
    assert report.data["stages"]["no_figure"]["status"] == "failed"
    assert report.data["stages"]["no_figure"]["missing"] == ["loss"]


def test_commands_past_the_deadline_are_skipped_not_started(tmp_path: Path) -> None:
    runner = gpu_check.Runner(tmp_path / "gpu_check.log", tmp_path, time.monotonic() + 30)
    done = runner.run("late", ["bash", "-c", "exit 0"], cap=10, reserve=28)
    assert done.record["rc"] is None and "left before the run's deadline" in done.record["skipped"]
    assert gpu_check._status({"commands": [done.record]}) == "skipped"
