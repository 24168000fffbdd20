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
    """Approximately ``U @ V.T`` of ``g = U S V.T`` (rows, cols), in float32, by ``steps`` Newton-Schulz iterations."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: X @ X.T is then the smaller square
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T  # (r, r)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


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
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            update = p.grad.lerp(buf, group["momentum"])  # Nesterov
            blocks = update.chunk(group["split"], dim=0)
            rows, cols = blocks[0].shape
            update = torch.cat([orthogonalize(b, group["ns_steps"]) for b in blocks]).to(p.dtype)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"] * math.sqrt(max(1.0, rows / cols)))

    def _adamw(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            bias1 = 1 - beta1 ** state["step"]
            bias2 = 1 - beta2 ** state["step"]
            denom = (exp_avg_sq / bias2).sqrt_().add_(group["eps"])
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias1)


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
