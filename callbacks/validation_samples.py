"""A W&B table ``samples`` of text generated at each validation, to read how the model is doing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from lit_nanogpt.module import LitGPT, generate_text
from lit_nanogpt.sampling import SamplingSettings
from lit_nanogpt.text import Tokenizer


@dataclass
class ValidationSampling(SamplingSettings):
    """``SamplingSettings`` with fewer characters by default: these samples are drawn at every validation."""

    max_new_tokens: int = 100


class ValidationSamples(Callback):
    def __init__(
        self,
        prompts: list[str] | None = None,
        seed: int = 1337,
        key: str = "samples",
        **sampling: Any,
    ) -> None:
        """After each validation in ``fit``, continue each prompt and log a table (step, prompt, text) to W&B.

        The table grows by ``num_samples`` rows per prompt at each validation, so the last one shows every step.
        Sampling uses its own seeded generator: the samples are comparable across steps and training
        draws the same random numbers with or without this callback. Without a W&B logger nothing is
        generated.

        Args:
            prompts: Texts to continue; default a newline, or the vocabulary's first character when it has none.
            seed: Seed of the sampling generator, the same at every validation.
            key: Name of the table in W&B.
            sampling: ``SamplingSettings``' fields (``max_new_tokens`` (default 100 here), ``temperature``,
                ``top_k``, ``num_samples``), given flat: ``init_args: {max_new_tokens: 100}``.
        """
        self.sampling = ValidationSampling(**sampling)
        self.prompts = prompts or []  # none given: the model's vocabulary picks one (Tokenizer.default_prompt)
        if not all(self.prompts):
            raise ValueError(f"prompts={self.prompts!r} has an empty prompt: give at least one character each")
        self.seed = seed
        self.key = key
        self.rows: list[list[Any]] = []

    def _prompts(self, vocab: Tokenizer) -> list[str]:
        return self.prompts or [vocab.default_prompt]

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vocab = getattr(pl_module, "vocab", None)
        if vocab is None or not self._wandb_loggers(trainer):
            return
        for prompt in self._prompts(vocab):
            if missing := vocab.unknown(prompt):
                raise ValueError(
                    f"ValidationSamples prompt {prompt!r} has characters not in the vocabulary: "
                    f"{''.join(missing)!r}; remove them"
                )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._wandb_loggers(trainer)
        module = cast(LitGPT, pl_module)
        vocab = module.vocab
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero or not loggers:
            return
        if vocab is None:  # a model built without CharDataModule: nothing to sample with
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        for prompt in self._prompts(vocab):
            for _ in range(self.sampling.num_samples):
                text = generate_text(module.model, vocab, prompt, self.sampling, generator=generator)
                self.rows.append([trainer.global_step, prompt, text[len(prompt) :]])
        for logger in loggers:
            logger.log_text(key=self.key, columns=["step", "prompt", "text"], data=self.rows, step=trainer.global_step)
