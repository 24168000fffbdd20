"""W&B tracking: a real tiny ``fit`` logged offline, read back from the run's ``.wandb`` file."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lit_nanogpt.callbacks.loss_curve import LossCurve
from lit_nanogpt.callbacks.metrics import PEAK_FLOPS, TrainingMetrics, peak_flops_for

from lit_nanogpt.cli import FIT_DEFAULTS, LitNanoGPTCLI
from lit_nanogpt.loggers import AutoWandbLogger, log_file_artifact, resolve_wandb_mode, wandb_credentials_found
from lit_nanogpt.model import GPT, GPTConfig
from tests.helpers import ROOT, TINY, run_python

MAX_STEPS, VAL_EVERY, LOG_EVERY, NEW_TOKENS = 8, 4, 2, 20
PEAK = 1e12  # CPUs have no entry in PEAK_FLOPS; a given peak makes the CPU run log mfu too


# ---- reading an offline run back: wandb's .wandb file is a LevelDB-style log of Record protobufs ----
def read_records(path: Path) -> list[Any]:
    """Every ``Record`` in a ``.wandb`` file, each checked against its CRC."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore"
    block, pos, pending, records = 32768, 7, b"", []  # 7-byte file header: magic, version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: the block is padded
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += block - pos % block
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))), f"bad CRC at byte {pos} of {path}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def summarize(path: Path) -> SimpleNamespace:
    """History rows, config and artifacts of one offline run, with JSON values decoded."""
    history, config, artifacts = [], {}, []
    records = read_records(path)
    assert records[-1].WhichOneof("record_type") == "exit" or any(r.HasField("exit") for r in records), (
        f"{path} is incomplete: the run has no exit record"
    )
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "artifact":
            artifacts.append(record.artifact)
    return SimpleNamespace(history=history, config=config, artifacts=artifacts)


def series(history: list[dict[str, Any]], key: str) -> list[tuple[int, Any]]:
    return [(row["trainer/global_step"], row[key]) for row in history if key in row]


# ---- one real fit of the shipped CPU recipe, shrunk, logged offline into a temporary WANDB_DIR ----
def tiny_recipe(tmp: Path, **logger_args: Any) -> Path:
    """The shipped CPU config with the TINY model, a few steps, and every path inside ``tmp``."""
    config = yaml.safe_load((ROOT / "configs" / "shakespeare_char_cpu.yaml").read_text())
    trainer = config["trainer"]
    # The logger and callbacks every fit starts from, set here in full so their arguments can change.
    defaults = yaml.safe_load(FIT_DEFAULTS.read_text())["trainer"]
    trainer.update(logger=defaults["logger"], callbacks=defaults["callbacks"])
    config["model"]["arch"].update(TINY)
    config["model"]["warmup_iters"] = 2
    config["data"].update(batch_size=4, val_batch_size=8)
    trainer.update(max_steps=MAX_STEPS, val_check_interval=VAL_EVERY, log_every_n_steps=LOG_EVERY,
                   limit_val_batches=2, default_root_dir=str(tmp / "run"), enable_progress_bar=False)  # fmt: skip
    trainer["logger"]["init_args"].update(logger_args)
    for callback in trainer["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[-1]
        args = callback.setdefault("init_args", {})
        if name == "ModelCheckpoint":
            args["dirpath"] = str(tmp / "run" / "checkpoints")
        elif name == "TrainingMetrics":
            args["peak_flops"] = PEAK
        elif name == "ValidationSamples":
            args["max_new_tokens"] = NEW_TOKENS
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import wandb

    tmp = tmp_path_factory.mktemp("offline_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp / "wandb_dir"))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("LIT_NANOGPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.chdir(tmp)
        cli = LitNanoGPTCLI(args=["fit", "--config", str(tiny_recipe(tmp, log_model=True))])
        logger = cli.trainer.logger
        run_dir = logger.run_dir
        wandb.finish()  # Lightning leaves the run open for later calls
        wandb.teardown()  # and wandb-core may still be writing the file after finish() returns
    (wandb_file,) = run_dir.glob("*.wandb")
    curve = next(c for c in cli.trainer.callbacks if isinstance(c, LossCurve))
    return SimpleNamespace(tmp=tmp, run_dir=run_dir, trainer=cli.trainer, logger=logger, curve=curve,
                           **vars(summarize(wandb_file)))  # fmt: skip


def test_offline_run_lands_in_wandb_dir(offline_run: SimpleNamespace) -> None:
    assert isinstance(offline_run.logger, AutoWandbLogger)
    assert offline_run.logger.mode == "offline"
    assert offline_run.run_dir.parent == offline_run.tmp / "wandb_dir" / "wandb"
    assert offline_run.run_dir.name.startswith("offline-run-")


def test_training_metrics_are_logged_on_logging_steps(offline_run: SimpleNamespace) -> None:
    h = offline_run.history
    steps = MAX_STEPS // LOG_EVERY
    for key in ("train_loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        values = [v for _, v in series(h, key)]
        assert len(values) == steps, (key, values)
        # A whole number comes back from W&B's JSON as an int (tokens_per_s was 11818 once): a number, not a bool.
        assert all(type(v) in (int, float) and math.isfinite(v) and v > 0 for v in values), (key, values)
    train = [v for _, v in series(h, "train_loss")]
    assert all(3.0 < v < 4.6 for v in train)  # ln(65) = 4.17 at the start; a few steps barely move it
    assert train[-1] < train[0]
    assert all(v <= 1e-3 for _, v in series(h, "lr"))  # the recipe's peak learning rate
    assert all(0.0 < v < 1.0 for _, v in series(h, "mfu"))
    assert all(v < 100 for _, v in series(h, "grad_norm"))


def test_tokens_per_s_and_mfu_come_from_one_timing(offline_run: SimpleNamespace) -> None:
    # Equal up to the float32 the values are logged in (1e-7). Two timers disagreed by ~1% on this tiny step.
    per_token = offline_run.trainer.lightning_module.model.flops_per_token(TINY["block_size"])
    rows = [row for row in offline_run.history if "mfu" in row]
    assert len(rows) == MAX_STEPS // LOG_EVERY
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * per_token / PEAK, rel=1e-6), row


def test_validation_loss_estimated_each_validation_and_exact_once_at_the_end(offline_run: SimpleNamespace) -> None:
    estimates = [v for _, v in series(offline_run.history, "val_loss_est")]
    assert len(estimates) == MAX_STEPS // VAL_EVERY
    assert all(3.0 < v < 4.6 for v in estimates), estimates
    ((step, val),) = series(offline_run.history, "val_loss")  # the best checkpoint's, logged at the last step
    assert step == MAX_STEPS and 3.0 < val < 4.6
    assert [s for s, _ in series(offline_run.history, "val_ppl")] == [MAX_STEPS]


def test_samples_table_grows_at_each_validation(offline_run: SimpleNamespace) -> None:
    tables = [row for row in offline_run.history if row.get("samples/_type") == "table-file"]
    assert [t["samples/nrows"] for t in tables] == [1, 2]
    table = json.loads((offline_run.run_dir / "files" / tables[-1]["samples/path"]).read_text())
    assert table["columns"] == ["step", "prompt", "text"]
    assert [row[0] for row in table["data"]] == [VAL_EVERY, 2 * VAL_EVERY]
    vocab = offline_run.trainer.lightning_module.vocab
    for _, prompt, text in table["data"]:
        assert prompt == "\n"
        assert len(text) == NEW_TOKENS and not vocab.unknown(text)


def test_config_and_versions_in_the_run(offline_run: SimpleNamespace) -> None:
    import importlib.metadata

    config = offline_run.config
    assert config["cli"]["trainer"]["max_steps"] == MAX_STEPS
    assert config["cli"]["model"]["arch"]["n_layer"] == TINY["n_layer"]
    assert config["cli"]["trainer"]["logger"]["class_path"] == "lit_nanogpt.loggers.AutoWandbLogger"
    assert config["accelerator"] == "CPUAccelerator"
    assert config["peak_flops"] == PEAK
    versions = config["versions"]
    assert versions["torch"] == torch.__version__ and versions["lightning"] == L.__version__
    try:
        npu_version = importlib.metadata.version("torch_npu")
    except importlib.metadata.PackageNotFoundError:
        npu_version = None
    assert versions.get("torch_npu") == npu_version  # present exactly when installed
    assert config["arch"]["n_embd"] == TINY["n_embd"]  # the model's own hyperparameters, from Lightning


def test_checkpoints_logged_as_artifacts_when_asked(offline_run: SimpleNamespace) -> None:
    models = [a for a in offline_run.artifacts if a.type == "model"]
    assert models, [(a.name, a.type) for a in offline_run.artifacts]
    assert models[0].name == f"model-{offline_run.logger.version}"
    assert any(entry.path == "model.ckpt" for entry in models[0].manifest.contents)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_loss_curve_png(offline_run: SimpleNamespace) -> None:
    from matplotlib.image import imread

    # In the run folder, not in WANDB_DIR (the logger's folder, which other runs may share).
    path = Path(offline_run.trainer.default_root_dir) / "loss_curve.png"
    assert path == offline_run.curve.path and Path(offline_run.trainer.log_dir) != path.parent
    width, height = _png_size(path)
    assert (width, height) == (880, 660)
    pixels = imread(path)  # (H, W, 4)
    assert pixels.shape == (height, width, 4) and pixels.std() > 0.01  # not a blank canvas
    (image,) = [row for row in offline_run.history if "loss_curve/_type" in row]
    assert image["loss_curve/width"] == width
    # The curve is drawn from what W&B received.
    logged = [v for _, v in series(offline_run.history, "train_loss")]
    assert [v for _, v in offline_run.curve.train] == pytest.approx(logged)
    assert [v for _, v in offline_run.curve.val] == pytest.approx(
        [v for _, v in series(offline_run.history, "val_loss_est")]
    )
    assert [s for s, _ in offline_run.curve.train] == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))


# ---- without W&B ----
@pytest.mark.parametrize("logger", ["false", "lightning.pytorch.loggers.CSVLogger"])
def test_without_wandb_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logger: str) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(tiny_recipe(tmp_path)), "--trainer.logger", logger]
    if logger != "false":
        args += ["--trainer.logger.save_dir", str(tmp_path / "csv")]
    cli = LitNanoGPTCLI(args=args)
    assert not (tmp_path / "wandb").exists() and not (Path(os.environ["WANDB_DIR"]) / "wandb").exists()
    png = Path(cli.trainer.default_root_dir) / "loss_curve.png"
    assert _png_size(png) == (880, 660)
    if logger == "false":
        assert png.parent == tmp_path / "run"
    else:
        import csv

        with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert sum(bool(r["grad_norm"]) for r in rows) == MAX_STEPS // LOG_EVERY
        assert sum(bool(r["mfu"]) for r in rows) == MAX_STEPS // LOG_EVERY
        hparams = yaml.safe_load((Path(cli.trainer.logger.log_dir) / "hparams.yaml").read_text())
        assert hparams["cli"]["trainer"]["max_steps"] == MAX_STEPS


def test_nothing_extra_on_steps_that_do_not_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lit_nanogpt.callbacks.metrics as metrics

    calls = {"norm": 0, "sync": 0}
    real_norm, real_sync = metrics.total_grad_norm, metrics.synchronize

    def count(name: str, fn: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            calls[name] += 1
            return fn(*args)

        return wrapped

    monkeypatch.setattr(metrics, "total_grad_norm", count("norm", real_norm))
    monkeypatch.setattr(metrics, "synchronize", count("sync", real_sync))
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(tiny_recipe(tmp_path)), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(tmp_path), "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "3",
            "--trainer.limit_val_batches", "0"]  # fmt: skip
    LitNanoGPTCLI(args=args)
    assert calls == {"norm": 2, "sync": 4}  # steps 3 and 6: one norm, a sync before and after


def test_one_timer_syncs_on_logging_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain Trainer, no peak known (a CPU): tokens_per_s and lr still logged, from one sync before and after."""
    import csv

    import lit_nanogpt.callbacks.metrics as metrics
    from lightning.pytorch.loggers import CSVLogger

    from lit_nanogpt import CharDataModule, LitGPT
    from lit_nanogpt.module import nanogpt_lr

    synced: list[torch.device] = []
    monkeypatch.setattr(metrics, "synchronize", synced.append)
    per_step: list[int] = []

    class SyncsPerStep(L.Callback):  # listed after TrainingMetrics, so its batch-end hook has run
        def on_train_batch_end(self, *_: Any) -> None:
            per_step.append(len(synced))
            assert all(d == torch.device("cpu") for d in synced)
            synced.clear()

    trainer = L.Trainer(accelerator="cpu", max_steps=7, log_every_n_steps=3, limit_val_batches=0,
                        logger=CSVLogger(tmp_path), callbacks=[TrainingMetrics(), SyncsPerStep()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = LitGPT(GPTConfig(**TINY, vocab_size=65), warmup_iters=2)
    trainer.fit(model, CharDataModule(block_size=TINY["block_size"], batch_size=4))
    assert per_step == [0, 0, 2, 0, 0, 2, 0]
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {key: [int(r["step"]) + 1 for r in rows if r.get(key)] for key in ("tokens_per_s", "lr", "grad_norm")}
    assert logged == {"tokens_per_s": [3, 6], "lr": [3, 6], "grad_norm": [3, 6]}
    assert "mfu" not in rows[0]
    # The rate each logged step trained with (steps 3 and 6 are the schedule's 2 and 5), not the next one.
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert lrs == pytest.approx([nanogpt_lr(s, 1e-3, 1e-4, 2, 7) for s in (2, 5)], rel=1e-6)


# ---- the online/offline decision ----
def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), **extra}


def test_no_credentials_means_offline(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    assert not wandb_credentials_found(env)
    assert resolve_wandb_mode(None, env) == "offline"


def test_api_key_or_netrc_login_means_online(tmp_path: Path) -> None:
    assert resolve_wandb_mode(None, _clean_env(tmp_path, WANDB_API_KEY="x" * 40)) == "online"
    env = _clean_env(tmp_path)
    (Path(env["HOME"]) / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    assert resolve_wandb_mode(None, env) == "online"
    # A login for another W&B server does not count for the default one.
    assert resolve_wandb_mode(None, {**env, "WANDB_BASE_URL": "https://wandb.example.com"}) == "offline"


def test_wandb_mode_and_argument_win(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, WANDB_API_KEY="x" * 40)
    assert resolve_wandb_mode(None, {**env, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_wandb_mode(None, {**env, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode("offline", env) == "offline"


def test_online_without_login_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="WANDB_MODE=online .* no W&B login was found: set WANDB_API_KEY"):
        resolve_wandb_mode(None, _clean_env(tmp_path, WANDB_MODE="online"))


def test_logger_respects_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    logger = AutoWandbLogger(save_dir="runs/x")
    assert logger.name == "my-project" and logger.save_dir == str(tmp_path / "elsewhere")
    assert logger._wandb_init["mode"] == "offline"  # conftest sets WANDB_MODE=offline
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_DIR")
    logger = AutoWandbLogger(save_dir="runs/x", project=None)
    assert logger.name == "lit-nanogpt" and logger.save_dir == "runs/x"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert AutoWandbLogger().mode == "online"
    assert AutoWandbLogger(offline=True).mode == "offline"  # WandbLogger's spelling still works


def test_default_run_goes_offline_without_credentials(tmp_path: Path) -> None:
    """No key, no login, no WANDB_MODE, stdin closed: the run goes offline, finishes and says how to sync."""
    config = tiny_recipe(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC",)}
    env.update(HOME=str(tmp_path / "home"), WANDB_DIR=str(tmp_path / "wandb_dir"), PYTHONPATH=str(ROOT))
    (tmp_path / "home").mkdir()
    args = ["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    proc = run_python("-m", "lit_nanogpt", *args, cwd=tmp_path, env=env, inherit_env=False,
                      stdin=subprocess.DEVNULL, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    assert f"W&B run saved offline; upload it later with: wandb sync {run_dir}" in proc.stderr + proc.stdout
    (wandb_file,) = run_dir.glob("*.wandb")
    assert [v for _, v in series(summarize(wandb_file).history, "val_loss")]


# ---- pieces ----
def test_exported_file_as_artifact(tmp_path: Path) -> None:
    import wandb

    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"not really onnx")
    log_file_artifact(exported, dir=str(tmp_path))
    wandb.teardown()
    (wandb_file,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    (artifact,) = summarize(wandb_file).artifacts
    assert (artifact.name, artifact.type) == ("model", "model")
    assert [e.path for e in artifact.manifest.contents] == ["model.onnx"]
    with pytest.raises(FileNotFoundError, match="export the model first"):
        log_file_artifact(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
     ("Ascend910B3", 320e12), ("Ascend310P3", 70e12), ("x86_64", None), ("NVIDIA GeForce RTX 4090", None)],
)  # fmt: skip
def test_peak_flops_table(name: str, peak: float | None) -> None:
    assert peak_flops_for(name) == peak


def test_flops_per_token_is_nanogpts() -> None:
    model = GPT(GPTConfig(vocab_size=65, **TINY))
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    L_, H, Q, T = TINY["n_layer"], TINY["n_head"], TINY["n_embd"] // TINY["n_head"], TINY["block_size"]
    assert model.flops_per_token(T) == 6 * n + 12 * L_ * H * Q * T
    with pytest.raises(ValueError, match="peak_flops=0"):
        TrainingMetrics(peak_flops=0)
    assert set(PEAK_FLOPS) >= {"910B", "310P", "A100", "H100"}


def test_flops_per_token_matches_lightnings_flop_count() -> None:
    """The formula against torch's FLOP counter run by Lightning's measure_flops (matmuls and attention,
    forward and backward): they differ by the LayerNorm weights alone, 6 FLOPs each in the formula."""
    from lightning.fabric.utilities.throughput import measure_flops

    B, T = 4, TINY["block_size"]
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=65, **TINY))
        x = torch.randint(0, 65, (B, T))
    counted = measure_flops(model, lambda: model(x, x)[1], loss_fn=lambda loss: loss)
    norms = sum(p.numel() for name, p in model.named_parameters() if ".ln_" in name)  # bias=False: weights only
    assert norms == (2 * TINY["n_layer"] + 1) * TINY["n_embd"]
    assert model.flops_per_token(T) * B * T == counted + 6 * norms * B * T
