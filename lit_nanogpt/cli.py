"""Lightning's commands, ``fit``, ``validate``, ``test`` and ``predict``, and a fit's run folder.

``lit_nanogpt.commands`` dispatches here and passes the program's name and description down.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_nanogpt import files
from lit_nanogpt.callbacks.longrun import StopOnSignal
from lit_nanogpt.callbacks.progress import StepProgressBar
from lit_nanogpt.callbacks.samples import SampleWriter
from lit_nanogpt.checkpoint import read_checkpoint
from lit_nanogpt.checkpoint_io import AtomicCheckpointIO
from lit_nanogpt.cpu import amx_choice
from lit_nanogpt.data import SHIPPED_CORPUS, CharDataModule
from lit_nanogpt.loggers import AutoWandbLogger, LoggedConfig
from lit_nanogpt.module import LitGPT
from lit_nanogpt.npu import npu_trainer_flags

# The settings every fit starts from (callbacks, logger, nanoGPT's loop); the recipes hold the rest.
FIT_DEFAULTS = Path(__file__).with_name("fit_defaults.yaml")
# Lightning's own names for checkpoints it finds by itself, accepted by --ckpt_path.
_SPECIAL_CKPT_PATHS = {"last", "best", "hpc", "registry"}


class LitNanoGPTCLI(LightningCLI):
    """LightningCLI for ``LitGPT`` on ``CharDataModule``, with the settings linked and checkpoints self-describing."""

    def __init__(
        self, args: Any = None, run: bool = True, prog: str = "lit-nanogpt", description: str = "", **kwargs: Any
    ) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 1337)  # nanoGPT's seed
        # validate/predict with only --ckpt_path should not leave a CSV log folder in the current directory.
        kwargs.setdefault("trainer_defaults", {"logger": False})
        kwargs.setdefault("save_config_callback", LoggedConfig)  # config.yaml, and the same config in the loggers
        self.prog = prog  # names this program in its one-line messages
        parser_kwargs = kwargs.setdefault("parser_kwargs", {"prog": prog, "description": description})
        # A bad option raises (parse_arguments turns it into one line) instead of printing the whole usage.
        parser_kwargs.setdefault("exit_on_error", False)
        # Every fit starts from the standard callbacks and logger; run=False builds a fit-like Trainer directly.
        defaults = {"default_config_files": [str(FIT_DEFAULTS)]}
        parser_kwargs.setdefault("fit", defaults) if run else parser_kwargs.update(defaults)
        self._args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        self._resume: dict[str, Any] | None = None  # the checkpoint a fit resumes, read once
        super().__init__(LitGPT, CharDataModule, args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")
        parser.link_arguments("model.arch.block_size", "data.block_size")
        parser.add_lightning_class_args(SampleWriter, "sample_writer")
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="fit only: replace the results of an earlier run in --trainer.default_root_dir (its checkpoints "
            "are deleted first) instead of refusing to start. Ignored with --ckpt_path, which resumes that run.",
        )  # fmt: skip
        parser.add_argument(
            "--amx_precision", type=Literal["bf16-mixed"] | None, default=None,
            help="CPU runs only: the precision to use instead of --trainer.precision where the CPU has AMX-BF16 "
            "(Intel Xeon 4th generation and later); elsewhere --trainer.precision stands. One line says which was "
            "chosen. Pays on the 10.65M model (configs/shakespeare_char_10m_cpu.yaml), not on the 0.8M one.",
        )  # fmt: skip

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Lightning's, plus the NPU strategy and precision plugin that Lightning 2.6 cannot pick itself, and the
        precision ``--amx_precision`` picks for this CPU."""
        configured = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        # Before the Trainer appends its defaults to the same list.
        named = [type(c) for c in configured.get("callbacks") or [] if isinstance(c, ProgressBar | ModelSummary)]
        try:
            trainer = super().instantiate_trainer(**{**kwargs, **npu_trainer_flags(configured)})
        except MisconfigurationException as e:
            raise ValueError(_misconfigured(configured, e)) from None
        # Lightning's defaults print on stdout, and which ones it picks depends on whether rich is installed (the hf
        # extra brings it): ours, on stderr, whatever is installed, unless the config names its own.
        for i, callback in enumerate(trainer.callbacks):  # type: ignore[attr-defined]
            if type(callback) is TQDMProgressBar and TQDMProgressBar not in named:
                bar = StepProgressBar(callback.refresh_rate, callback.process_position, callback._leave)
                trainer.callbacks[i] = bar  # type: ignore[attr-defined]
            elif type(callback) is RichProgressBar and RichProgressBar not in named:
                trainer.callbacks[i] = StepProgressBar()  # type: ignore[attr-defined]
            elif type(callback) is RichModelSummary and RichModelSummary not in named:
                trainer.callbacks[i] = ModelSummary(max_depth=callback._max_depth)  # type: ignore[attr-defined]
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if (amx_precision := self._get(self.config_init, "amx_precision")) is not None:
            # Chosen on the built Trainer, whose accelerator is resolved ("auto" included).
            on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
            chosen, why = amx_choice(str(trainer.precision), amx_precision, on_cpu)
            if chosen != trainer.precision:
                trainer.strategy.precision_plugin = MixedPrecision(chosen, "cpu")  # type: ignore[arg-type]
            if trainer.is_global_zero:
                print(f"{self.prog}: {why}", file=sys.stderr, flush=True)
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
            if subcommand != "fit":
                return super()._run_subcommand(subcommand)
            for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
                if getattr(callback, "monitor", None) == "val_loss":  # a config written before val_loss_est
                    raise ValueError(
                        f"{type(callback).__name__}(monitor='val_loss'): fit logs its validations as val_loss_est "
                        "(val_loss is the exact pass over the best checkpoint after training): monitor val_loss_est"
                    )
            if self._resume is not None:
                self._refuse_other_corpus()
            with RunFolder(self._root(), self.trainer, resuming=self._resume is not None,
                           overwrite=bool(self.config["fit"].get("overwrite")), prog=self.prog):  # fmt: skip
                try:
                    super()._run_subcommand(subcommand)
                except SIGTERMException:
                    raise SystemExit(self._report_stop()) from None

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise ValueError(_explain_parse_error(str(e), self._subcommand_parsers, args, self.prog)) from None

    def _parse_ckpt_path(self) -> None:
        """Take the model from the checkpoint, and the data settings the user left at their defaults.

        Lightning's own version restores only the model's hyperparameters, and raises a traceback on
        a damaged file; with this one ``validate --ckpt_path X`` needs nothing but ``X``.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if subcommand == "fit" and str(ckpt_path) == "last" and (found := self._last_ckpt()).is_file():
            # Found here rather than by Lightning, so the checks below apply to it too.
            ckpt_path = self.config[subcommand]["ckpt_path"] = str(found)
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
        if subcommand == "fit":
            self._refuse_model_changes(ckpt_path, model)
            self._resume = {"path": str(ckpt_path), "vocab": ckpt["vocab"], "corpus": ckpt.get("corpus")}
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

    def _root(self) -> Path:
        return Path(self.config["fit"]["trainer"].get("default_root_dir") or os.getcwd())

    def _last_ckpt(self) -> Path:
        return self._root() / "checkpoints" / "last.ckpt"

    def _refuse_model_changes(self, ckpt_path: str | Path, saved: dict[str, Any]) -> None:
        """A resumed fit trains the checkpoint's model with its optimizer state: a ``--model.*`` value set to
        something else cannot be honoured, so each one is named rather than dropped."""
        asked = self.config["fit"]["model"].as_dict()
        defaults = self._subcommand_parsers["fit"].get_defaults()["model"].as_dict()

        def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
            return out

        # Typed on the command line: named even when it is the default (--model.optimizer adamw against a Muon
        # run). Otherwise a value at its default is one nobody asked for, and the checkpoint's stands.
        typed = {a[len("--model.") :].split("=")[0] for a in self._args if a.startswith("--model.")}
        saved_flat, default_flat = flat(saved), flat(defaults)
        changed = [
            f"--model.{k}={v} (the checkpoint has {saved_flat[k]})"
            for k, v in flat(asked).items()
            if k in saved_flat and v != saved_flat[k] and (k in typed or v != default_flat.get(k))
        ]
        if changed:
            raise ValueError(
                f"fit --ckpt_path {ckpt_path} resumes that run with its own model and optimizer settings, but "
                f"{', '.join(changed)}: drop those options to resume, or start a new run in another "
                "--trainer.default_root_dir"
            )

    def _refuse_other_corpus(self) -> None:
        assert self._resume is not None
        corpus = self.datamodule.corpus
        saved = self._resume.get("corpus") or {}
        if saved.get("sha256", corpus.sha256) != corpus.sha256 or self._resume["vocab"] != corpus.vocab.to_plain():
            was = f"{saved['path']} (sha256 {saved['sha256'][:12]})" if saved else "another corpus"
            raise ValueError(
                f"fit --ckpt_path {self._resume['path']} was trained on {was}, not on {corpus.path} "
                f"(sha256 {corpus.sha256[:12]}): resume with its --data.data_path, or start a new run in another "
                "--trainer.default_root_dir"
            )

    def _report_stop(self) -> int:
        """One line: the signal, the step and ``last.ckpt``, and the command that resumes; returns the exit status."""
        stop = next((c for c in self.trainer.callbacks if isinstance(c, StopOnSignal)), None)  # type: ignore[attr-defined]
        signum = stop.received if stop is not None and stop.received is not None else signal.SIGTERM
        if self.trainer.is_global_zero:
            args, skip = [], False
            for a in self._args:
                if skip or a in ("--ckpt_path", "--overwrite"):
                    skip = not skip and "=" not in a
                    continue
                if not a.startswith(("--ckpt_path=", "--overwrite=")):
                    args.append(a)
            where = f"wrote {stop.saved}" if stop is not None and stop.saved else "nothing saved"
            if self.trainer.state.fn == "validate":  # after_fit's pass: what training wrote is all there
                where = "in the final validation, after training ended (checkpoints and export complete)"
            step = stop.step if stop is not None and stop.step is not None else self.trainer.global_step
            print(f"{self.prog}: stopped by {signal.Signals(signum).name} at step {step}: {where}; resume with: "
                  f"{shlex.join([self.prog, *args, '--ckpt_path', 'last'])}", file=sys.stderr, flush=True)  # fmt: skip
        return 128 + int(signum)

    def before_fit(self) -> None:
        # Lightning would put checkpoints inside the logger's folder (a W&B run id, say); keep them
        # where the config's default_root_dir says, so the README's paths hold whatever the logger.
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints")

    def after_fit(self) -> None:
        """One exact pass over the whole validation split with the best checkpoint's weights (the final weights
        without one), logged as ``val_loss`` and printed: the validations inside the fit were ``val_loss_est``."""
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
        self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        if self.trainer.is_global_zero and best:
            score = self.trainer.callback_metrics.get("val_loss")
            shown = f"val_loss={float(score):.4f}" if score is not None else "no score"
            print(f"Best checkpoint: {best} ({shown})", flush=True)


class RunFolder:
    """A fit's hold on its run folder (``--trainer.default_root_dir``), on global rank 0.

    An exclusive lock (``.lit-nanogpt.lock``, an ``flock`` the system drops when the process ends, even
    on SIGKILL) refuses a second fit into the same folder while one runs. A folder whose ``checkpoints/``
    holds an earlier run's checkpoints is refused too, unless the fit resumes it (``--ckpt_path``) or
    ``--overwrite true`` deletes them. Leftovers of interrupted atomic writes are removed.
    """

    LOCK = ".lit-nanogpt.lock"

    def __init__(self, root: Path, trainer: L.Trainer, resuming: bool, overwrite: bool, prog: str) -> None:
        self.root, self.trainer, self.resuming, self.overwrite, self.prog = root, trainer, resuming, overwrite, prog
        self._fd: int | None = None

    def __enter__(self) -> RunFolder:
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(
                f"--trainer.default_root_dir {self.root} is a file, not a folder: pass a folder path for the run"
            )
        if not self.trainer.is_global_zero:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / self.LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Empty when the holder has the lock but has not written its pid yet (two fits started together).
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise ValueError(
                f"another fit{f' (pid {holder})' if holder else ''} is running in {self.root}: wait for it to end, "
                "or pass another --trainer.default_root_dir"
            ) from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            self._check_results()
            clean_leftovers(self.root, self.trainer, self.prog)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _check_results(self) -> None:
        results = sorted((self.root / "checkpoints").glob("*.ckpt"))
        if not results or self.resuming:
            return
        if not self.overwrite:
            names = ", ".join(p.name for p in results)
            raise ValueError(
                f"{self.root} already holds a run's results (checkpoints/{{{names}}}): resume it with "
                "--ckpt_path last, start a new run in another --trainer.default_root_dir, or pass --overwrite true "
                "to replace them"
            )
        for path in results:
            path.unlink()

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no pid of an ended fit for the next one's refusal to name
            os.close(self._fd)  # releases the lock; the empty file stays, harmless
            self._fd = None


def clean_leftovers(root: Path, trainer: L.Trainer, prog: str) -> None:
    """Remove what interrupted writes left in the run folder (``lit_nanogpt.files.clean_leftovers``): in it, in
    ``checkpoints/`` and beside each ``OnnxExport``'s folder. Called under the run folder's lock."""
    from lit_nanogpt.callbacks import OnnxExport

    export_dirs = {Path(c.dirpath) if c.dirpath else root / "export" for c in trainer.callbacks  # type: ignore[attr-defined]
                   if isinstance(c, OnnxExport)}  # fmt: skip
    folders = {root, root / "checkpoints", *(d.parent for d in export_dirs)}
    if removed := files.clean_leftovers(folders, {d.name for d in export_dirs}):
        print(f"{prog}: removed {len(removed)} leftover(s) of interrupted writes: "
              f"{', '.join(str(p) for p in removed)}", file=sys.stderr)  # fmt: skip


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


def _explain_parse_error(message: str, parsers: dict[str, LightningArgumentParser], args: Any, prog: str) -> str:
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
        return f"{text} ({prog} --help lists the commands, {prog} COMMAND --help their options)"
    key = ".".join(unknown.groups())
    guess = difflib.get_close_matches(key, list(parsers[subcommand].get_defaults().keys()), n=1, cutoff=0.6)
    files = [f for f in _config_files(args) if _sets_key(f, key)]
    where, dashes = (f"{files[-1]}: {key}", "") if files else (f"--{key}", "--")
    fix = f"did you mean {dashes}{guess[0]}?" if guess else f"see {prog} {subcommand} --help"
    return f"{where} is not an option of {prog} {subcommand}; {fix}"


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


def _config_files(args: list[str]) -> list[Path]:
    files = [Path(a.split("=", 1)[1]) for a in args if a.startswith("--config=")]
    files += [Path(b) for a, b in zip(args, args[1:], strict=False) if a == "--config"]
    return [f for f in files if f.is_file()]


def run_lightning_cli(argv: list[str] | None = None, prog: str = "lit-nanogpt", description: str = "") -> None:
    """``fit``, ``validate``, ``test`` and ``predict``: ``argv`` or the command line, as program ``prog``."""
    try:
        LitNanoGPTCLI(args=argv, prog=prog, description=description)
    except ValueError as e:
        if (reason := _settings_error(str(e))) is None:
            raise
        raise ValueError(reason) from None


# jsonargparse's lines around a settings class's own error when it tries each type a config value may have.
_UNION_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class", "Given value",
                "Not a valid subclass", "Subclass types expect", "a class path", "a dict ")  # fmt: skip


def _settings_error(message: str) -> str | None:
    """The one line a settings class raised at construction (``ExportSettings(opset=99)`` in a config), out of the
    tree jsonargparse wraps it in; None when ``message`` is not such a tree."""
    if "\n" not in message or not message.startswith(_UNION_NOISE[0]):
        return None
    for line in message.splitlines():
        text = line.strip().removeprefix("- ")
        if text and not text.startswith(_UNION_NOISE):
            return f"{text} (in the config's settings)"
    return None
