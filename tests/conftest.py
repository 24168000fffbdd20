"""The suite's fixtures (all of it runs on CPU); what tests import is in tests/helpers.py.

Layout: ``tests/unit`` runs in-process, ``tests/e2e`` starts real processes (every test there is marked
``slow``), ``tests/npu`` holds the Ascend fakes and the hardware-gated tests. ``pytest -m "not slow"`` is
the quick local loop, and a test outside ``slow`` that starts a process fails, naming the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

# As the lit-nanogpt command does (lit_nanogpt/__main__.py): where torch_npu is installed, torch would
# import it during `import torch` and, without CANN's set_env.sh, fail. The NPU tests import it
# themselves (RunIf(npu=True), lit_nanogpt.npu); TORCH_DEVICE_BACKEND_AUTOLOAD=1 restores torch's way.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
# One compute thread in this process and in every process it starts: the suite runs several processes at once
# on few cores (a fit beside in-process work, two DDP ranks, a server and its client), and OpenMP's waiting
# threads then spin against each other; with tiny models a second thread gains little even alone. Set before
# anything imports torch, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

from lit_nanogpt.text import GPT2_RANKS_URL  # noqa: E402
from tests.helpers import GPT2_RANKS, NANOGPT_BABY  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes outside its temp dirs or reaches W&B's servers, or tiktoken's: its cache holds GPT-2's ranks
    (../shared/data/gpt2.tiktoken) under the name tiktoken gives its download, so ``--data.tokenizer gpt2`` works
    offline as it does for a user who ran it once."""
    monkeypatch.setenv("LIT_NANOGPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    tiktoken_cache = tmp_path_factory.getbasetemp() / "tiktoken"
    if not tiktoken_cache.is_dir():
        tiktoken_cache.mkdir()
        shutil.copy(GPT2_RANKS, tiktoken_cache / hashlib.sha1(GPT2_RANKS_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def baby_ckpt(tmp_path: Path) -> Path:
    """nanoGPT's own baby checkpoint, imported into lit-nanogpt's format."""
    from lit_nanogpt.checkpoint import import_nanogpt

    return import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", tmp_path / "baby.ckpt")


# Module fixtures outside tests/e2e that run real processes (the 2-rank DDP fit, torchrun, the fake-NPU runs):
# the tests that use them are slow too.
PROCESS_FIXTURES = {"ddp_run", "two_nodes", "fake"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.path.parts or PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _processes_only_in_slow_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``-m "not slow"`` quick: a real process (a CLI run, a DDP rank, W&B's service) needs the ``slow`` mark."""
    if request.node.get_closest_marker("slow") is not None:
        return
    name = request.node.nodeid

    def refuse(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        raise RuntimeError(f"{name} starts a process ({args!r}): mark it @pytest.mark.slow or move it to tests/e2e")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
