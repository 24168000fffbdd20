"""Muon for the hidden matrices and AdamW for the rest, in one optimizer, and the learning-rate schedules.

Muon (Keller Jordan, 2024: "Muon: an optimizer for hidden layers in neural networks") takes SGD's
momentum update of a 2-D weight and replaces it by the nearest semi-orthogonal matrix, found by a few
Newton-Schulz iterations; speed-run work on nanoGPT found it trains the transformer blocks' matrices in
markedly fewer steps than AdamW. Embeddings, the output head and the 1-D parameters stay with AdamW.

``torch.optim.Muon`` (torch >= 2.9) runs its Newton-Schulz step in bfloat16, which CPUs without bf16
matmul units do slowly and inexactly; here it runs in float32. One optimizer (two kinds of parameter
group) keeps Lightning's automatic optimization, gradient clipping and one LR scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# The quintic Newton-Schulz coefficients of the Muon write-up: they push every singular value of the
# normalised matrix towards 1 within a handful of iterations, without needing them exactly at 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U @ V.T`` of ``g = U S V.T`` (rows, cols), or of each matrix of a stack (..., rows, cols),
    in float32, by ``steps`` Newton-Schulz iterations."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: X @ X.T is then the smaller square
        x = x.mT
    # Each matrix by its own Frobenius norm: spectral norm <= Frobenius norm <= 1, where the iteration converges.
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])  # one stack (n, r, c): baddbmm folds the scalings and sums into the products
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)  # (n, r, r)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram @ gram
        x = torch.baddbmm(x, poly, x, beta=a)  # a * x + poly @ x
    x = x.reshape(shape)
    return x.mT if tall else x


def orthogonalize_all(blocks: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """``orthogonalize`` of each block, the blocks of one shape (a matrix and its transpose alike) as one stack.

    A step of the 10.65M model orthogonalises 36 blocks of two shapes; one at a time, that is about 1,600
    small kernels, which on a GPU cost more than the forward and backward passes.
    """
    out: list[torch.Tensor | None] = [None] * len(blocks)
    by_shape: dict[tuple[torch.Size, torch.device], list[int]] = {}
    for i, block in enumerate(blocks):
        shape = block.shape if block.size(0) <= block.size(1) else block.T.shape
        by_shape.setdefault((shape, block.device), []).append(i)
    for indices in by_shape.values():
        stack = [blocks[i] if blocks[i].size(0) <= blocks[i].size(1) else blocks[i].T for i in indices]
        for i, o in zip(indices, orthogonalize(torch.stack(stack), steps).unbind(), strict=True):
            out[i] = o if blocks[i].size(0) <= blocks[i].size(1) else o.T
    return out  # type: ignore[return-value]


class MuonAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        muon_params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        adamw_params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        ns_steps: int = 5,
        adamw_lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
    ) -> None:
        """Muon on ``muon_params`` (2-D), AdamW on the groups of ``adamw_params``.

        A Muon group may set ``split``: the matrix is then orthogonalised as that many equal blocks of
        rows, e.g. 3 for a fused query/key/value projection, so each projection is treated as its own
        matrix. Each Muon update is scaled by ``sqrt(max(1, rows / cols))`` of its block, so tall and
        wide matrices move alike. Weight decay, when a group sets it, is decoupled (AdamW's).

        Args:
            muon_params: The hidden 2-D weights, or groups of them (dicts with ``params`` and options).
            adamw_params: Groups (dicts with ``params``, optionally ``weight_decay``) for AdamW.
            lr: Muon's learning rate.
            momentum: Muon's (Nesterov) momentum.
            ns_steps: Newton-Schulz iterations per update.
            adamw_lr: AdamW's learning rate.
            betas: AdamW's betas.
            eps: AdamW's epsilon.
        """
        muon: list[Any] = list(muon_params)
        if muon and not isinstance(muon[0], dict):
            muon = [{"params": muon}]
        groups: list[dict[str, Any]] = [{"use_muon": True, "lr": lr, "split": 1, **g} for g in muon]
        groups += [{"use_muon": False, "lr": adamw_lr, **g} for g in adamw_params]
        for group in groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon takes 2-D weights only: give embeddings, the head and 1-D parameters to AdamW")
        super().__init__(groups, dict(momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps, weight_decay=0.0))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon([group for group in self.param_groups if group["use_muon"]])
        for group in self.param_groups:
            if not group["use_muon"]:
                self._adamw(group)
        return loss

    def _muon(self, groups: list[dict[str, Any]]) -> None:
        """Nesterov momentum per group, then every group's blocks orthogonalised together, then the steps."""
        steps: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]] = []
        for group in groups:
            params: list[torch.Tensor] = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            grads = [g for p in params if (g := p.grad) is not None]  # every one: params has only those
            torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
            updates = list(torch._foreach_lerp(grads, buffers, group["momentum"]))  # Nesterov
            steps.append((group, params, updates))
        by_steps: dict[int, list[torch.Tensor]] = {}
        for group, _, updates in steps:
            by_steps.setdefault(group["ns_steps"], []).extend(b for u in updates for b in u.chunk(group["split"]))
        done = {n: iter(orthogonalize_all(blocks, n)) for n, blocks in by_steps.items()}
        for group, params, _ in steps:
            split, ortho = group["split"], done[group["ns_steps"]]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for p in params:
                blocks = [next(ortho) for _ in range(split)]
                rows, cols = blocks[0].shape
                update = (torch.cat(blocks) if split > 1 else blocks[0]).to(p.dtype)
                p.add_(update, alpha=-group["lr"] * math.sqrt(max(1.0, rows / cols)))

    def _adamw(self, group: dict[str, Any]) -> None:
        """AdamW's update (torch's, decoupled weight decay), each operation over the whole group at once."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_div(exp_avg_sqs, [1 - beta2 ** s["step"] for s in states])
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, group["eps"])
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, [-group["lr"] / (1 - beta1 ** s["step"]) for s in states])


def nanogpt_lr(step: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's schedule: linear warmup, then cosine decay to ``min_lr`` at ``lr_decay_iters``."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if step > lr_decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


def wsd_lr(
    step: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int, cooldown: float
) -> float:
    """Warmup-stable-decay: nanoGPT's linear warmup, the peak rate held, then a linear decay to ``min_lr`` over
    the last ``cooldown`` fraction of ``lr_decay_iters`` (speed-run work found a long linear cooldown beats cosine)."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if step >= lr_decay_iters:
        return min_lr
    decay_start = max(warmup_iters, lr_decay_iters - round(cooldown * lr_decay_iters))
    if step < decay_start:
        return learning_rate
    ratio = (step - decay_start) / max(1, lr_decay_iters - decay_start)  # 0 -> 1
    return learning_rate + ratio * (min_lr - learning_rate)
