"""Train, export and serve nanoGPT with PyTorch Lightning on CPU, GPU and Ascend NPU.

The names below are imported on first use, so that importing this package does not import torch:
the ``lit-nanogpt`` command (``lit_nanogpt/__main__.py``) must configure torch's backend
auto-loading before torch is first imported. Taking any of them also registers the ``"npu"``
accelerator and strategies with Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_nanogpt.data import CharDataModule
    from lit_nanogpt.model import GPT, GPTConfig
    from lit_nanogpt.module import LitGPT
    from lit_nanogpt.text import Vocabulary

__all__ = ["GPT", "CharDataModule", "GPTConfig", "LitGPT", "Vocabulary"]
__version__ = "0.1.0"

_HOMES = {
    "CharDataModule": "lit_nanogpt.data",
    "Vocabulary": "lit_nanogpt.text",
    "GPT": "lit_nanogpt.model",
    "GPTConfig": "lit_nanogpt.model",
    "LitGPT": "lit_nanogpt.module",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lit_nanogpt' has no attribute {name!r}")
    importlib.import_module("lit_nanogpt.npu")  # registers the "npu" accelerator and strategies
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
