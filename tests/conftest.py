"""The suite's fixtures (all of it runs on CPU); what tests import is in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

# As the lit-nanogpt command does (lit_nanogpt/__main__.py): where torch_npu is installed, torch would
# import it during `import torch` and, without CANN's set_env.sh, fail. The NPU tests import it
# themselves (RunIf(npu=True), lit_nanogpt.npu); TORCH_DEVICE_BACKEND_AUTOLOAD=1 restores torch's way.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import pytest  # noqa: E402

from tests.helpers import NANOGPT_BABY  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes outside its temp dirs or reaches W&B's servers."""
    monkeypatch.setenv("LIT_NANOGPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def baby_ckpt(tmp_path: Path) -> Path:
    """nanoGPT's own baby checkpoint, imported into lit-nanogpt's format."""
    from lit_nanogpt.checkpoint import import_nanogpt

    return import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", tmp_path / "baby.ckpt")
