"""Light commands stay light: what ``generate`` and ``export`` import, read off the real command's process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_python

# What a command's process has imported when it ends, read from sys.modules at exit.
_PROBE = """
import atexit, json, os, sys
def report():
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in os.environ["PROBE_TOPS"].split()), f)
atexit.register(report)
sys.argv = ["lit-nanogpt", *sys.argv[1:]]
from lit_nanogpt.__main__ import main
raise SystemExit(main())
"""


# The packages the probe looks for: Lightning, onnx, and the hf extra, which only export --format hf and import-hf use.
HF = {"transformers", "tokenizers", "safetensors", "tiktoken"}
TOPS = ("lightning", "onnx", "lit_nanogpt", *sorted(HF))


@pytest.fixture(scope="module")
def baby(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.helpers import export_baby

    return export_baby(tmp_path_factory.mktemp("light"), int8=False)


def _imported_by(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    done = run_python("-c", _PROBE, *args, cwd=tmp_path, env={"PROBE_OUT": str(out), "PROBE_TOPS": " ".join(TOPS)})
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(out.read_text()))


def test_light_commands_import_neither_lightning_nor_onnx(baby: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, export = baby
    tops = lambda modules: {m.split(".")[0] for m in modules if m.split(".")[0] != "lit_nanogpt"}  # noqa: E731
    onnx_run = _imported_by(tmp_path, "generate", f"--onnx={export}", "--max_new_tokens=3")
    assert "lit_nanogpt.export.onnxrt" in onnx_run  # the probe sees the package's own modules
    assert tops(onnx_run) == set(), "generate --onnx imports neither lightning nor onnx"
    ckpt_run = _imported_by(tmp_path, "generate", f"--checkpoint={ckpt}", "--max_new_tokens=3")
    assert "lit_nanogpt.generate" in ckpt_run
    assert "lightning" not in tops(ckpt_run) and not tops(ckpt_run) & HF
    exported = _imported_by(tmp_path, "export", f"--checkpoint={ckpt}", f"--out={tmp_path / 'again'}", "--int8=false")
    # The export step itself needs onnx: the probe would see lightning and the hf extra too (one list, PROBE_TOPS).
    assert "onnx" in tops(exported)
    assert "lightning" not in tops(exported) and not tops(exported) & HF
    assert "lightning" not in tops(_imported_by(tmp_path, "--help"))


# The collector's state when a command's process ends (lit_nanogpt/__main__.py).
_GC_PROBE = """
import atexit, gc, json, os, sys
def report():
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(), "scanned": len(gc.get_objects())}, f)
atexit.register(report)
sys.argv = ["lit-nanogpt", *sys.argv[1:]]
from lit_nanogpt.__main__ import main
raise SystemExit(main())
"""


def test_imported_libraries_are_frozen_and_the_collector_still_runs(baby: tuple[Path, Path], tmp_path: Path) -> None:
    """torch's objects are imported with the collector paused, then frozen, so no full collection rescans them;
    the collector is back on for what the command makes; at exit everything is frozen."""
    out = tmp_path / "gc.json"
    ckpt, _ = baby
    done = run_python("-c", _GC_PROBE, "generate", f"--checkpoint={ckpt}", "--max_new_tokens=3", cwd=tmp_path,
                      env={"PROBE_OUT": str(out)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(out.read_text())
    assert state["enabled"] is True
    assert state["frozen"] > 50_000, state  # torch alone makes more than that
    assert state["scanned"] < 1_000, state  # frozen before exit too: shutdown's collections rescan nothing
