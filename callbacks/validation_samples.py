"""A W&B table ``samples`` of text generated at each validation, to read how the model is doing."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from lit_nanogpt.module import generate_text, validate_sampling


class ValidationSamples(Callback):
    def __init__(
        self,
        prompts: list[str] | None = None,
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 1337,
        key: str = "samples",
    ) -> None:
        """After each validation in ``fit``, continue each prompt and log a table (step, prompt, text) to W&B.

        The table grows by one row per prompt at each validation, so the last one shows every step.
        Sampling uses its own seeded generator: the samples are comparable across steps and training
        draws the same random numbers with or without this callback. Without a W&B logger nothing is
        generated.

        Args:
            prompts: Texts to continue; default a single newline.
            max_new_tokens: Characters generated per prompt.
            temperature: Softmax temperature; 0 means greedy.
            top_k: Sample among the k most likely characters; ``None`` for all.
            seed: Seed of the sampling generator, the same at every validation.
            key: Name of the table in W&B.
        """
        validate_sampling(max_new_tokens, temperature, top_k)
        self.prompts = prompts or ["\n"]
        if not all(self.prompts):
            raise ValueError(f"prompts={self.prompts!r} has an empty prompt: give at least one character each")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.key = key
        self.rows: list[list[Any]] = []

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vocab = getattr(pl_module, "vocab", None)
        if vocab is None or not self._wandb_loggers(trainer):
            return
        for prompt in self.prompts:
            if missing := vocab.unknown(prompt):
                raise ValueError(
                    f"ValidationSamples prompt {prompt!r} has characters not in the vocabulary: "
                    f"{''.join(missing)!r}; remove them"
                )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero or not loggers:
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        for prompt in self.prompts:
            text = generate_text(pl_module.model, pl_module.vocab, prompt, self.max_new_tokens, self.temperature,
                                 self.top_k, generator=generator)  # fmt: skip
            self.rows.append([trainer.global_step, prompt, text[len(prompt) :]])
        for logger in loggers:
            logger.log_text(key=self.key, columns=["step", "prompt", "text"], data=self.rows, step=trainer.global_step)
