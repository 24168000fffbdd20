"""Train, export and serve nanoGPT with PyTorch Lightning on CPU, GPU and Ascend NPU."""

from lit_nanogpt.data import CharDataModule, Vocabulary
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.module import LitGPT
from lit_nanogpt.npu import NPUAccelerator  # noqa: F401  registers the "npu" accelerator and strategies

__all__ = ["GPT", "CharDataModule", "GPTConfig", "LitGPT", "Vocabulary"]
__version__ = "0.1.0"
