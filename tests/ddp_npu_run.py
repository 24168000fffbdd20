"""Two processes through ``DDPNPUStrategy``: ``python tests/ddp_npu_run.py OUT [cpu|npu] [NUM_NODES]``.

``cpu`` (the default): two CPU processes over gloo; ``npu``: two NPUs over hccl, in fp16 AMP on them.

With ``NUM_NODES`` 1 (the default) Lightning relaunches this script for rank 1. With 2 it is one
process of each of two nodes, started by ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank R``
(``trainer.num_nodes=2``, ``devices=1``), as a multi-machine run is. Rank 0 writes ``OUT/params.pt``:
the flat parameters of both ranks after training and the initial ones, and ``OUT/model.ckpt``
through the strategy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests.helpers
from lit_nanogpt import CharDataModule, GPTConfig, LitGPT  # noqa: E402
from lit_nanogpt.npu import DDPNPUStrategy, NPUAccelerator, NPUPrecision  # noqa: E402
from tests.helpers import TINY  # noqa: E402


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in module.parameters()])


class Wrapping(L.Callback):
    """How the strategy wrapped the model (DDPNPUStrategy._setup_model), seen once training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen = {"wrapper": type(trainer.strategy.model).__name__,
                     "device_ids": getattr(trainer.strategy.model, "device_ids", None),
                     "root_device": str(trainer.strategy.root_device),
                     "param_device": str(next(pl_module.parameters()).device)}  # fmt: skip


def main(out: Path, device: str = "cpu", num_nodes: int = 1) -> None:
    L.seed_everything(1337)
    model = LitGPT(GPTConfig(**TINY, vocab_size=65), learning_rate=1e-2, warmup_iters=0, lr_decay_iters=4)
    initial = flat(model)
    data = CharDataModule(block_size=TINY["block_size"], batch_size=8, cache_dir=str(out / "cache"))
    trainer = L.Trainer(
        accelerator=NPUAccelerator() if device == "npu" else "cpu",
        devices=2 // num_nodes,
        num_nodes=num_nodes,
        strategy=DDPNPUStrategy(process_group_backend="hccl" if device == "npu" else "gloo"),
        plugins=[NPUPrecision("16-mixed", device=device, init_scale=1024.0)],
        max_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[wrapping := Wrapping()],
    )
    trainer.fit(model, data)
    scale = trainer.precision_plugin.scaler.get_scale()
    gathered = trainer.strategy.all_gather(flat(model).to(trainer.strategy.root_device)).cpu()  # (world_size, n_params)
    node_ranks = trainer.strategy.all_gather(torch.tensor(trainer.node_rank, device=trainer.strategy.root_device))
    trainer.save_checkpoint(out / "model.ckpt")
    val_loss = None
    if num_nodes == 1:  # the two-node run is compared with this one's weights; its metrics are the same code
        # The whole validation split, each rank taking its own windows: the token-weighted mean must be exact.
        trainer.limit_val_batches = 1.0
        trainer.strategy.precision_plugin = NPUPrecision("32-true", device=device)  # compare with an fp32 reference
        val_loss = trainer.validate(model, datamodule=data, verbose=False)[0]["val_loss"]
    if trainer.is_global_zero:
        torch.save({"ranks": gathered, "initial": initial, "world_size": trainer.world_size,
                    "num_nodes": trainer.num_nodes, "node_ranks": node_ranks.cpu().tolist(),
                    "environment": type(trainer.strategy.cluster_environment).__name__,
                    "backend": trainer.strategy.process_group_backend, "val_loss": val_loss,
                    "scale": scale, **wrapping.seen},
                   out / "params.pt")  # fmt: skip
    # Leave no gloo/hccl threads for interpreter shutdown to trip over ("terminate called ...").
    trainer.strategy.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3], *map(int, sys.argv[3:4]))
