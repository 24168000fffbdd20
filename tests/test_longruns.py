"""Long runs: exact resume after SIGKILL, SIGTERM and SIGINT, non-finite losses, damaged caches, run folders, full
and read-only disks. Real ``lit-nanogpt fit`` processes where a signal is the point, in-process fits elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lit_nanogpt.cli import main
from tests.conftest import ROOT, TINY

EVERY = 10  # the periodic checkpoint's interval in these tests

# fit_defaults.yaml's checkpoints and stops, without W&B, samples, the loss curve and the export.
CALLBACKS = f"""
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{filename: best, monitor: val_loss, mode: min, save_top_k: 1, save_last: true,
                  enable_version_counter: false}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: {EVERY}, save_top_k: 0, save_last: true, enable_version_counter: false}}
    - class_path: lit_nanogpt.callbacks.StopOnSignal
    - class_path: lit_nanogpt.callbacks.StopOnNonFinite
"""


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine it costs 10x (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def callbacks_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "callbacks.yaml"
    path.write_text(CALLBACKS)
    return path


def fit_args(root: Path, config: Path, steps: int, *extra: str) -> list[str]:
    args = ["fit", "--config", str(ROOT / "configs/shakespeare_char_cpu.yaml"), "--config", str(config)]
    args += [f"--model.arch.{k}={v}" for k, v in {**TINY, "dropout": 0.1}.items()]  # dropout: its RNG must resume
    return args + [
        f"--trainer.max_steps={steps}",
        "--trainer.val_check_interval=50",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        "--model.learning_rate=1e-2",
        "--model.warmup_iters=10",
        "--data.val_batch_size=256",
        *extra,
    ]


def start_fit(args: list[str]) -> subprocess.Popen:
    """A real ``lit-nanogpt fit`` in its own session, so signals reach it alone."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lit_nanogpt.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bitwise
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):  # fmt: skip
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, callbacks_config: Path) -> dict:
    """The uninterrupted run the interrupted ones must match: its final last.ckpt."""
    root = tmp_path_factory.mktemp("reference")
    assert main(fit_args(root, callbacks_config, STEPS)) == 0
    return load(root / "checkpoints" / "last.ckpt")


STEPS = 200


def test_sigkill_then_resume_ends_bitwise_identical(reference: dict, callbacks_config: Path, tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = start_fit(fit_args(tmp_path, callbacks_config, STEPS))
    wait_for(last, proc)
    time.sleep(0.05)  # mid-way between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load(last)["global_step"]
    assert 0 < killed_at < STEPS, "the run ended before it was killed: make it longer"
    assert main(fit_args(tmp_path, callbacks_config, STEPS, "--ckpt_path", "last")) == 0
    assert_same_training_state(load(last), reference)
