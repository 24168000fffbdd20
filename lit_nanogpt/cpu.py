"""What a CPU run can use: AMX-BF16 detection, and the precision ``--amx_precision`` gives a run (no Lightning).

Intel's AMX tiles (Xeon 4th generation, Sapphire Rapids, and later) multiply bf16 matrices several times faster
than AVX-512 does fp32, and torch's oneDNN kernels use them under bf16 autocast. Measured on a 2-core Xeon with
AMX (issue 19): the 10.65M model's training step at batch 16 took 1,330 ms in fp32 and 565 ms under bf16
autocast (2.3x); the 0.8M model of nanoGPT's CPU recipe was slower in bf16 (45 ms against 36), its matrices
being too small for the tiles to pay for the casts. Without AMX, bf16 autocast on a CPU runs on AVX-512 or AVX2
emulation and gains little or loses: hence bf16 only where the tiles are.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16.

    torch's own reading (``torch.cpu.get_capabilities()``, from the cpuinfo library that oneDNN's choice of
    kernels follows too) where torch has it; else the ``amx_bf16`` flag of ``/proc/cpuinfo``, which Linux lists
    only when it supports the AMX state; False where neither can tell.
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return bool(capabilities().get("amx_bf16", False))
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def amx_choice(configured: str, amx_precision: str, on_cpu: bool) -> tuple[str, str]:
    """The precision a run that sets ``--amx_precision`` trains in, and the one line that says why.

    Args:
        configured: The precision the Trainer was given (``--trainer.precision``), e.g. ``32-true``.
        amx_precision: The precision asked for where the CPU has AMX-BF16, e.g. ``bf16-mixed``.
        on_cpu: Whether the run's accelerator is the CPU (the option means nothing on a GPU or an NPU).
    """
    if not on_cpu:
        return configured, f"--amx_precision {amx_precision} applies to CPU runs only: training in {configured}"
    if amx_bf16():
        return amx_precision, (
            f"this CPU has AMX-BF16: training in {amx_precision} (--amx_precision) instead of {configured}"
        )
    return configured, (
        f"this CPU has no AMX-BF16: training in {configured} (--amx_precision {amx_precision} applies only where "
        "it has)"
    )
