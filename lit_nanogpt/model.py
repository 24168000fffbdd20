"""nanoGPT's transformer as a plain ``nn.Module``.

The architecture and the parameter names follow nanoGPT's ``model.py`` so that a nanoGPT state dict
loads with a plain ``load_state_dict``: pre-norm blocks, causal self-attention, a 4x GELU MLP,
learned position embeddings and an output head tied to the token embedding.

Two paths run the same weights:

* ``forward`` is the training path. It uses fused ``scaled_dot_product_attention`` with
  ``is_causal=True``.
* ``forward_cached`` is the generation path. It takes the keys and values of earlier positions and
  returns them extended, so that decoding a token costs one position, not the whole context. Its
  causal mask is a slice of a precomputed boolean buffer, so it exports to ONNX without ``Trilu``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# One (key, value) pair per layer, each (B, n_head, T_past, head_size).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GPTConfig:
    """The one definition of the network's shape: a checkpoint, the CLI's ``--model.arch.*`` and an
    export's manifest all take their fields from here. The defaults are nanoGPT's (GPT-2 small).

    Attributes:
        block_size: Longest context the model attends to (and the size of the position table).
        vocab_size: Number of token ids.
        n_layer: Number of transformer blocks.
        n_head: Attention heads per block; must divide ``n_embd``.
        n_embd: Width of the residual stream.
        dropout: Dropout probability on attention weights and residual branches (training only).
        bias: Biases in Linear layers and LayerNorms, as GPT-2 has; ``False`` is a little better and faster.
    """

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: pick n_embd a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


# nanoGPT's Shakespeare-char model (config/train_shakespeare_char.py): 10.65M parameters.
SHAKESPEARE_CHAR = GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no ``bias=False`` before 2.1 in all paths)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key and value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, hs = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hs)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        return self._merge(y)

    def forward_cached(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor,
        slot: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend from the new positions in ``x`` to ``past`` and themselves; ``mask`` is (T, T_past + T).

        With ``slot`` (1, 1, S, 1) bool, ``past`` is a fixed-size cache of S positions and the one new
        key and value are written where ``slot`` is true instead of appended (``mask`` is then (1, S)).
        """
        q, k, v = self._qkv(x)
        if past is not None and slot is not None:
            k = torch.where(slot, k, past[0])  # (B, nh, S, hs)
            v = torch.where(slot, v, past[1])
        elif past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, nh, T_past + T, hs)
            v = torch.cat((past[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._merge(y), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor,
        slot: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn.forward_cached(self.ln_1(x), past, mask, slot)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output head reuses the token embedding (nanoGPT, GPT-2).
        self.transformer.wte.weight = self.lm_head.weight
        # Not persistent: nanoGPT's state dict has no such buffer and must load as it is.
        causal = torch.ones(config.block_size, config.block_size, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal, persistent=False)

        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count as nanoGPT reports it: tied weights once, position embeddings left out."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, forward and backward, at context ``seq_len``: nanoGPT's ``estimate_mfu``.

        6 per parameter (PaLM appendix B) plus attention's 12 per layer, head, head dimension and
        position attended to; the causal mask is not discounted.
        """
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * seq_len

    def _check_length(self, t: int) -> None:
        if t > self.config.block_size:
            raise ValueError(
                f"sequence of length {t} is longer than block_size={self.config.block_size}: "
                "crop it to the last block_size tokens"
            )

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position and the mean cross-entropy when ``targets`` are given.

        Without targets only the last position's logits are computed, as nanoGPT does for sampling.
        """
        _, t = idx.shape  # (B, T)
        self._check_length(t)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def forward_cached(self, idx: torch.Tensor, past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Logits for the new tokens ``idx`` (B, T) placed after ``past``, and the extended cache.

        Positions continue from the cache's length; the total may not exceed ``block_size``.
        """
        t = idx.shape[1]
        t_past = 0 if past is None else past[0][0].shape[2]
        self._check_length(t_past + t)
        pos = torch.arange(t_past, t_past + t, dtype=torch.long, device=idx.device)
        mask = self.causal_mask[t_past : t_past + t, : t_past + t]  # (T, T_past + T)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        present: KVCache = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block.forward_cached(x, None if past is None else past[i], mask)
            present.append(kv)
        return self.lm_head(self.transformer.ln_f(x)), present  # (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by ``max_new_tokens`` tokens, nanoGPT's way; ``on_token`` gets each new
        token (B, 1) as soon as it is drawn, to show the text as it grows.

        Each token is conditioned on the last ``block_size`` tokens; logits are divided by
        ``temperature``, cut to the ``top_k`` largest, softmaxed and sampled. ``temperature=0``
        means greedy decoding (argmax), as does ``top_k=1``.

        With ``use_cache`` the keys and values of the context are kept, so a token costs one position
        while the sequence fits in ``block_size``. Past that the window slides and every position
        shifts, so exactness forces a full forward of the window per token, as nanoGPT does.
        """
        block_size = self.config.block_size
        past: KVCache | None = None
        for _ in range(max_new_tokens):
            if use_cache and idx.shape[1] <= block_size:
                new = idx if past is None else idx[:, -1:]
                logits, past = self.forward_cached(new, past)
            else:
                logits, _ = self(idx[:, -block_size:])
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, generator)
            if on_token is not None:
                on_token(idx_next)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick the next token (B, 1) from last-position logits (B, V): temperature, then top-k, then sampling."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
