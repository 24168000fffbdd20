"""``AtomicCheckpointIO``: Lightning's checkpoint plugin, saving all or nothing and loading data only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from lit_nanogpt.checkpoint import _refused
from lit_nanogpt.text import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, then ``os.replace``: all or nothing.

    Lightning's own save goes through fsspec, whose temporary file lives in the system temp folder;
    across filesystems its final move is a copy onto the old checkpoint, which a crash can truncate.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
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
            if refused := _refused("checkpoint", path, e):
                raise refused from None
            raise
