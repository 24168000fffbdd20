"""nanoGPT's transformer as a plain ``nn.Module``.

The architecture and the parameter names follow nanoGPT's ``model.py`` so that a nanoGPT state dict
loads with a plain ``load_state_dict``: pre-norm blocks, causal self-attention, a 4x GELU MLP,
learned position embeddings and an output head tied to the token embedding.

``GPTConfig`` also holds options that speed-run work on nanoGPT (modded-nanogpt) found to train
faster: rotary position embeddings, RMS-normalised queries and keys, a ReLU-squared MLP and an
untied, zero-initialised output head. Each is off by default, and off it changes nothing: the same
parameters, initial draws and state-dict keys as nanoGPT.

The same weights run three ways:

* ``forward`` is the training path. It uses fused ``scaled_dot_product_attention`` with
  ``is_causal=True``.
* ``forward_cached`` is the prefill path. It takes the keys and values of earlier positions and
  returns them extended. Its causal mask is a slice of a precomputed boolean buffer, so it exports to
  ONNX without ``Trilu``.
* ``decode_step`` is the decode path: one token per row, each row at its own position, so that
  decoding costs one position, not the whole context. ``decode_in_place`` is the same step on a cache
  updated in place (``lit_nanogpt.decoding`` drives them).

Decoding on a CPU, the projections multiply a few rows by each weight; ``Linear`` spreads that product over
torch's threads.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# One (key, value) pair per layer, each (B, n_head, T_past, head_size).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]
# The rotary angles' (cos, sin) at the positions of one call, each (T, head_size // 2), or (B, T, head_size // 2)
# when each row has its own positions.
Rope = tuple[torch.Tensor, torch.Tensor]
MLP_ACTIVATIONS = ("gelu", "relu2")
ROW_SPLIT_MIN_WEIGHTS = 1 << 17
"""Weights (elements) from which ``Linear`` splits a product of a few rows across threads: 512 KB in fp32. The
10.65M model decoded no slower with it than with the line at 1 MB (``bench_parts.py gemv --other-line 262144``)."""
ROW_SPLIT_MAX_ROWS = 16
"""The most rows (tokens in the call, all rows of a batch together) that ``Linear`` splits: as far as it was measured
to gain."""


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
        rotary: Rotary position embeddings (RoPE, base 10000) on each head's queries and keys instead of
            the learned position table, which the model then lacks (no ``transformer.wpe``).
        qk_norm: RMS-normalise each head's queries and keys (no learned gain) before attention.
        mlp_activation: The MLP's nonlinearity: ``"gelu"`` (GPT-2) or ``"relu2"`` (ReLU squared).
        tie_weights: The output head shares the token embedding's weights (GPT-2); ``False`` gives
            ``lm_head`` its own, initialised to zero so that training starts from uniform predictions.
    """

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    rotary: bool = False
    qk_norm: bool = False
    mlp_activation: str = "gelu"
    tie_weights: bool = True

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
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_activation={self.mlp_activation!r} is not one of {', '.join(MLP_ACTIVATIONS)}")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"rotary needs an even head size, not n_embd // n_head = {self.n_embd // self.n_head}: "
                "pick n_embd a multiple of 2 * n_head"
            )


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


def rotary_tables(block_size: int, head_size: int, base: float = 10000.0) -> Rope:
    """cos and sin of the rotary angles, each (block_size, head_size // 2): position times base^(-2i/head_size)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (block_size, hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate each pair (``x[..., i]``, ``x[..., i + hs/2]``) of ``x`` (B, nh, T, hs) by its position's angle.

    The halves layout (GPT-NeoX's, modded-nanogpt's) needs two slices and a concat, no interleaving
    reshape; a dot product of two rotated vectors depends only on their positions' difference.
    """
    cos, sin = (t.to(x.dtype) for t in rope)  # (T, hs/2): under autocast q and k are half precision
    if cos.dim() == 3:  # (B, T, hs/2): each row at its own positions (a batched decode step)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs/2)
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, nh, T, hs)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x`` divided by its root mean square over the last dimension.

    Written out rather than ``F.rms_norm``: torch's TorchScript exporter has no ONNX for
    ``aten::rms_norm`` at opset 15 (RMSNormalization is opset 23); this exports as Pow, ReduceMean,
    Add, Sqrt and Div, ops atc parses at opset 15 and 13.
    """
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


class Linear(nn.Linear):
    """``nn.Linear`` with a faster CPU path for a few rows against a large weight: a decode step.

    torch multiplies a few rows by a weight with MKL. For one row that is a matrix-vector product on one thread: on
    a 2-core AMD EPYC no faster with two threads, reading the 10.65M model's weights at about a third of what
    numpy's two threads read. Viewed as ``torch.get_num_threads()`` blocks of output rows, the same product runs
    as one ``bmm`` on every thread. There the 10.65M model decodes one row 1.33-1.37x as fast (with the same sums
    bit for bit there), 4 rows together 1.42x and 16 rows 1.09x (``python benchmarks/bench_parts.py gemv``). The
    view copies no weight; the parameters, their names and their initial draws are ``nn.Linear``'s. Training,
    autocast, tracing and export take ``nn.Linear``'s own path, and so does everything inside ``unsplit()``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            and not torch.jit.is_tracing()  # before numel(), which a trace would record
            and 0 < x.numel() <= ROW_SPLIT_MAX_ROWS * self.in_features
            and x.shape[-1] == self.in_features  # else F.linear's own error
            and self.weight.numel() >= ROW_SPLIT_MIN_WEIGHTS
        ):
            n = torch.get_num_threads()
            if n > 1 and self.out_features % n == 0 and _row_split_applies(x, self.weight):
                rows = x.numel() // self.in_features
                w = self.weight.view(n, self.out_features // n, self.in_features).transpose(1, 2)  # (n, in, out/n)
                x_n = x.reshape(1, rows, -1).expand(n, rows, -1)
                if self.bias is None:
                    y = torch.bmm(x_n, w)  # (n, rows, out/n)
                else:  # the bias first, then the sums added to it, as F.linear does
                    y = torch.baddbmm(self.bias.view(n, 1, -1), x_n, w)
                return y.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)  # a view for one row
        return F.linear(x, self.weight, self.bias)


@contextlib.contextmanager
def unsplit() -> Iterator[None]:
    """Every ``Linear`` computes as ``nn.Linear`` inside (process-wide): nanoGPT's products, as a reference."""
    global ROW_SPLIT_MIN_WEIGHTS
    split_from, ROW_SPLIT_MIN_WEIGHTS = ROW_SPLIT_MIN_WEIGHTS, 1 << 62
    try:
        yield
    finally:
        ROW_SPLIT_MIN_WEIGHTS = split_from


def _row_split_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.is_contiguous()  # for the view
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        # query, key and value projections for all heads, in one matmul
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm:  # bounds the attention logits, so a higher learning rate stays stable
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:  # the cache then holds rotated keys; rotation keeps the RMS, so the order is free
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, hs = y.shape
        y = self.c_proj(y.transpose(1, 2).contiguous().view(B, T, self.n_head * hs))  # (B, T, C)
        return self.resid_dropout(y) if self.training else y  # an eval-mode dropout is still a call and an op

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x, rope)
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
        rope: Rope | None = None,
        new_only: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend from the new positions in ``x`` to ``past`` and themselves; ``mask`` is (T, T_past + T),
        or (B, 1, T, T_past + T) per row. Returns the output and the keys and values, ``past`` extended
        (or, with ``new_only``, those of the new positions alone).

        With ``slot`` (B, 1, S, 1) bool, ``past`` is a fixed-size cache of S positions and the one new
        key and value are written where ``slot`` is true instead of appended (``mask`` is then (B, 1, 1, S)).
        ``rope`` holds the rotary angles of the new positions, not of the cache's.
        """
        q, k, v = self._qkv(x, rope)
        new = (k, v)
        if past is not None and slot is not None:
            k = torch.where(slot, k, past[0])  # (B, nh, S, hs)
            v = torch.where(slot, v, past[1])
        elif past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, nh, T_past + T, hs)
            v = torch.cat((past[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._merge(y), new if new_only else (k, v)

    def decode_in_place(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        written: torch.Tensor,
        at: torch.Tensor,
        mask: torch.Tensor,
        rope: Rope | None = None,
    ) -> torch.Tensor:
        """One new position per row of ``x`` (B, 1, C) against its cache ``keys``/``values`` (B, nh, S, hs), updated
        in place: the rows ``written`` (indices) get their new key and value at their positions ``at``; each row
        attends to the positions ``mask`` (B, 1, 1, seen) allows, its own and those before. Rows not written attend
        to stale entries: their output is not meant to be used."""
        q, k, v = self._qkv(x, rope)  # (B, nh, 1, hs)
        keys[written, :, at] = k[written, :, 0]
        values[written, :, at] = v[written, :, 0]
        seen = mask.shape[-1]
        y = F.scaled_dot_product_attention(q, keys[:, :, :seen], values[:, :, :seen], attn_mask=mask)
        return self._merge(y)


class ReLUSquared(nn.Module):
    """relu(x)^2, the MLP nonlinearity of modded-nanogpt (found by the Primer architecture search)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return r * r  # the values and gradients of .square(), whose backward is a general pow (BENCHMARKS.md)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU() if config.mlp_activation == "gelu" else ReLUSquared()
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj(self.act(self.c_fc(x)))  # (B, T, C)
        return self.dropout(y) if self.training else y


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor,
        slot: torch.Tensor | None = None,
        rope: Rope | None = None,
        new_only: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn.forward_cached(self.ln_1(x), past, mask, slot, rope, new_only)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present

    def decode_in_place(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        written: torch.Tensor,
        at: torch.Tensor,
        mask: torch.Tensor,
        rope: Rope | None = None,
    ) -> torch.Tensor:
        x = x + self.attn.decode_in_place(self.ln_1(x), keys, values, written, at, mask, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # Built in nanoGPT's order: each constructor draws its default init, which shifts every later draw.
        modules: dict[str, nn.Module] = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if not config.rotary:  # rotary positions live in attention: no table
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # Weight tying: the output head reuses the token embedding (nanoGPT, GPT-2).
            self.transformer.wte.weight = self.lm_head.weight
        # Not persistent: nanoGPT's state dict has no such buffer and must load as it is.
        causal = torch.ones(config.block_size, config.block_size, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal, persistent=False)
        if config.rotary:  # not persistent either: computed from the config, and checkpoints stay weights only
            cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if not config.tie_weights:  # modded-nanogpt's zero head: every logit starts at 0, the loss at ln(vocab_size)
            torch.nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count as nanoGPT reports it: tied weights once, lookup tables left out.

        The tables are the position embedding (none with ``rotary``) and, when the head is untied, the
        token embedding: tied, its weights are also the head's matmul, so nanoGPT counts them.
        """
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, forward and backward, at context ``seq_len``: nanoGPT's ``estimate_mfu``.

        6 per parameter (PaLM appendix B) plus attention's 12 per layer, head, head dimension and
        position attended to; the causal mask is not discounted. Elementwise work (norms, rotary,
        activations) is left out, as nanoGPT leaves out LayerNorm's.
        """
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * seq_len

    def _check_length(self, t: int) -> None:
        if t > self.config.block_size:
            raise ValueError(
                f"sequence of length {t} is longer than block_size={self.config.block_size}: "
                "crop it to the last block_size tokens"
            )

    def embed(self, idx: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, Rope | None]:
        """Embeddings (B, T, C) of ``idx`` (B, T) at positions ``pos`` (T,), or (B, T) for per-row positions,
        and the rotary angles there.

        Learned positions are added here; rotary ones are returned for attention to apply, taken from
        the table by ``pos`` (a Gather in ONNX), so a cache or a static graph's ``pos`` input places them.
        """
        if self.config.rotary:
            rope = (F.embedding(pos, self.rope_cos), F.embedding(pos, self.rope_sin))  # (T, hs/2) or (B, T, hs/2)
            return self.transformer.wte(idx), rope  # (B, T, C)
        return self.transformer.wte(idx) + self.transformer.wpe(pos), None  # (B, T, C)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position and the mean cross-entropy when ``targets`` are given.

        Without targets only the last position's logits are computed, as nanoGPT does for sampling.
        """
        _, t = idx.shape  # (B, T)
        self._check_length(t)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x, rope = self.embed(idx, pos)
        if self.training:
            x = self.transformer.drop(x)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, rope)
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
        x, rope = self.embed(idx, pos)  # (B, T, C)
        present: KVCache = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block.forward_cached(x, None if past is None else past[i], mask, rope=rope)
            present.append(kv)
        return self.lm_head(self.transformer.ln_f(x)), present  # (B, T, V)

    def decode_step(self, idx: torch.Tensor, pos: torch.Tensor, past: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, 1, V) of one new token per row, ``idx`` (B, 1), each at its own position ``pos`` (B,),
        and the new keys and values alone, each (B, n_head, 1, head_size).

        ``past`` holds P positions per row, P at least every ``pos``: row i's first ``pos[i]`` are its
        context, the rest (another row's length) are masked out. The new token attends to its context
        and itself, so rows hundreds of tokens apart share one step.
        """
        B, P = idx.shape[0], past[0][0].shape[2]
        seen = torch.arange(P, device=idx.device) < pos[:, None]  # (B, P): each row's own context
        mask = torch.cat((seen, torch.ones_like(seen[:, :1])), dim=1)  # (B, P + 1): and the new token itself
        x, rope = self.embed(idx, pos[:, None])  # (B, 1, C)
        new: KVCache = []
        for block, kv in zip(self.transformer.h, past, strict=True):
            x, kv_new = block.forward_cached(x, kv, mask.view(B, 1, 1, P + 1), rope=rope, new_only=True)
            new.append(kv_new)  # (B, nh, 1, hs) each
        return self.lm_head(self.transformer.ln_f(x)), new  # (B, 1, V)

    def decode_in_place(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        written: torch.Tensor,
    ) -> torch.Tensor:
        """``decode_step`` on caches held in place: logits (B, 1, V) of one token per row, ``idx`` (B, 1), each at
        its own position ``pos`` (B,), with each layer's ``keys``/``values`` (B, nh, S, hs) updated in place for
        the rows ``written`` (indices), so no row's past is copied. The KV-cache backend's decode on PyTorch;
        the exported graphs use ``decode_step``, which is a pure function."""
        x, rope = self.embed(idx, pos[:, None])  # (B, 1, C)
        seen = int(pos.max()) + 1  # the positions any row attends to
        mask = (torch.arange(seen, device=idx.device) <= pos[:, None]).view(-1, 1, 1, seen)  # (B, 1, 1, seen)
        at = pos[written]  # (W,): where the written rows' new keys and values go, the same in every layer
        for block, k, v in zip(self.transformer.h, keys, values, strict=True):
            x = block.decode_in_place(x, k, v, written, at, mask, rope)
        return self.lm_head(self.transformer.ln_f(x))  # (B, 1, V)
