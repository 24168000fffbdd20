"""``AtomicCheckpointIO``: the one checkpoint plugin, for the CLI's trainers and the NPU strategies alike.

It saves all or nothing, with every tensor on the CPU, and loads data only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.types import _PATH

from lit_nanogpt.checkpoint import refused_unpickling
from lit_nanogpt.files import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, then ``os.replace``: all or nothing.

    Lightning's own save goes through fsspec, whose temporary file lives in the system temp folder;
    across filesystems its final move is a copy onto the old checkpoint, which a crash can truncate.
    Every tensor is moved to the CPU first: one saved on an NPU records its device, and loading it
    needs torch_npu even with ``map_location``'s help in some versions; CPU tensors load anywhere.
    Lightning calls this on global rank 0 only, so only rank 0 pays for the copy (a no-op on the CPU).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        checkpoint = move_data_to_device(checkpoint, torch.device("cpu"))
        with atomic_open(Path(path)) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Any = lambda storage, loc: storage,  # Lightning's default: every tensor on the CPU
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Lightning's load (``fit``/``validate``/``test``/``predict`` with ``--ckpt_path``), as data only.

        Lightning 2.6.6 hands ``weights_only`` down unchanged (trainer/connectors/checkpoint_connector.py:83,
        fabric/plugins/io/torch_io.py:91) and it is None unless ``--weights_only`` sets it. fabric's
        utilities/cloud_io.py:59-60 turns None into False for http(s) URLs, and torch 2.13's ``torch.load``
        turns None into False when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set (torch/serialization.py:1495-1504):
        any of these would unpickle whatever the file names. So True, whatever was asked.
        """
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except Exception as e:
            if refused := refused_unpickling("checkpoint", path, e):
                raise refused from None
            raise
