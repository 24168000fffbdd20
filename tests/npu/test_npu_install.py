"""Installing on an Ascend host: the pinned pair, and a torch_npu that cannot load (no CANN, wrong torch).

A host with torch_npu installed but CANN's set_env.sh not sourced: CPU runs work, an NPU run is one line.

torch >= 2.5 imports every ``torch.backends`` entry point during ``import torch`` (torch/__init__.py,
``_import_device_backends``) and torch_npu declares one (its wheel's entry_points.txt). The stand-in
here is installed the same way: a ``torch_npu`` package whose import fails as the real one does
without CANN's libraries, and a ``torch_npu-2.13.0.dist-info`` declaring the entry point.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from lit_nanogpt.npu.runtime import INSTALL_HINT
from tests.helpers import ROOT, TINY, run_python

NPU_CONFIG = ROOT / "configs" / "shakespeare_char_npu.yaml"
CPU_CONFIG = ROOT / "configs" / "shakespeare_char_cpu.yaml"
CANN_MISSING = "libascendcl.so: cannot open shared object file: No such file or directory"


def host_with_torch_npu(site: Path, version: str) -> dict[str, str]:
    """The environment of a process on a host with this stand-in installed, auto-loading as torch ships it."""
    (site / "torch_npu").mkdir(parents=True)
    (site / "torch_npu" / "__init__.py").write_text(f"raise ImportError({CANN_MISSING!r})\n")
    dist = site / f"torch_npu-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch_npu\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def broken_host(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """torch_npu 2.13.0 (torch's own version here) installed, CANN's set_env.sh not sourced."""
    return host_with_torch_npu(tmp_path_factory.mktemp("site"), "2.13.0")


def lit_nanogpt_command(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lit-nanogpt ARGS`` exactly as the installed console script runs it (pyproject.toml's entry point)."""
    (entry,) = re.findall(r'^lit-nanogpt = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    module, function = entry.split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    return run_python("-c", code, *args, cwd=cwd, env=env, inherit_env=False)


@pytest.mark.slow  # a real process
def test_the_stand_in_breaks_import_torch_as_torch_npu_does(broken_host: dict[str, str], tmp_path: Path) -> None:
    proc = run_python("-c", "import torch", env=broken_host, inherit_env=False)
    assert proc.returncode != 0
    assert "Failed to load the backend extension: torch_npu" in proc.stderr and CANN_MISSING in proc.stderr


@pytest.mark.slow  # a real process
def test_generate_on_cpu_works(broken_host: dict[str, str], baby_ckpt: Path, tmp_path: Path) -> None:
    proc = lit_nanogpt_command("generate", f"--checkpoint={baby_ckpt}", "--prompt=ROMEO:", "--max_new_tokens=20",
                               env=broken_host, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ROMEO:") and "tokens/s" in proc.stderr


@pytest.mark.slow  # a real process
def test_tiny_fit_on_cpu_works(broken_host: dict[str, str], tmp_path: Path) -> None:
    args = ["fit", f"--config={CPU_CONFIG}", *(f"--model.arch.{k}={v}" for k, v in TINY.items())]
    args += ["--trainer.max_steps=3", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.callbacks=[]",
             f"--data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    proc = lit_nanogpt_command(*args, env=broken_host, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=3` reached." in proc.stderr
    assert "torch_npu" not in proc.stderr  # a CPU run does not even try it


@pytest.mark.slow  # a real process
def test_asking_for_the_npu_is_one_line_and_exit_1(broken_host: dict[str, str], tmp_path: Path) -> None:
    proc = lit_nanogpt_command("fit", f"--config={NPU_CONFIG}", "--trainer.accelerator=npu", env=broken_host,
                               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lit-nanogpt: error:")]
    assert len(errors) == 1, proc.stderr
    assert "torch_npu fails to import" in errors[0] and CANN_MISSING in errors[0] and "set_env.sh" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # a real process
def test_torch_npu_for_another_torch_is_named_before_it_is_imported(tmp_path: Path) -> None:
    """torch_npu 2.9.0 next to torch 2.13: named with both versions; importing it would crash or worse."""
    env = host_with_torch_npu(tmp_path / "site", "2.9.0.post9")
    code = "from lit_nanogpt.npu.runtime import missing_npu_message; print(missing_npu_message())"
    proc = run_python("-c", code, env={**env, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}, inherit_env=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = proc.stdout.strip()
    assert f"torch_npu 2.9.0.post9 is made for torch 2.9.0, but torch is {torch.__version__}" in message
    assert CANN_MISSING not in message  # the mismatched package was never imported


def test_npu_extra_pins_the_pair_the_error_names() -> None:
    """torch_npu X.Y.Z requires torch X.Y.Z (its wheel's Requires-Dist): the extra pins both; the hint names them."""
    (extra,) = re.findall(r"^npu = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    pins = dict(re.findall(r'"(torch|torch_npu)==([^"]+)"', extra))
    assert pins == {"torch": "2.13.0", "torch_npu": "2.13.0"}
    assert f"`pip install 'lit-nanogpt[npu]'` for torch {pins['torch']}" in INSTALL_HINT
