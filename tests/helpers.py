"""What the tests share: paths, the tiny model, the hardware gate and one way to run a process.

Fixtures live in conftest.py; everything a test imports comes from here (``from tests.helpers import ...``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
NANOGPT_BABY = FIXTURES / "nanogpt_baby"
SHARED = ROOT.parent / "shared"  # the read-only data and reference code beside the project
GPT2_RANKS = SHARED / "data" / "gpt2.tiktoken"  # GPT-2's BPE ranks as tiktoken downloads them (r50k_base)

# A tiny model for unit tests: fast on 2 CPU cores, big enough to learn a little.
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0, "bias": False}
# GPTConfig's speed-run options (issue 11), each alone and all together.
ARCH_OPTIONS = {
    "rotary": {"rotary": True},
    "qk_norm": {"qk_norm": True},
    "relu2": {"mlp_activation": "relu2"},
    "untied": {"tie_weights": False},
    "all": {"rotary": True, "qk_norm": True, "mlp_activation": "relu2", "tie_weights": False},
}


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
        cls,
        npu: bool = False,
        cuda: bool = False,
        without_torch_npu: bool = False,
        min_npus: int = 0,
        ais_bench: bool = False,
        cann_provider: bool = False,
        without_cuda: bool = False,
    ) -> pytest.MarkDecorator:
        reasons = []
        if without_cuda and torch.cuda.is_available():
            reasons.append("needs a machine without CUDA")
        if ais_bench:
            from lit_nanogpt.export.ascend import ais_bench_available

            if not ais_bench_available():
                reasons.append("needs ais_bench and an Ascend NPU with CANN")
        if cann_provider:
            import onnxruntime as ort

            if "CANNExecutionProvider" not in ort.get_available_providers():
                reasons.append("needs onnxruntime with the CANN execution provider and an Ascend NPU")
        if min_npus:
            from lit_nanogpt.npu import NPUAccelerator

            if NPUAccelerator.auto_device_count() < min_npus:
                reasons.append(f"needs {min_npus} Ascend NPUs with torch_npu and CANN")
        if cuda and not torch.cuda.is_available():
            reasons.append("needs a CUDA GPU")
        if without_torch_npu and torch_npu_installed():
            reasons.append("checks a host without torch_npu, and this one has it")
        if npu:
            from lit_nanogpt.npu import npu_available  # noqa: PLC0415 (only once that subpackage exists)

            if not npu_available():
                reasons.append("needs an Ascend NPU with torch_npu and CANN")
        return pytest.mark.skipif(bool(reasons), reason=" and ".join(reasons))


def export_baby(folder: Path, int8: bool) -> tuple[Path, Path]:
    """nanoGPT's baby checkpoint imported into ``folder``, and its ONNX export (no atc): (checkpoint, export folder)."""
    from lit_nanogpt.checkpoint import import_nanogpt, load_model
    from lit_nanogpt.export import ExportSettings, export_model

    ckpt = import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", folder / "baby.ckpt")
    model, vocab = load_model(ckpt)
    export_model(model, vocab, folder / "export", ExportSettings(int8=int8, atc=None), source=str(ckpt))
    return ckpt, folder / "export"


def run(
    args: Sequence[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    inherit_env: bool = True,
    **kwargs,
) -> subprocess.CompletedProcess[str]:
    """The one way tests run a process to its end: ``args`` with this environment plus ``env`` (only ``env``
    with ``inherit_env=False``), output captured as text. Tests that talk to a live process (signals,
    streamed output) use ``subprocess.Popen`` themselves."""
    full_env = {**(os.environ if inherit_env else {}), **(env or {}), "PYTHONUNBUFFERED": "1"}
    kwargs.setdefault("capture_output", True)
    return subprocess.run(list(args), cwd=cwd, env=full_env, text=True, timeout=timeout, **kwargs)


def run_python(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this interpreter (``run_python("-c", code)``, a script, ``-m pip ...``)."""
    return run([sys.executable, *args], **kwargs)


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300):
    """Run ``lit-nanogpt ARGS`` in a fresh interpreter through the command's own entry point; returns the result."""
    return run_python("-m", "lit_nanogpt", *args, cwd=cwd, env=env, timeout=timeout)


def cli(capfd: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess[str]:
    """``lit-nanogpt ARGS`` in this process (the command table's ``main``), its output read from the file descriptors:
    for what a command does with a checkpoint, where a new interpreter would prove nothing more."""
    from lit_nanogpt.commands import main

    capfd.readouterr()  # what came before is not this command's
    code = main(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["lit-nanogpt", *args], code, out, err)


def run_without_torch_npu(code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh interpreter that cannot import torch_npu: a machine without it, on any host.

    Auto-loading is off too, or torch itself would try to import the blocked package and fail.
    """
    env = {"PYTHONPATH": str(ROOT), "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    return run_python("-c", "import sys; sys.modules['torch_npu'] = None\n" + code, env=env, timeout=timeout)


def error_of(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the CLI in-process; assert it failed with exactly one line, and return that line."""
    from lit_nanogpt.commands import main

    assert main(list(args)) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lit-nanogpt: error:")]
    assert len(lines) == 1
    return lines[0]


def extend(
    source: Any,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    window: str = "exact",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``idx`` (B, T) extended by ``max_new_tokens`` through the one decoding loop; ``source`` is a ``GPT``
    (run by a ``TorchBackend`` of B rows) or a backend (an ``ExportedGPT``)."""
    from lit_nanogpt.decoding import Sampler, TorchBackend, generate
    from lit_nanogpt.model import GPT

    backend = TorchBackend(source, max_batch=len(idx)) if isinstance(source, GPT) else source
    sampler = Sampler(temperature, top_k, generator=generator)
    return torch.tensor(generate(backend, idx.tolist(), max_new_tokens, sampler, use_cache, window))
