"""What a user sees: one-line errors, streamed samples, a checkpoint that needs no corpus, any corpus training with
the shipped configs, and a README that leaves the checkout clean. A fit and the streamed samples run as real
processes; the rest goes through the command table's ``main`` in this process (test_cli.py holds the real-process
check of the one-line error and its exit code)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import NANOGPT_BABY, ROOT, TINY, RunIf, cli, export_baby, run_cli

CPU_CONFIG = ROOT / "configs/shakespeare_char_cpu.yaml"


def one_error_line(result) -> str:
    """The process failed with exactly one line on stderr, ``lit-nanogpt: error: ...``; that line."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lit-nanogpt: error: "), result.stderr
    return lines[0]


@RunIf(without_cuda=True)
def test_cuda_accelerator_without_cuda_is_one_line(capfd: pytest.CaptureFixture) -> None:
    line = one_error_line(
        cli(
            capfd,
            "fit",
            "--config",
            str(CPU_CONFIG),
            "--trainer.accelerator",
            "cuda",
            "--trainer.logger=false",
            "--seed_everything=false",
        )  # fmt: skip
    )
    assert "--trainer.accelerator cuda: no cuda device is available" in line and "--trainer.accelerator cpu" in line


def test_yaml_typo_names_the_file_the_key_and_the_fix(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    typo = tmp_path / "mine.yaml"
    typo.write_text("trainer:\n  max_step: 3\nmodel:\n  arch:\n    n_layer: 2\n")
    line = one_error_line(cli(capfd, "fit", "--config", str(CPU_CONFIG), "--config", str(typo)))
    assert line == (
        f"lit-nanogpt: error: {typo}: trainer.max_step is not an option of lit-nanogpt fit; "
        "did you mean trainer.max_steps?"
    )
    line = one_error_line(cli(capfd, "fit", "--trainer.max_stepz=3"))
    assert line.endswith("--trainer.max_stepz is not an option of lit-nanogpt fit; did you mean --trainer.max_steps?")


CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# The character-level recipes: a corpus without a newline changes their vocabulary (and so their default prompt).
CHAR_CONFIGS = [c for c in CONFIGS if c.name.startswith("shakespeare_char")]


NO_NEWLINE = (ROOT / "lit_nanogpt/assets/tinyshakespeare.txt").read_text()[:40_000].replace("\n", " ")


@pytest.fixture(scope="module")
def no_newline_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each character-level config's fit, tiny, on a corpus without a newline: {config name: (corpus, run folder,
    W&B dir, the finished process or None)}. nanoGPT's CPU recipe runs as a user runs it, a real process whose output
    the tests read; while it runs, the other configs fit one after another inside this process (what they add is
    their own options, not another process's start-up).

    The GPU and NPU recipes run on the CPU here, in fp32 and uncompiled; what they share with the others
    (callbacks, logger, sampling) is the point.
    """
    import contextlib
    import io

    import wandb

    from lit_nanogpt.commands import main

    def prepare(config: Path) -> tuple[Path, Path, Path, Path, list[str]]:
        tmp = tmp_path_factory.mktemp(config.stem)
        corpus, root, wandb_dir = tmp / "no_newline.txt", tmp / "run", tmp / "wandb"
        corpus.write_text(NO_NEWLINE)
        args = [
            "fit", "--config", str(config), *(f"--model.arch.{k}={v}" for k, v in TINY.items()),
            f"--data.data_path={corpus}", "--trainer.accelerator=cpu", "--trainer.max_steps=4",
            "--trainer.precision=32-true", "--model.compile=false",  # the GPU recipes' bf16 and compile: slow here
            "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2", "--data.val_batch_size=64",
            f"--trainer.default_root_dir={root}",
        ]  # fmt: skip
        return tmp, corpus, root, wandb_dir, args

    tmp, cpu_corpus, cpu_root, cpu_wandb, args = prepare(CPU_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # what a user sees, not the suite's quiet
    own = {"WANDB_MODE": "offline", "WANDB_DIR": str(cpu_wandb), "LIT_NANOGPT_CACHE": str(tmp / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "lit_nanogpt", *args], cwd=ROOT, text=True,
                            env={**env, **own, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    runs: dict[str, tuple] = {}
    for config in CHAR_CONFIGS:
        if config == CPU_CONFIG:
            continue
        tmp, corpus, root, wandb_dir, args = prepare(config)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WANDB_MODE", "offline")
            mp.setenv("WANDB_DIR", str(wandb_dir))
            mp.setenv("WANDB_SILENT", "true")
            mp.setenv("LIT_NANOGPT_CACHE", str(tmp / "cache"))
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(args)
            wandb.finish()  # Lightning leaves the run open for later calls
            wandb.teardown()  # and wandb-core may still be writing the file after finish() returns
        assert code == 0, config.name
        runs[config.name] = (corpus, root, wandb_dir, None)
    stdout, stderr = proc.communicate(timeout=600)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, f"{CPU_CONFIG.name}: {result.stderr[-2000:]}"
    runs[CPU_CONFIG.name] = (cpu_corpus, cpu_root, cpu_wandb, result)
    return runs


@pytest.mark.parametrize("config", [c.name for c in CHAR_CONFIGS])
def test_corpus_without_newline_trains_with_every_shipped_config(no_newline_runs: dict, config: str) -> None:
    corpus, root, wandb_dir, _ = no_newline_runs[config]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "\n" not in ckpt["vocab"] and ckpt["vocab"][0] == " "
    assert ckpt["CharDataModule"]["corpus"] == str(corpus)  # which text validate/test need
    assert len(ckpt["CharDataModule"]["sha256"]) == 64
    # The validation samples continued the vocabulary's first character, since there is no newline.
    tables = wandb_dir.glob("wandb/offline-run-*/files/media/table/samples_*.table.json")
    rows = max((json.loads(t.read_text())["data"] for t in tables), key=len)  # the last table holds every row
    assert [row[:2] for row in rows] == [[2, " "], [4, " "]]
    assert all(len(text) == 100 and not set(text) - set(ckpt["vocab"]) for _, _, text in rows)


def test_fit_says_what_a_user_needs_once_and_plainly(no_newline_runs: dict) -> None:
    _, root, wandb_dir, result = no_newline_runs["shakespeare_char_cpu.yaml"]
    # stdout: the result only (progress bars are on stderr), with no colour codes.
    assert result.stdout.splitlines() == [f"Best checkpoint: {root / 'checkpoints' / 'best.ckpt'} (val_loss=" +
                                          result.stdout.split("(val_loss=")[1].rstrip("\n")]  # fmt: skip
    lines = result.stderr.replace("\r", "\n").splitlines()
    assert not [ln for ln in lines if ln.startswith("wandb:") or "WARNING" in ln or "\x1b[1" in ln], result.stderr
    (sync,) = [ln for ln in lines if "wandb sync" in ln]
    assert sync.startswith(f"W&B run saved offline; upload it later with: wandb sync {wandb_dir}/wandb/offline-run-")
    (atc,) = [ln for ln in lines if "atc" in ln]
    assert atc == f"atc is not on PATH: compile for Ascend310P3 later with {root / 'export' / 'atc_command.sh'}"


def test_predict_needs_only_the_checkpoint_and_validate_names_the_corpus_it_needs(
    no_newline_runs: dict, capfd: pytest.CaptureFixture
) -> None:
    corpus, root, _, _ = no_newline_runs["shakespeare_char_cpu.yaml"]
    best = root / "checkpoints" / "best.ckpt"
    vocab = torch.load(best, map_location="cpu", weights_only=True)["vocab"]
    corpus.unlink()
    pred = cli(capfd, "predict", f"--ckpt_path={best}", "--data.max_new_tokens=30", "--data.num_samples=2")
    assert pred.returncode == 0, pred.stderr
    assert "Couldn't infer the batch indices" not in pred.stderr and "Predicting" in pred.stderr  # the bar
    samples = pred.stdout.split("---------------\n")
    assert len(samples) == 3 and samples[2] == ""
    assert all(s.startswith(" ") and len(s) == 1 + 30 + 1 and not set(s[:-1]) - set(vocab) for s in samples[:2])
    # Another corpus changes nothing: the vocabulary is the checkpoint's.
    shakespeare = ROOT / "lit_nanogpt/assets/tinyshakespeare.txt"
    pred = cli(capfd, "predict", f"--ckpt_path={best}", f"--data.data_path={shakespeare}", "--data.max_new_tokens=5")
    assert pred.returncode == 0, pred.stderr

    line = one_error_line(cli(capfd, "validate", f"--ckpt_path={best}", "--seed_everything=false"))
    assert f"validate needs the validation split of the corpus {best} was trained on, {corpus} (sha256 " in line
    # With the corpus back, validate runs, without Lightning's advice to pass the training callbacks.
    corpus.write_text(NO_NEWLINE)
    val = cli(capfd, "validate", f"--ckpt_path={best}", "--trainer.limit_val_batches=2")
    assert val.returncode == 0 and "val_loss" in val.stdout, val.stderr
    assert "Be aware that when using `ckpt_path`" not in val.stderr

    # Found once the Trainer is up (after Lightning's device lines): the last line, and the only error.
    test = cli(capfd, "test", f"--ckpt_path={best}", f"--data.data_path={shakespeare}")
    assert test.returncode == 1 and "Traceback" not in test.stderr
    assert [ln for ln in test.stderr.splitlines() if "error" in ln.lower()] == test.stderr.splitlines()[-1:]
    assert test.stderr.splitlines()[-1].endswith(
        f"has 65 characters, not the checkpoint's {len(vocab)}: pass --data.data_path with the text the model was "
        "trained on"
    )


@pytest.fixture(scope="module")
def baby_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """nanoGPT's baby checkpoint, imported, and its ONNX export: (checkpoint, export folder)."""
    return export_baby(tmp_path_factory.mktemp("baby"), int8=False)


@pytest.mark.parametrize("backend", ["--checkpoint", "--onnx"])
def test_generate_streams_each_character_as_it_is_drawn(baby_export: tuple[Path, Path], backend: str) -> None:
    greedy = json.loads((NANOGPT_BABY / "expected.json").read_text())["greedy"]  # "ROMEO:" and 200 characters
    source = str(baby_export[0] if backend == "--checkpoint" else baby_export[1])
    args = [sys.executable, "-m", "lit_nanogpt", "generate", backend, source, "--prompt=ROMEO:", "--top_k=1"]
    # Far more characters than could be drawn before the first ones are read: the process must still be running.
    proc = subprocess.Popen([*args, "--max_new_tokens=1000000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        first = proc.stdout.read(len(greedy[:40]))  # type: ignore[union-attr]
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert first.decode() == greedy[:40]

    # nanoGPT's layout for each sample; the timing line counts generated tokens only, the loading on its own line.
    done = run_cli(
        "generate", backend, source, "--prompt=ROMEO:", "--top_k=1", "--max_new_tokens=50", "--num_samples=2"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (greedy[: 6 + 50] + "\n---------------\n") * 2
    loaded, timing = done.stderr.splitlines()[-2:]
    assert re.fullmatch(rf"Loaded {re.escape(source)} in [\d.]+ s", loaded)
    assert re.fullmatch(r"100 tokens in [\d.]+ s \([\d.]+ tokens/s\)", timing)


def test_readme_commands_write_under_runs_which_git_ignores() -> None:
    """A check on the README's text rather than running every command (a full fit each): every path a README
    command writes to, and every config's run folder, lies under runs/, which .gitignore lists."""
    readme = (ROOT / "README.md").read_text()
    written = re.findall(r"--(?:out|output|default_root_dir)[ =](\S+)", readme)
    assert len(written) >= 3 and all(path.startswith("runs/") for path in written), written
    for config in CONFIGS:
        assert yaml.safe_load(config.read_text())["trainer"]["default_root_dir"].startswith("runs/"), config.name
    assert "runs/" in (ROOT / ".gitignore").read_text().splitlines()


def test_learning_rate_decay_follows_max_steps_unless_a_recipe_sets_it() -> None:
    decay = {c.name: yaml.safe_load(c.read_text())["model"].get("lr_decay_iters") for c in CONFIGS}
    assert decay == {
        "shakespeare_char.yaml": None,
        "shakespeare_char_10m_cpu.yaml": None,
        "shakespeare_char_cpu.yaml": 2000,
        "shakespeare_char_cpu_fast.yaml": None,
        "shakespeare_char_fast.yaml": None,
        "shakespeare_char_fast_npu.yaml": None,
        "shakespeare_char_npu.yaml": None,
        "shakespeare_gpt2_cpu.yaml": None,
    }
