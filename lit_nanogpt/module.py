"""The LightningModule: nanoGPT's training step, optimizer and schedule around ``GPT``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lit_nanogpt.model import GPT, SHAKESPEARE_CHAR, GPTConfig
from lit_nanogpt.sampling import SamplingSettings
from lit_nanogpt.text import Vocabulary


def nanogpt_lr(step: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's schedule: linear warmup, then cosine decay to ``min_lr`` at ``lr_decay_iters``."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if step > lr_decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


class LitGPT(L.LightningModule):
    def __init__(
        self,
        arch: GPTConfig = SHAKESPEARE_CHAR,
        learning_rate: float = 1e-3,
        min_lr: float = 1e-4,
        warmup_iters: int = 100,
        lr_decay_iters: int | None = None,
        weight_decay: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
    ) -> None:
        """nanoGPT trained nanoGPT's way.

        Args:
            arch: The network (``GPTConfig``); default nanoGPT's 10.65M Shakespeare-char model. The CLI
                links ``arch.block_size`` to ``data.block_size`` and ``data.vocab_size`` to ``arch.vocab_size``.
            learning_rate: Peak learning rate, reached after warmup.
            min_lr: Learning rate at the end of the cosine decay.
            warmup_iters: Steps of linear warmup.
            lr_decay_iters: Step at which the decay reaches ``min_lr``; default the Trainer's ``max_steps``.
            weight_decay: AdamW weight decay on 2-D and larger tensors (matmuls, embeddings) only.
            beta1: AdamW beta1.
            beta2: AdamW beta2.
        """
        super().__init__()
        self.config = arch if isinstance(arch, GPTConfig) else GPTConfig(**arch)  # a dict when read from a checkpoint
        # save_hyperparameters reads this frame's arguments: the architecture goes in as plain values, so the
        # checkpoint loads with torch.load(weights_only=True) and the loggers show its fields.
        arch = dataclasses.asdict(self.config)  # type: ignore[assignment]
        self.save_hyperparameters()
        self.model = GPT(self.config)
        self.vocab: Vocabulary | None = None
        # A NaN batch makes the mean NaN: the default drops it (mean of [2, nan] = 2). Not "disable": torchmetrics
        # 1.x then ignores the weights (aggregation.py _cast_and_nan_check_input sets them all to one).
        self.val_loss = MeanMetric(nan_strategy=float("nan"))
        self._rng_states: dict[str, Any] | None = None  # from the checkpoint a fit resumes, set at train start
        self.val_ppl = Perplexity()

    # ---- vocabulary: taken from the data while training, carried in every checkpoint ----
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.vocab is None and datamodule is not None and hasattr(datamodule, "vocab"):
            self.vocab = datamodule.vocab
        if self.vocab is not None and len(self.vocab) != self.config.vocab_size:
            raise ValueError(
                f"the data has {len(self.vocab)} characters but model.arch.vocab_size={self.config.vocab_size}: "
                "let the CLI link it (do not set --model.arch.vocab_size) or train on the checkpoint's corpus"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert self.vocab is not None, "a checkpoint without its vocabulary cannot be sampled"
        checkpoint["vocab"] = self.vocab.chars
        corpus = getattr(getattr(self._trainer, "datamodule", None), "corpus", None)
        if corpus is not None:
            checkpoint["corpus"] = {"path": str(corpus.path), "sha256": corpus.sha256}
        # The generators dropout draws from, so a resumed run draws the same masks. Lightning 2.6 saves none
        # of them (its _collect_rng_states serves only its spawn launcher). Every rank is seeded alike and
        # draws alike, so rank 0's states (the ones written) are every rank's.
        checkpoint["rng_states"] = rng_states(self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "vocab" in checkpoint:
            self.vocab = Vocabulary(checkpoint["vocab"])
        self._rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # Restored here, after setup and the model's move to its device, the last things before the first step.
        if (states := self._rng_states) is not None:
            self._rng_states = None
            set_rng_states(states, self.device)

    # ---- steps ----
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        _, loss = self.model(x, y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The rate this step uses: the scheduler steps before on_train_batch_end. Logging steps only, the
        # test Lightning's LearningRateMonitor makes. Throughput is TrainingMetrics' (lit_nanogpt.callbacks).
        if self.trainer._logger_connector.should_update_logs:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, loss = self.model(x, y)
        # Weighted by tokens, so the epoch value is the mean over every predicted token, on all ranks.
        self.val_loss.update(loss, weight=y.numel())
        self.val_ppl.update(logits, y)
        self.log("val_loss", self.val_loss, prog_bar=True)
        self.log("val_ppl", self.val_ppl)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, loss = self.model(x, y)
        self.val_loss.update(loss, weight=y.numel())
        self.val_ppl.update(logits, y)
        self.log("test_loss", self.val_loss)
        self.log("test_ppl", self.val_ppl)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Continue ``batch["prompt"]`` with ``batch["sampling"]``; returns the request, its settings
        spelled out, with ``text`` (prompt + continuation)."""
        if self.vocab is None:
            raise ValueError("the model has no vocabulary: run predict with --ckpt_path CHECKPOINT")
        sampling = batch["sampling"]
        text = generate_text(self.model, self.vocab, batch["prompt"], sampling)
        return {"prompt": batch["prompt"], "sample": batch["sample"], **dataclasses.asdict(sampling), "text": text}

    # ---- optimization ----
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp: Any = self.hparams  # Lightning's AttributeDict
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate,
            betas=(hp.beta1, hp.beta2),
        )
        decay_iters = hp.lr_decay_iters
        if decay_iters is None:
            decay_iters = self.trainer.max_steps if self.trainer.max_steps > 0 else 5000
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: nanogpt_lr(step, hp.learning_rate, hp.min_lr, hp.warmup_iters, decay_iters) / hp.learning_rate,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def rng_states(device: torch.device) -> dict[str, Any]:
    """Lightning's collection of torch's, CUDA's, numpy's and Python's random states (plus another accelerator's,
    e.g. an NPU's), as plain data: numpy's array becomes a tensor, so the checkpoint loads with weights_only."""
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    name, keys, *rest = states.pop("numpy")
    states["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), *rest]
    get_state = getattr(torch.get_device_module(device), "get_rng_state", None)
    if device.type not in ("cpu", "cuda") and callable(get_state):
        states["device"] = get_state()
    return states


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Set what ``rng_states`` collected."""
    name, keys, *rest = states["numpy"]
    plain = {k: v for k, v in states.items() if k not in ("numpy", "device")}
    _set_rng_states({**plain, "numpy": (name, keys.numpy().astype(np.uint32), *rest)})
    if "device" in states:
        torch.get_device_module(device).set_rng_state(states["device"])


def generate_text(
    model: GPT,
    vocab: Vocabulary,
    prompt: str,
    sampling: SamplingSettings,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> str:
    """The prompt followed by ``sampling.max_new_tokens`` generated characters: one sample (the caller
    draws ``sampling.num_samples``)."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character, e.g. a newline")
    device = next(model.parameters()).device
    idx = torch.from_numpy(vocab.encode(prompt))[None].to(device)  # (1, T)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(idx, sampling.max_new_tokens, sampling.temperature, sampling.top_k, use_cache=use_cache,
                             generator=generator)  # fmt: skip
    finally:
        model.train(was_training)
    return vocab.decode(out[0])
