"""The LightningModule: nanoGPT's training step, optimizer and schedule around ``GPT``."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torchmetrics import MeanMetric

from lit_nanogpt.decoding import Sampler, TorchBackend, generate
from lit_nanogpt.model import GPT, SHAKESPEARE_CHAR, GPTConfig
from lit_nanogpt.optim import MuonAdamW, nanogpt_lr, wsd_lr
from lit_nanogpt.sampling import SamplingSettings
from lit_nanogpt.text import Tokenizer, tokenizer_from_plain
from lit_nanogpt.trainer_state import current_lr, is_logging_step


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
        optimizer: Literal["adamw", "muon"] = "adamw",
        muon_lr: float = 0.02,
        muon_momentum: float = 0.95,
        schedule: Literal["cosine", "wsd"] = "cosine",
        cooldown: float = 0.4,
        fused: bool | None = None,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        """nanoGPT trained nanoGPT's way, or with the speed-run options (each off by default).

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
            optimizer: ``adamw`` (nanoGPT's) for every parameter, or ``muon``: Muon (``lit_nanogpt.optim``, fp32
                Newton-Schulz) for the transformer blocks' matrices, the fused query/key/value projection as three,
                and AdamW at ``learning_rate`` for embeddings, the head and 1-D parameters, without weight decay
                on the Muon matrices.
            muon_lr: Muon's peak learning rate; the schedule scales it as it scales ``learning_rate``.
            muon_momentum: Muon's Nesterov momentum.
            schedule: ``cosine`` (nanoGPT's warmup then cosine decay) or ``wsd``: warmup, the peak rate held, then a
                linear decay to ``min_lr`` over the last ``cooldown`` fraction of ``lr_decay_iters``.
            cooldown: ``wsd`` only: the fraction of ``lr_decay_iters`` spent decaying.
            fused: AdamW's fused kernel (``torch.optim.AdamW(fused=...)``); default torch's choice (the for-loop
                kernel on CPU). nanoGPT turns it on for CUDA only; the CPU recipes here turn it on too: on CPU it
                steps the CPU recipe's model in 0.37 ms instead of 1.50 (BENCHMARKS.md), not bit for bit alike.
            compile: Compile the network with ``torch.compile`` (``nn.Module.compile``: the checkpoint's keys stay
                the same) for training and validation. For GPUs, as nanoGPT does; on a CPU it costs more than it saves.
            compile_backend: ``torch.compile``'s backend: ``inductor`` (torch's), or on Ascend ``npu`` (TorchAir,
                registered by torch_npu; see docs/npu.md). Only read with ``compile``.
        """
        super().__init__()
        self.config = arch if isinstance(arch, GPTConfig) else GPTConfig(**arch)  # a dict when read from a checkpoint
        # save_hyperparameters reads this frame's arguments: the architecture goes in as plain values, so the
        # checkpoint loads with torch.load(weights_only=True) and the loggers show its fields.
        arch = dataclasses.asdict(self.config)  # type: ignore[assignment]
        self.save_hyperparameters()
        if optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer={optimizer!r} is not one of 'adamw', 'muon'")
        if schedule not in ("cosine", "wsd"):
            raise ValueError(f"schedule={schedule!r} is not one of 'cosine', 'wsd'")
        if not 0.0 <= cooldown <= 1.0:
            raise ValueError(f"cooldown={cooldown} must be a fraction in [0, 1], e.g. 0.4")
        self.model = GPT(self.config)
        self.vocab: Tokenizer | None = None
        # A NaN batch makes the mean NaN: the default drops it (mean of [2, nan] = 2). Not "disable": torchmetrics
        # 1.x then ignores the weights (aggregation.py _cast_and_nan_check_input sets them all to one).
        self.val_loss = MeanMetric(nan_strategy=float("nan"))
        self._rng_states: dict[str, Any] | None = None  # from the checkpoint a fit resumes, set at train start

    def configure_model(self) -> None:
        hp: Any = self.hparams
        if hp.compile and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile(backend=hp.compile_backend)

    # ---- vocabulary: taken from the data while training, carried in every checkpoint ----
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.vocab is None and datamodule is not None and hasattr(datamodule, "vocab"):
            self.vocab = datamodule.vocab
        if self.vocab is not None and len(self.vocab) > self.config.vocab_size:
            raise ValueError(
                f"the data's tokenizer, {self.vocab.describe()}, has more ids than model.arch.vocab_size="
                f"{self.config.vocab_size}: let the CLI link it (set --data.vocab_size, or nothing) or train on the "
                "checkpoint's corpus and tokenizer"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert self.vocab is not None, "a checkpoint without its vocabulary cannot be sampled"
        checkpoint["vocab"] = self.vocab.to_plain()  # plain data: the checkpoint loads with weights_only=True
        corpus = getattr(getattr(self._trainer, "datamodule", None), "corpus", None)
        if corpus is not None:
            checkpoint["corpus"] = {"path": str(corpus.path), "sha256": corpus.sha256}
        # The generators dropout draws from, so a resumed run draws the same masks. Lightning 2.6 saves none
        # of them (its _collect_rng_states serves only its spawn launcher). Every rank is seeded alike and
        # draws alike, so rank 0's states (the ones written) are every rank's.
        checkpoint["rng_states"] = rng_states(self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "vocab" in checkpoint:
            self.vocab = tokenizer_from_plain(checkpoint["vocab"])
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
        if is_logging_step(self.trainer):
            self.log("lr", current_lr(self.trainer))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        # Weighted by tokens, so the epoch value is the mean over every predicted token, on all ranks.
        self.val_loss.update(loss, weight=y.numel())
        self.log(self._val_name(), self.val_loss, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self._val_name() == "val_loss":
            self._log_perplexity("val_ppl")

    def _val_name(self) -> str:
        """``val_loss_est`` for the validations inside ``fit``, which pick the best checkpoint, as nanoGPT's
        estimates do (``CharDataModule`` runs them on ``val_est_windows`` windows); ``val_loss`` only for a whole
        pass outside it: ``validate``, and the one ``lit-nanogpt fit`` ends with over its best checkpoint."""
        return "val_loss_est" if self.trainer.state.fn == "fit" else "val_loss"

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        self.val_loss.update(loss, weight=y.numel())
        self.log("test_loss", self.val_loss)

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test_ppl")

    def _log_perplexity(self, name: str) -> None:
        # Perplexity is exp of the mean token loss: computed from it, not by a second pass over the logits
        # (torchmetrics' Perplexity took a log-softmax of every batch's logits again).
        if self.val_loss.update_called:
            self.log(name, torch.exp(self.val_loss.compute()))

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
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        muon: dict[str, torch.nn.Parameter] = {}
        if hp.optimizer == "muon":  # the blocks' matrices; embeddings and the head stay with AdamW
            muon = {n: p for n, p in params.items() if p.dim() == 2 and ".transformer.h." in n}
        decay = [p for n, p in params.items() if p.dim() >= 2 and n not in muon]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "muon":
            qkv = [p for n, p in muon.items() if n.endswith("attn.c_attn.weight")]
            rest = [p for n, p in muon.items() if not n.endswith("attn.c_attn.weight")]
            muon_groups: list[dict[str, Any]] = [{"params": qkv, "split": 3}, {"params": rest}]
            optimizer = MuonAdamW(muon_groups, groups, lr=hp.muon_lr, momentum=hp.muon_momentum,
                                  adamw_lr=hp.learning_rate, betas=(hp.beta1, hp.beta2))  # fmt: skip
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), fused=hp.fused)
        decay_iters = hp.lr_decay_iters
        if decay_iters is None:
            decay_iters = self.trainer.max_steps if self.trainer.max_steps > 0 else 5000

        def factor(step: int) -> float:  # of each group's own peak rate (AdamW's learning_rate, Muon's muon_lr)
            if hp.schedule == "wsd":
                lr = wsd_lr(step, hp.learning_rate, hp.min_lr, hp.warmup_iters, decay_iters, hp.cooldown)
            else:
                lr = nanogpt_lr(step, hp.learning_rate, hp.min_lr, hp.warmup_iters, decay_iters)
            return lr / hp.learning_rate

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, except under bf16 AMP with a fused optimizer (nanoGPT's GPU recipe).

        Lightning's ``MixedPrecision`` refuses to clip for any optimizer that can unscale gradients inside its
        step (``fused=True``), also under bf16, where there is no loss scale and so nothing to unscale: the
        gradients are the true ones, and clipping them before the step is what nanoGPT does. fp16 (a scaler)
        and every other plugin (``NPUPrecision`` has its own rule for torch_npu's flat-buffer optimizers) keep
        Lightning's path.
        """
        plugin = self.trainer.precision_plugin
        if type(plugin) is MixedPrecision and plugin.scaler is None and gradient_clip_val:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


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
    vocab: Tokenizer,
    prompt: str,
    sampling: SamplingSettings,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> str:
    """The prompt followed by ``sampling.max_new_tokens`` generated tokens' text: one sample (the caller
    draws ``sampling.num_samples``)."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character, e.g. a newline")
    was_training = model.training
    model.eval()
    try:
        sampler = Sampler(sampling.temperature, sampling.top_k, generator=generator)
        (ids,) = generate(TorchBackend(model), [vocab.encode(prompt).tolist()], sampling.max_new_tokens, sampler,
                          use_cache)  # fmt: skip
    finally:
        model.train(was_training)
    return vocab.decode(ids)
