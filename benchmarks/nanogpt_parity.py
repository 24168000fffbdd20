"""Train nanoGPT's CPU recipe with lit-nanogpt's model, optimizer and schedule, drawing batches in the
order nanoGPT's ``train.py`` draws them, and compare with the checkpoint nanoGPT itself wrote.

nanoGPT seeds 1337, builds the model, fetches the first batch, then at every eval interval draws
``eval_iters`` (20) batches of each split from the same global RNG before the step. Replaying that
order shows whether the remaining gap to nanoGPT's result is the model and optimizer or just the
random windows:

    python benchmarks/nanogpt_parity.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from bench_overhead import CPU_ARCH, CPU_RECIPE, full_val_loss

from lit_nanogpt.data import CharDataModule
from lit_nanogpt.module import LitGPT

NANOGPT_CKPT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nanogpt_baby" / "ckpt.pt"

BATCH, EVAL_INTERVAL, EVAL_ITERS, MAX_ITERS = 12, 250, 20, 2000


def main() -> None:
    dm = CharDataModule(block_size=CPU_ARCH.block_size, batch_size=BATCH)
    dm.setup("fit")
    offsets = torch.arange(CPU_ARCH.block_size + 1)

    def get_batch(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # nanoGPT's, from the global RNG
        ix = torch.randint(len(data) - CPU_ARCH.block_size, (BATCH,))
        chunk = data[ix[:, None] + offsets]  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    torch.manual_seed(1337)
    module = LitGPT(**CPU_RECIPE)
    model = module.model.train()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    x, y = get_batch(dm.train_data)
    start = time.perf_counter()
    for it in range(MAX_ITERS + 1):
        if it % EVAL_INTERVAL == 0:
            for split in (dm.train_data, dm.val_data):  # nanoGPT's estimate_loss draws
                for _ in range(EVAL_ITERS):
                    get_batch(split)
            if it:
                print(f"step {it}: full val_loss {full_val_loss(model, dm):.5f}", flush=True)
        if it == MAX_ITERS:  # nanoGPT's checkpoint is saved at this evaluation
            break
        _, loss = model(x, y)
        x, y = get_batch(dm.train_data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    print(f"{time.perf_counter() - start:.1f} s")
    theirs = torch.load(NANOGPT_CKPT, map_location="cpu", weights_only=True)["model"]
    ours = model.state_dict()
    worst = max((ours[k] - v).abs().max().item() for k, v in theirs.items())
    print(f"largest difference from nanoGPT's own checkpoint weights: {worst:.3g}")


if __name__ == "__main__":
    main()
