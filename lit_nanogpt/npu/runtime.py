"""The one place that imports ``torch_npu``: lazily, and never letting an error escape ``npu_available``."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from types import ModuleType

import torch

VISIBLE_DEVICES_ENV = "ASCEND_RT_VISIBLE_DEVICES"
INSTALL_HINT = (
    "install the torch_npu made for your torch (`pip install 'lit-nanogpt[npu]'` for torch 2.13.0, "
    "other pairs in docs/npu.md) and run CANN's set_env.sh "
    "(`source /usr/local/Ascend/ascend-toolkit/set_env.sh`) in the same shell"
)


def _release(version: str) -> str | None:
    """``"2.9.0"`` from ``"2.9.0.post9"``, ``"2.12.0rc1"`` or ``"2.9.0+cpu"``."""
    match = re.match(r"\d+\.\d+\.\d+", version)
    return match.group() if match else None


def _version_mismatch() -> str | None:
    """torch_npu X.Y.Z(.postN, rcN) works with torch X.Y.Z only (its wheel requires ``torch==X.Y.Z.*``).

    Checked from the installed metadata before importing it: a torch_npu built for another torch
    fails to import with an undefined symbol, or worse.
    """
    if "torch_npu" in sys.modules:
        return None
    try:
        npu_version = importlib.metadata.version("torch_npu")
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted, have = _release(npu_version), _release(torch.__version__)
    if wanted and have and wanted != have:
        return (
            f"torch_npu {npu_version} is made for torch {wanted}, but torch is {torch.__version__} "
            "(pick a matching pair from docs/npu.md)"
        )
    return None


def _visible_devices_problem() -> str | None:
    """What is wrong with ``ASCEND_RT_VISIBLE_DEVICES``, if anything.

    torch_npu counts no NPU at all when the list is not ascending (torch_npu 2.13.0,
    npu/__init__.py:476-478, "`rts` need ascending order").
    """
    visible = os.environ.get(VISIBLE_DEVICES_ENV)
    if not visible:
        return None
    ids = [d.strip() for d in visible.split(",")]
    if not all(d.isdigit() for d in ids) or any(int(a) >= int(b) for a, b in zip(ids, ids[1:], strict=False)):
        return f"{VISIBLE_DEVICES_ENV}={visible} must list NPU numbers in ascending order, e.g. 0,1,2,3"
    return None


def _missing_reason() -> str | None:
    """Why no NPU can be used, or ``None`` when one can.

    Importing ``torch_npu`` registers ``torch.npu``; after that only ``torch.npu.is_available()``
    and ``torch.npu.device_count()`` decide. A failed import is retried on the next call (it is
    cheap when the package is absent), so a ``torch_npu`` that appears later is still found.
    """
    if mismatch := _version_mismatch():
        return mismatch
    try:
        importlib.import_module("torch_npu")
    except ModuleNotFoundError as e:
        if e.name == "torch_npu":
            return "the torch_npu package is not installed"
        return f"torch_npu fails to import (it needs the module {e.name!r}, which is missing)"
    except Exception as e:  # a torch_npu without CANN's libraries fails with OSError, RuntimeError, ...
        return f"torch_npu fails to import ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if problem := _visible_devices_problem():
        return problem
    try:
        npu = getattr(torch, "npu", None)
        if npu is None:
            return "torch_npu did not register torch.npu"
        if not npu.is_available():
            return "torch.npu.is_available() is False (no NPU, or CANN's set_env.sh was not sourced)"
        if npu.device_count() < 1:
            return "torch.npu.device_count() is 0"
    except Exception as e:
        return f"torch.npu cannot be queried ({type(e).__name__}: {e})"
    return None


def npu_available() -> bool:
    """Whether ``torch_npu`` imports and ``torch.npu`` sees at least one device; never raises."""
    try:
        return _missing_reason() is None
    except Exception:
        return False


def missing_npu_message(what: str = "accelerator='npu'") -> str:
    """One line naming what is missing and how to get it."""
    reason = _missing_reason() or "none is usable"
    hint = "" if reason.startswith(VISIBLE_DEVICES_ENV) else f": {INSTALL_HINT}"
    return f"{what} needs an Ascend NPU, but {reason}{hint}"


def npu_module(what: str = "accelerator='npu'") -> ModuleType:
    """``torch.npu``, importing torch_npu first; a ``ValueError`` naming ``what`` and what is missing otherwise."""
    if not npu_available():
        raise ValueError(missing_npu_message(what))
    return torch.npu  # type: ignore[attr-defined]  # registered by torch_npu


def visible_device_count() -> int:
    """NPUs this process may use: ``torch.npu.device_count()``, within ``ASCEND_RT_VISIBLE_DEVICES``.

    CANN's runtime already hides the devices that variable leaves out; the cap keeps the count right
    where a runtime (or a test's stand-in) does not.
    """
    if not npu_available():
        return 0
    count = torch.npu.device_count()  # type: ignore[attr-defined]
    visible = os.environ.get(VISIBLE_DEVICES_ENV)
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count
