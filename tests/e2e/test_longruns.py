"""Long runs: exact resume after SIGKILL (one process and two DDP ranks), SIGTERM and SIGINT, non-finite losses,
damaged caches, run folders (two fits started together into one), full and read-only disks. Real ``lit-nanogpt fit``
processes where a signal, DDP or a race is the point, in-process fits elsewhere."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lit_nanogpt.commands import main
from lit_nanogpt.files import umask
from tests.helpers import ROOT, TINY, run, run_cli

EVERY = 10  # the periodic checkpoint's interval in these tests

# fit_defaults.yaml's checkpoints and stops, without W&B, samples, the loss curve and the export.
CALLBACKS = f"""
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{filename: best, monitor: val_loss_est, mode: min, save_top_k: 1, save_last: true,
                  enable_version_counter: false}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: {EVERY}, save_top_k: 0, save_last: true, enable_version_counter: false}}
    - class_path: lit_nanogpt.callbacks.StopOnSignal
    - class_path: lit_nanogpt.callbacks.StopOnNonFinite
"""


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine it costs 10x (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def callbacks_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "callbacks.yaml"
    path.write_text(CALLBACKS)
    return path


def fit_args(root: Path, config: Path, steps: int, *extra: str) -> list[str]:
    args = ["fit", "--config", str(ROOT / "configs/shakespeare_char_cpu.yaml"), "--config", str(config)]
    args += [f"--model.arch.{k}={v}" for k, v in {**TINY, "dropout": 0.1}.items()]  # dropout: its RNG must resume
    return args + [
        f"--trainer.max_steps={steps}",
        "--trainer.val_check_interval=50",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        "--model.learning_rate=1e-2",
        "--model.warmup_iters=10",
        "--data.val_batch_size=256",
        *extra,
    ]


def start_fit(args: list[str]) -> subprocess.Popen:
    """A real ``lit-nanogpt fit`` in its own session, so signals reach it alone."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lit_nanogpt", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bitwise
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):  # fmt: skip
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, callbacks_config: Path) -> Path:
    """The uninterrupted run the interrupted ones must match."""
    root = tmp_path_factory.mktemp("reference")
    assert main(fit_args(root, callbacks_config, STEPS)) == 0
    return root


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> dict:
    return load(reference_run / "checkpoints" / "last.ckpt")


STEPS = 200


def test_sigkill_then_resume_ends_bitwise_identical(reference: dict, callbacks_config: Path, tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = start_fit(fit_args(tmp_path, callbacks_config, STEPS))
    wait_for(last, proc)
    time.sleep(0.05)  # mid-way between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load(last)["global_step"]
    assert 0 < killed_at < STEPS, "the run ended before it was killed: make it longer"
    assert main(fit_args(tmp_path, callbacks_config, STEPS, "--ckpt_path", "last")) == 0
    assert_same_training_state(load(last), reference)


# Two CPU processes over gloo: Lightning's launcher starts rank 1 as a child of rank 0, in its session.
DDP = ("--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.val_check_interval=20")
DDP_STEPS = 40
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on two shared cores


def tensors(tree: object, root: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by its path of keys (the run folder in them as ROOT): weights, optimizer
    moments, RNG states, metric states, best_k_models' scores."""
    if isinstance(tree, torch.Tensor):
        return {prefix.replace(str(root), "ROOT"): tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {path: t for k, v in items for path, t in tensors(v, root, f"{prefix}/{k}").items()}


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory, callbacks_config: Path) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("ddp_reference")
    done = run_cli(*fit_args(root, callbacks_config, DDP_STEPS, *DDP), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-4000:]
    return tensors(load(root / "checkpoints" / "last.ckpt"), root)


def test_ddp_sigkill_of_both_ranks_then_resume_ends_bitwise_identical(
    ddp_reference: dict[str, torch.Tensor], callbacks_config: Path, tmp_path: Path
) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = start_fit(fit_args(tmp_path, callbacks_config, DDP_STEPS, *DDP))
    wait_for(last, proc)
    time.sleep(0.05)  # mid-way between checkpoints
    os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and rank 1 at once, as a lost machine or an OOM killer would
    proc.wait()
    killed_at = load(last)["global_step"]
    assert 0 < killed_at < DDP_STEPS, "the run ended before it was killed: make it longer"
    done = run_cli(*fit_args(tmp_path, callbacks_config, DDP_STEPS, *DDP, "--ckpt_path", "last"), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = load(last)
    assert resumed["global_step"] == DDP_STEPS
    assert resumed["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"seed": 1337, "consumed": DDP_STEPS, "batch_size": 12}
    ]
    # Each rank's own windows after the resume: rank 1 drawing rank 0's (or its first ones again) changes the
    # all-reduced gradients, and with them every weight below.
    got, want = tensors(resumed, tmp_path), ddp_reference
    assert got.keys() == want.keys()
    assert {key.split("/")[1] for key in want} == {"state_dict", "optimizer_states", "rng_states", "callbacks"}
    for key, value in want.items():
        assert torch.equal(got[key], value), key  # bitwise


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_step_saves_last_and_resumes_exactly(
    reference: dict, callbacks_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, signum: signal.Signals
) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    args = fit_args(tmp_path, callbacks_config, STEPS)
    proc = start_fit(args)
    wait_for(last, proc)
    # One run, one folder: a second fit into it while the first runs is refused, and changes nothing there. The
    # first is held (SIGSTOP) meanwhile: a tiny fit could otherwise end before the second one looks, on a loaded
    # machine; the signal waits for SIGCONT, as one that comes mid-step waits for the step's end.
    proc.send_signal(signal.SIGSTOP)
    assert main(args) == 1
    assert f"another fit (pid {proc.pid}) is running in {tmp_path}" in capsys.readouterr().err
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("lit-nanogpt: stopped")]
    step = load(last)["global_step"]
    assert 0 < step < STEPS
    assert line.startswith(f"lit-nanogpt: stopped by {signum.name} at step {step}: wrote {last}; resume with: "
                           "lit-nanogpt fit --config ")  # fmt: skip
    assert line.endswith(f"--trainer.default_root_dir={tmp_path} --model.learning_rate=1e-2 --model.warmup_iters=10 "
                         "--data.val_batch_size=256 --ckpt_path last")  # fmt: skip
    assert "Traceback" not in stderr
    assert main(fit_args(tmp_path, callbacks_config, STEPS, "--ckpt_path", "last")) == 0
    assert_same_training_state(load(last), reference)


def test_sigterm_in_final_validation_leaves_last_as_training_wrote_it(callbacks_config: Path, tmp_path: Path) -> None:
    """The pass over best.ckpt after training (lit-nanogpt fit's last step) loads best.ckpt's weights: a stop there
    must not write them into last.ckpt, which holds the end of training and resumes to just that pass again."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    args = fit_args(tmp_path, callbacks_config, 20, "--trainer.val_check_interval=10", "--data.val_batch_size=1")
    proc = start_fit([a for a in args if a != "--trainer.limit_val_batches=2"])  # the full pass: 6971 batches
    assert proc.stderr is not None
    for line in proc.stderr:  # Lightning's line as validate loads best.ckpt, after training ended
        if line.startswith("Loaded model weights from the checkpoint at"):
            break
    written = last.read_bytes()
    time.sleep(1)  # into the pass (several seconds): past Lightning's handlers, set just after that line
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Best checkpoint" not in stdout and last.read_bytes() == written
    assert load(last)["global_step"] == 20
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("lit-nanogpt: stopped")]
    assert line.startswith("lit-nanogpt: stopped by SIGTERM at step 20: in the final validation, after training ended "
                           "(checkpoints and export complete); resume with: lit-nanogpt fit ")  # fmt: skip
    assert line.endswith(" --ckpt_path last") and "Traceback" not in stderr
    # That resume trains no further and runs the final pass.
    assert main([*args, "--ckpt_path", "last"]) == 0
    assert load(last)["global_step"] == 20


def test_two_fits_started_together_into_one_folder_one_trains_and_the_other_is_refused(
    callbacks_config: Path, tmp_path: Path
) -> None:
    from lit_nanogpt.checkpoint import load_model
    from lit_nanogpt.cli import LitNanoGPTCLI
    from lit_nanogpt.export import ExportedGPT

    config = tmp_path / "with_export.yaml"
    config.write_text(callbacks_config.read_text() + "    - class_path: lit_nanogpt.callbacks.OnnxExport\n")
    root = tmp_path / "run"
    procs = [start_fit(fit_args(root, config, STEPS)) for _ in range(2)]  # one command, typed twice at once
    outputs = [proc.communicate(timeout=300) for proc in procs]
    by_status = {proc.returncode: (proc, out) for proc, out in zip(procs, outputs, strict=True)}
    assert sorted(by_status) == [0, 1], [err[-3000:] for _, (_, err) in by_status.values()]
    winner, (stdout, _) = by_status[0]
    _, (_, refused) = by_status[1]
    # The loser: one line naming the folder, the holder and the way out; nothing of it in the folder.
    fix = f"is running in {root}: wait for it to end, or pass another --trainer.default_root_dir"
    lines = [ln for ln in refused.splitlines() if ln.startswith("lit-nanogpt:")]
    assert lines in ([f"lit-nanogpt: error: another fit (pid {winner.pid}) {fix}"],
                     [f"lit-nanogpt: error: another fit {fix}"])  # fmt: skip  # (before the winner wrote its pid)
    assert "Traceback" not in refused
    assert sorted(p.name for p in root.iterdir()) == [".lit-nanogpt.lock", "checkpoints", "config.yaml", "export"]
    assert (root / ".lit-nanogpt.lock").read_text() == ""  # the winner ended: no pid left to name
    # The winner: the best checkpoint it printed scores the val_loss it printed, and the export holds its weights.
    best = root / "checkpoints" / "best.ckpt"
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("Best checkpoint: ")]
    printed = float(line.split("(val_loss=")[1].rstrip(")"))
    assert line == f"Best checkpoint: {best} (val_loss={printed:.4f})"
    cli = LitNanoGPTCLI(args=["validate", f"--ckpt_path={best}", "--trainer.limit_val_batches=2",
                              "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert cli.trainer.callback_metrics["val_loss"].item() == pytest.approx(printed, abs=5e-5)
    exported = ExportedGPT(root / "export")
    assert exported.manifest.source == str(best)
    model, vocab = load_model(best)
    ctx = torch.from_numpy(vocab.encode("ROMEO:"))[None]  # (1, T)
    with torch.no_grad():
        logits = model(ctx)[0][:, -1]  # (1, V)
    torch.testing.assert_close(torch.from_numpy(exported.full(ctx.numpy())), logits, rtol=0, atol=1e-4)


def test_resume_refuses_another_model_or_corpus(
    reference_run: Path, callbacks_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    last = reference_run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    resume = fit_args(reference_run, callbacks_config, STEPS + 10, "--ckpt_path", "last")
    assert main([*resume, "--model.arch.n_embd=64", "--model.learning_rate=3e-3"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"lit-nanogpt: error: fit --ckpt_path {last} resumes that run with its own model")
    changes = "--model.arch.n_embd=64 (the checkpoint has 32), --model.learning_rate=0.003 (the checkpoint has 0.01)"
    assert changes in line
    # A value typed back to its default is named too (the run was made with learning_rate 1e-2, not the 1e-3 default).
    assert main([*resume, "--model.learning_rate", "1e-3"]) == 1
    assert "--model.learning_rate=0.001 (the checkpoint has 0.01)" in capsys.readouterr().err.strip().splitlines()[-1]
    corpus = tmp_path / "other.txt"
    corpus.write_text("".join(sorted(set((ROOT / "lit_nanogpt/assets/tinyshakespeare.txt").read_text()))) * 200)
    assert main([*resume, f"--data.data_path={corpus}"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"was trained on {ROOT / 'lit_nanogpt/assets/tinyshakespeare.txt'} (sha256 86c4e6aa9db7)" in line
    assert f"not on {corpus}" in line and "--data.data_path" in line
    # A new run into a folder with results is refused too, naming the ways out.
    assert main(fit_args(reference_run, callbacks_config, 5)) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{reference_run} already holds a run's results (checkpoints/{{best.ckpt, last.ckpt}})" in line
    assert "--ckpt_path last" in line and "--trainer.default_root_dir" in line and "--overwrite true" in line
    assert last.read_bytes() == before


def test_non_finite_loss_stops_saving_and_exporting_nothing(
    callbacks_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lit_nanogpt.checkpoint_io import AtomicCheckpointIO

    config = tmp_path / "with_export.yaml"
    config.write_text(callbacks_config.read_text() + "    - class_path: lit_nanogpt.callbacks.OnnxExport\n")
    saved: dict[Path, tuple[int, bytes]] = {}
    real_save = AtomicCheckpointIO.save_checkpoint

    def save_and_remember(self, checkpoint, path, storage_options=None):  # noqa: ANN001, ANN202
        real_save(self, checkpoint, path, storage_options)
        saved[Path(path)] = (checkpoint["global_step"], Path(path).read_bytes())

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_and_remember)
    root = tmp_path / "run"
    args = fit_args(root, config, STEPS, "--model.learning_rate=3e2", "--model.warmup_iters=100",
                    "--trainer.val_check_interval=10")  # fmt: skip
    assert main(args) == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lit-nanogpt: error:")]
    step = int(line.split(" at step ")[1].split(":")[0])
    assert line.startswith("lit-nanogpt: error: the training loss is nan")
    assert "--model.learning_rate" in line and "bf16-mixed" in line and "gradient_clip_val" in line
    best, last = root / "checkpoints" / "best.ckpt", root / "checkpoints" / "last.ckpt"
    assert set(saved) == {best, last}  # both written before the loss broke ...
    for path, (saved_step, data) in saved.items():
        assert saved_step < step
        assert path.read_bytes() == data  # ... and not touched since
        assert all(torch.isfinite(t).all() for t in load(path)["state_dict"].values())
    assert not [p.name for p in root.iterdir() if "export" in p.name]  # no export, not even a partial one


def test_validation_loss_propagates_nan() -> None:
    from lit_nanogpt.model import GPTConfig
    from lit_nanogpt.module import LitGPT

    module = LitGPT(GPTConfig(**TINY, vocab_size=65))
    module.val_loss.update(torch.tensor(2.0), weight=10)
    module.val_loss.update(torch.tensor(1.0), weight=30)
    assert module.val_loss.compute().item() == 1.25  # weighted, as before
    module.val_loss.update(torch.tensor(float("nan")), weight=10)
    assert module.val_loss.compute().isnan()  # torchmetrics' default would drop it and report 1.25


def test_damaged_corpus_cache_is_detected_and_rebuilt(
    reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lit_nanogpt.cli import LitNanoGPTCLI

    cache = tmp_path / "cache"
    ckpt = reference_run / "checkpoints" / "last.ckpt"

    def val_loss() -> float:
        quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        cli = LitNanoGPTCLI(args=["validate", f"--ckpt_path={ckpt}", f"--data.cache_dir={cache}", *quiet])
        return cli.trainer.callback_metrics["val_loss"].item()

    clean = val_loss()
    (folder,) = cache.iterdir()
    sizes = {name: (folder / name).stat().st_size for name in ("train.bin", "val.bin")}
    for name, keep in (("val.bin", 0.5), ("train.bin", 0.1)):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])
        assert val_loss() == clean  # the same loss as from a clean cache ...
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "corpus cache" in ln]
        assert lines == [f"lit-nanogpt: corpus cache {folder}: {name} has {int(sizes[name] * keep)} bytes, "
                         f"meta.json says {sizes[name]}; rebuilding it"]  # fmt: skip
        assert {n: (folder / n).stat().st_size for n in sizes} == sizes  # ... because it was rebuilt
    # Same size, other bytes: the checksum finds it.
    data = bytearray((folder / "val.bin").read_bytes())
    data[100] ^= 1
    (folder / "val.bin").write_bytes(bytes(data))
    assert val_loss() == clean
    assert "val.bin does not match its sha256 in meta.json; rebuilding it" in capsys.readouterr().err


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small or read-only filesystem at ``path`` (needs root; skipped where mounting is not allowed)."""
    path.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        run(["umount", str(path)], check=True)


def error_line(capsys: pytest.CaptureFixture) -> str:
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lit-nanogpt: error:")]
    return line


def test_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
    callbacks_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # 600 kB: config.yaml and one 365 kB checkpoint fit, a second beside it (written, then renamed) does not.
    with tmpfs(tmp_path / "small", "size=600k") as root:
        assert main(fit_args(root, callbacks_config, 30)) == 1
        line = error_line(capsys)
        last = root / "checkpoints" / "last.ckpt"
        assert line == (f"lit-nanogpt: error: no space left on the device holding {last}: free some space, or pass "
                        "another --trainer.default_root_dir (export: --out) or --data.cache_dir")  # fmt: skip
        assert load(last)["global_step"] == EVERY  # the earlier checkpoint, whole
        assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]  # no stray temp file
        assert oct(last.stat().st_mode & 0o777) == oct(0o666 & ~umask())  # as a plain open would make it


def test_read_only_run_and_export_folders_stop_with_one_line(
    callbacks_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with tmpfs(tmp_path / "ro", "size=1m,ro") as read_only:
        assert main(fit_args(read_only / "run", callbacks_config, 5)) == 1
        assert error_line(capsys) == (
            f"lit-nanogpt: error: cannot write {read_only / 'run'} (Read-only file system): make it writable, or pass "
            "another --trainer.default_root_dir (export: --out) or --data.cache_dir"
        )
        config = tmp_path / "export.yaml"
        config.write_text(callbacks_config.read_text() + "    - class_path: lit_nanogpt.callbacks.OnnxExport\n"
                          f"      init_args: {{dirpath: {read_only / 'export'}}}\n")  # fmt: skip
        root = tmp_path / "run"
        assert main(fit_args(root, config, 5)) == 1
        assert f"error: cannot write {read_only / 'export'} (Read-only file system)" in error_line(capsys)
        assert list(read_only.iterdir()) == []
        assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 5  # the run's checkpoint loads


def test_leftovers_of_interrupted_writes_are_removed_by_the_next_fit(
    callbacks_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / "checkpoints" / ".last.ckpt.abc123.tmp", tmp_path / ".export.partial-xyz"]
    leftovers[0].write_bytes(b"half a checkpoint")
    (leftovers[1] / "model.onnx").parent.mkdir()
    (leftovers[1] / "model.onnx").write_bytes(b"half an export")
    config = tmp_path / "export.yaml"
    config.write_text(callbacks_config.read_text() + "    - class_path: lit_nanogpt.callbacks.OnnxExport\n")
    # dropout 0: OnnxExport exports the final weights of a 2-step run (no validation yet) as they are, in train mode
    assert main(fit_args(tmp_path, config, 2, "--model.arch.dropout=0.0")) == 0
    assert "removed 2 leftover(s) of interrupted writes" in capsys.readouterr().err
    assert not any(p.exists() for p in leftovers)
