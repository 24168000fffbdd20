"""``lit-nanogpt``: Lightning's ``fit``/``validate``/``test``/``predict`` plus ``generate``, ``import-nanogpt``
and ``export``."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_nanogpt.callbacks.progress import StepProgressBar
from lit_nanogpt.callbacks.samples import SampleWriter
from lit_nanogpt.checkpoint import AtomicCheckpointIO, read_checkpoint
from lit_nanogpt.commands import EXTRA_COMMANDS, PROG, export_command, generate, main, torch_device
from lit_nanogpt.data import SHIPPED_CORPUS, CharDataModule
from lit_nanogpt.loggers import AutoWandbLogger, LoggedConfig
from lit_nanogpt.module import LitGPT
from lit_nanogpt.npu import npu_trainer_flags

__all__ = ["FIT_DEFAULTS", "LitNanoGPTCLI", "export_command", "generate", "main", "run_lightning_cli", "torch_device"]

# The settings every fit starts from (callbacks, logger, nanoGPT's loop); the recipes hold the rest.
FIT_DEFAULTS = Path(__file__).with_name("fit_defaults.yaml")
# Lightning's own names for checkpoints it finds by itself, accepted by --ckpt_path.
_SPECIAL_CKPT_PATHS = {"last", "best", "hpc", "registry"}


class LitNanoGPTCLI(LightningCLI):
    """LightningCLI for ``LitGPT`` on ``CharDataModule``, with the settings linked and checkpoints self-describing."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 1337)  # nanoGPT's seed
        # validate/predict with only --ckpt_path should not leave a CSV log folder in the current directory.
        kwargs.setdefault("trainer_defaults", {"logger": False})
        kwargs.setdefault("save_config_callback", LoggedConfig)  # config.yaml, and the same config in the loggers
        description = "Train, evaluate and sample nanoGPT with Lightning. Also: " + "; ".join(
            f"{PROG} {name}: {text}" for name, text in EXTRA_COMMANDS.items()
        )
        parser_kwargs = kwargs.setdefault("parser_kwargs", {"prog": PROG, "description": description})
        # A bad option raises (parse_arguments turns it into one line) instead of printing the whole usage.
        parser_kwargs.setdefault("exit_on_error", False)
        # Every fit starts from the standard callbacks and logger; run=False builds a fit-like Trainer directly.
        defaults = {"default_config_files": [str(FIT_DEFAULTS)]}
        parser_kwargs.setdefault("fit", defaults) if run else parser_kwargs.update(defaults)
        super().__init__(LitGPT, CharDataModule, args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")
        parser.link_arguments("model.arch.block_size", "data.block_size")
        parser.add_lightning_class_args(SampleWriter, "sample_writer")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Lightning's, plus the NPU strategy and precision plugin that Lightning 2.6 cannot pick itself."""
        configured = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        try:
            trainer = super().instantiate_trainer(**{**kwargs, **npu_trainer_flags(configured)})
        except MisconfigurationException as e:
            raise ValueError(_misconfigured(configured, e)) from None
        for i, bar in enumerate(trainer.callbacks):
            if type(bar) is TQDMProgressBar:  # Lightning's default, on stdout
                trainer.callbacks[i] = StepProgressBar(bar.refresh_rate, bar.process_position, bar._leave)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for logger in trainer.loggers:
            if isinstance(logger, AutoWandbLogger):
                logger.follow_trainer(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        with warnings.catch_warnings():
            if subcommand != "fit":
                # The callbacks that wrote the checkpoint (checkpointing, loss curve) keep state for training only.
                warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used")
            # predict's batches are prompts, and SampleWriter does not ask for their indices.
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")
            super()._run_subcommand(subcommand)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise ValueError(_explain_parse_error(str(e), self._subcommand_parsers, args)) from None

    def _parse_ckpt_path(self) -> None:
        """Take the model from the checkpoint, and the data settings the user left at their defaults.

        Lightning's own version restores only the model's hyperparameters, and raises a traceback on
        a damaged file; with this one ``validate --ckpt_path X`` needs nothing but ``X``.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in _SPECIAL_CKPT_PATHS:
            return
        ckpt = read_checkpoint(ckpt_path)
        if subcommand == "fit" and "optimizer_states" not in ckpt:
            raise ValueError(
                f"{ckpt_path} holds weights only (no optimizer state), so fit cannot resume from it: use it with "
                "validate, test, predict or generate"
            )
        model = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in ("_instantiator", "_class_path")}
        model["arch"] = {k: v for k, v in model["arch"].items() if k != "vocab_size"}  # linked from the data
        defaults = self._subcommand_parsers[subcommand].get_defaults()["data"]
        current = self.config[subcommand]["data"]
        data = {
            k: v
            for k, v in ckpt.get("datamodule_hyper_parameters", {}).items()
            if k != "block_size" and k in current and current[k] == defaults[k]
        }
        if current.get("vocab") is None:
            data["vocab"] = ckpt["vocab"]  # predict then reads no corpus; validate/test check theirs against it
        if subcommand in ("validate", "test"):
            _check_corpus_is_there(subcommand, ckpt_path, {**current, **data}, ckpt.get(CharDataModule.__qualname__))
        self.config = self.parser.parse_object({subcommand: {"model": model, "data": data}}, self.config)

    def before_fit(self) -> None:
        # Lightning would put checkpoints inside the logger's folder (a W&B run id, say); keep them
        # where the config's default_root_dir says, so the README's paths hold whatever the logger.
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints")

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if self.trainer.is_global_zero and callback is not None and getattr(callback, "best_model_path", ""):
            score = callback.best_model_score
            shown = f"{callback.monitor}={score:.4f}" if score is not None else "no score"
            print(f"Best checkpoint: {callback.best_model_path} ({shown})", flush=True)


def _check_corpus_is_there(subcommand: str, ckpt_path: str, data: dict[str, Any], recorded: Any) -> None:
    """One line, before anything starts, when the corpus whose validation split validate/test need is gone."""
    path = Path(data["data_path"]) if data.get("data_path") else SHIPPED_CORPUS
    if path.is_file():
        return
    sha = f" (sha256 {recorded['sha256'][:16]}...)" if isinstance(recorded, dict) and "sha256" in recorded else ""
    raise FileNotFoundError(
        f"{subcommand} needs the validation split of the corpus {ckpt_path} was trained on, {path}{sha}, which is "
        "not there: put it back or pass --data.data_path with that text (predict and generate need only the checkpoint)"
    )


def _misconfigured(trainer: dict[str, Any], error: Exception) -> str:
    """One line for a Trainer that Lightning refused to build, naming the setting and the fix."""
    text = " ".join(str(error).split())
    accelerator = trainer.get("accelerator")
    if "can not run on your system" in text and isinstance(accelerator, str):
        return (
            f"--trainer.accelerator {accelerator}: no {accelerator} device is available on this machine; "
            "use --trainer.accelerator cpu, or auto to take whatever is there"
        )
    return f"the trainer settings do not fit together: {text}"


def _explain_parse_error(message: str, parsers: dict[str, LightningArgumentParser], args: Any) -> str:
    """jsonargparse's error as one line; for an unknown key: the file that sets it and the nearest real key."""
    import difflib
    import re

    text = " ".join(message.split())
    args = args if isinstance(args, list) else sys.argv[1:]
    subcommand = next((a for a in args if a in parsers), None)
    unknown = (
        re.search(r"Subcommand '[\w-]+' does not accept option '([\w.]+)'", text)
        or re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text)
        or re.search(r"unrecognized arguments: --([\w.]+)", text)
    )
    if unknown is None or subcommand is None:
        return f"{text} ({PROG} --help lists the commands, {PROG} COMMAND --help their options)"
    key = ".".join(unknown.groups())
    guess = difflib.get_close_matches(key, list(parsers[subcommand].get_defaults().keys()), n=1, cutoff=0.6)
    files = [f for f in _config_files(args) if _sets_key(f, key)]
    where, dashes = (f"{files[-1]}: {key}", "") if files else (f"--{key}", "--")
    fix = f"did you mean {dashes}{guess[0]}?" if guess else f"see {PROG} {subcommand} --help"
    return f"{where} is not an option of {PROG} {subcommand}; {fix}"


def _sets_key(file: Path, key: str) -> bool:
    """Whether the YAML ``file`` sets the dotted ``key``."""
    import yaml

    try:
        node: Any = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return False
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# Class paths that moved: a config.yaml saved by an earlier version names the old ones.
_MOVED_CLASS_PATHS = {"callbacks.": "lit_nanogpt.callbacks."}


def _config_files(args: list[str]) -> list[Path]:
    files = [Path(a.split("=", 1)[1]) for a in args if a.startswith("--config=")]
    files += [Path(b) for a, b in zip(args, args[1:], strict=False) if a == "--config"]
    return [f for f in files if f.is_file()]


def check_moved_class_paths(args: list[str]) -> None:
    """One line naming the new class path when a ``--config`` file uses one that has moved."""
    import yaml

    def class_paths(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("class_path"), str):
                yield node["class_path"]
            for value in node.values():
                yield from class_paths(value)
        elif isinstance(node, list):
            for value in node:
                yield from class_paths(value)

    for file in _config_files(args):
        try:
            config = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            continue  # the CLI's own parser reports it
        for path in class_paths(config):
            for old, new in _MOVED_CLASS_PATHS.items():
                if path.startswith(old):
                    raise ValueError(
                        f"{file}: class_path {path} has moved to {new}{path.removeprefix(old)}: edit the file"
                    )


def run_lightning_cli(argv: list[str] | None = None) -> None:
    """``fit``, ``validate``, ``test`` and ``predict``: ``argv`` or the command line."""
    check_moved_class_paths(sys.argv[1:] if argv is None else argv)
    LitNanoGPTCLI(args=argv)


if __name__ == "__main__":
    sys.exit(main())
