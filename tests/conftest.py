"""Shared fixtures and the hardware gate for the test suite (all of it runs on CPU)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# As the lit-nanogpt command does (lit_nanogpt/__main__.py): where torch_npu is installed, torch would
# import it during `import torch` and, without CANN's set_env.sh, fail. The NPU tests import it
# themselves (RunIf(npu=True), lit_nanogpt.npu); TORCH_DEVICE_BACKEND_AUTOLOAD=1 restores torch's way.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
NANOGPT_BABY = FIXTURES / "nanogpt_baby"

# A tiny model for unit tests: fast on 2 CPU cores, big enough to learn a little.
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0, "bias": False}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes outside its temp dirs or reaches W&B's servers."""
    monkeypatch.setenv("LIT_NANOGPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")


def torch_npu_installed() -> bool:
    """Whether a ``torch_npu`` package can be found (working or not), without importing it."""
    try:
        return importlib.util.find_spec("torch_npu") is not None
    except ValueError:  # sys.modules["torch_npu"] is None: blocked in this process
        return False


class RunIf:
    """``@RunIf(npu=True)`` / ``@RunIf(cuda=True)``: skip with the reason shown when the hardware is absent.

    ``RunIf(without_torch_npu=True)``: for tests of what happens where torch_npu is not installed
    (the one-line errors, ``auto`` staying on the CPU); skipped on an Ascend host.
    """

    def __new__(  # type: ignore[misc]
        cls, npu: bool = False, cuda: bool = False, without_torch_npu: bool = False
    ) -> pytest.MarkDecorator:
        reasons = []
        if cuda and not torch.cuda.is_available():
            reasons.append("needs a CUDA GPU")
        if without_torch_npu and torch_npu_installed():
            reasons.append("checks a host without torch_npu, and this one has it")
        if npu:
            from lit_nanogpt.npu import npu_available  # noqa: PLC0415 (only once that subpackage exists)

            if not npu_available():
                reasons.append("needs an Ascend NPU with torch_npu and CANN")
        return pytest.mark.skipif(bool(reasons), reason=" and ".join(reasons))


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300):
    """Run ``lit-nanogpt ARGS`` in a fresh interpreter through the command's own entry point; returns the result."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lit_nanogpt", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_without_torch_npu(code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh interpreter that cannot import torch_npu: a machine without it, on any host.

    Auto-loading is off too, or torch itself would try to import the blocked package and fail.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    code = "import sys; sys.modules['torch_npu'] = None\n" + code
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def baby_ckpt(tmp_path: Path) -> Path:
    """nanoGPT's own baby checkpoint, imported into lit-nanogpt's format."""
    from lit_nanogpt.checkpoint import import_nanogpt

    return import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", tmp_path / "baby.ckpt")
