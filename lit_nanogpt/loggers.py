"""Weights & Biases logging that needs no set-up, and the run's metadata (CLI config, versions).

``AutoWandbLogger`` is Lightning's ``WandbLogger`` with one decision added: it logs online when the
user is logged in to W&B and offline otherwise, so a ``fit`` never stops at a login prompt (CI closes
stdin) and always leaves a complete run behind, to upload later with ``wandb sync``.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

DEFAULT_PROJECT = "lit-nanogpt"
_DEFAULT_HOST = "https://api.wandb.ai"


def _netrc_path(environ: Mapping[str, str]) -> Path:
    """The .netrc that ``wandb login`` writes: ``$NETRC``, else ``~/.netrc`` (``~/_netrc`` on Windows)."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    unix = home / ".netrc"
    return unix if unix.exists() or not (home / "_netrc").exists() else home / "_netrc"


def wandb_credentials_found(environ: Mapping[str, str] | None = None) -> bool:
    """Whether W&B would find a login: ``WANDB_API_KEY``, an identity token, or ``wandb login``'s .netrc entry.

    Read here with the standard library rather than through wandb's private auth modules, which move
    between wandb releases; nothing is sent anywhere.
    """
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or _DEFAULT_HOST).netloc
    try:
        entry = netrc.netrc(_netrc_path(env)).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(mode: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode a run uses: ``mode`` if given, else ``$WANDB_MODE``, else online only when logged in.

    Raises:
        ValueError: online was asked for with no login, where wandb would stop and prompt for a key.
    """
    env = os.environ if environ is None else environ
    chosen = mode or env.get("WANDB_MODE") or None
    if chosen is None:
        return "online" if wandb_credentials_found(env) else "offline"
    if chosen in ("online", "run") and not wandb_credentials_found(env):
        source = f"mode={mode!r}" if mode else f"WANDB_MODE={chosen}"
        raise ValueError(
            f"{source} asks for online W&B logging but no W&B login was found: set WANDB_API_KEY or run "
            "`wandb login`, or set WANDB_MODE=offline (or unset it) to log offline and `wandb sync` later"
        )
    return chosen


class AutoWandbLogger(WandbLogger):
    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        save_dir: str | None = None,
        mode: str | None = None,
        log_model: bool | Literal["all"] = False,
        **kwargs: Any,
    ) -> None:
        """Lightning's ``WandbLogger``, online when logged in to W&B and offline (never prompting) otherwise.

        Args:
            project: W&B project; default ``$WANDB_PROJECT``, else ``lit-nanogpt``.
            name: Display name of the run; default W&B's generated one.
            save_dir: Folder that receives W&B's ``wandb/`` run folders, Lightning's ``config.yaml`` and
                the loss curve; default the Trainer's ``default_root_dir`` (set by ``LitNanoGPTCLI``; the
                current folder otherwise). ``$WANDB_DIR`` wins when set, so CI can send every recipe's
                runs to a scratch folder (Lightning's own logger always passes a folder, so wandb ignores it).
            mode: ``online``, ``offline`` or ``disabled``; default ``$WANDB_MODE``, else online when
                ``WANDB_API_KEY`` or ``wandb login`` gives a login, else offline.
            log_model: Upload checkpoints as W&B ``model`` artifacts: ``True`` at the end of ``fit``,
                ``"all"`` as they are written, ``False`` never. Offline runs keep them for ``wandb sync``.
            **kwargs: Passed on to ``WandbLogger`` and ``wandb.init`` (``entity``, ``tags``, ``group``, ...).
        """
        # WandbLogger's own spellings of the same settings, which the CLI also offers.
        if kwargs.pop("offline", False):
            mode = mode or "offline"
        save_dir = os.environ.get("WANDB_DIR") or kwargs.pop("dir", None) or save_dir
        self._follows_trainer = save_dir is None
        self.mode = resolve_wandb_mode(mode)
        self._sync_hint_shown = False
        if kwargs.get("settings") is None and "WANDB_SILENT" not in os.environ:
            # wandb's own console output (a dozen lines, coloured even into a file) gives way to one line of
            # ours: the run's page when online, the `wandb sync` command when offline. Its warnings still show.
            kwargs["settings"] = {"silent": True}
        super().__init__(
            name=name,
            save_dir=save_dir or ".",
            project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            log_model=log_model,
            mode=self.mode,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # wandb >= 0.19 warns that it has no effect, even when None

    def follow_trainer(self, trainer: L.Trainer) -> None:
        """Use ``trainer.default_root_dir`` as ``save_dir`` when none was given, so one setting moves the whole run."""
        if self._follows_trainer and self._experiment is None:
            self._save_dir = self._wandb_init["dir"] = str(trainer.default_root_dir)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            # wandb looks for a git root in the run folder, and warns when that folder does not exist yet.
            Path(self._wandb_init.get("dir") or ".").mkdir(parents=True, exist_ok=True)
            run = super().experiment
            if self.mode == "online" and getattr(run, "url", None):
                rank_zero_info(f"W&B run: {run.url}")
            return run
        return super().experiment

    @property
    def run_dir(self) -> Path | None:
        """The run's own folder (``.../wandb/offline-run-*``), once the run has started."""
        if self._experiment is None or not getattr(self._experiment, "dir", None):
            return None
        return Path(self._experiment.dir).parent  # wandb's run.dir is <run folder>/files

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self.mode == "offline" and self.run_dir is not None and not self._sync_hint_shown:
            self._sync_hint_shown = True  # once, though fit and test may both finalize the same run
            rank_zero_info(f"W&B run saved offline; upload it later with: wandb sync {self.run_dir}")


def log_file_artifact(
    path: str | os.PathLike[str],
    artifact_type: str = "model",
    name: str | None = None,
    logger: WandbLogger | None = None,
    **init_kwargs: Any,
) -> None:
    """Upload a file (e.g. an exported ONNX model) as a W&B artifact.

    Args:
        path: The file to upload.
        artifact_type: W&B artifact type.
        name: Artifact name; default the file's stem.
        logger: Log into this logger's run; default a short run of its own (``job_type="export"``),
            online or offline by the same rule as ``AutoWandbLogger``.
        **init_kwargs: For that short run: ``wandb.init`` arguments (``project``, ``dir``, ...).
    """
    import wandb

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: export the model first, then log it")
    artifact = wandb.Artifact(name=name or path.stem, type=artifact_type)
    artifact.add_file(str(path))
    if logger is not None:
        logger.experiment.log_artifact(artifact)
        return
    init_kwargs.setdefault("project", os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT)
    init_kwargs.setdefault("job_type", "export")
    mode = resolve_wandb_mode(init_kwargs.pop("mode", None))
    with wandb.init(mode=mode, **init_kwargs) as run:  # type: ignore[arg-type]  # one of wandb's modes
        run.log_artifact(artifact)
        if mode == "offline":
            rank_zero_info(f"W&B artifact saved offline; upload it later with: wandb sync {Path(run.dir).parent}")


class LoggedConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` writer that also puts the resolved config in every logger's run config.

    Only for ``fit``: ``validate``/``test``/``predict`` would otherwise drop a ``config.yaml`` into
    the current directory.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Through YAML so the loggers get plain values (no Namespaces, paths or class objects).
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"cli": config})
