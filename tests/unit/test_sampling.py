"""The sampling settings are defined once, in ``SamplingSettings``, and read the same by their three users:
``generate``, the data module's ``predict`` settings and the ``ValidationSamples`` callback."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docstring_parser
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from lit_nanogpt.callbacks.validation_samples import ValidationSamples

from lit_nanogpt.cli import LitNanoGPTCLI
from lit_nanogpt.commands import main
from lit_nanogpt.data import Vocabulary
from lit_nanogpt.model import GPTConfig
from lit_nanogpt.module import LitGPT
from lit_nanogpt.sampling import SamplingSettings
from tests.helpers import NANOGPT_BABY, TINY, error_of


def help_text(capsys: pytest.CaptureFixture, *args: str) -> str:
    """What ``lit-nanogpt ARGS`` prints before it exits, with the line wrapping undone."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "args,prefix,defaults",
    [
        (["generate", "--help"], "--", SamplingSettings()),
        (["fit", "--help"], "--data.", SamplingSettings()),
        (
            ["fit", "--trainer.callbacks.help", "ValidationSamples"],
            "--trainer.callbacks.",
            SamplingSettings(max_new_tokens=100),
        ),
    ],
    ids=["generate", "predict", "ValidationSamples"],
)
def test_each_user_shows_the_settings_names_and_help_from_one_place(
    capsys: pytest.CaptureFixture, args: list[str], prefix: str, defaults: SamplingSettings
) -> None:
    docs = {p.arg_name: p.description for p in docstring_parser.parse(SamplingSettings.__doc__).params}
    assert docs.keys() == {f.name for f in fields(SamplingSettings)} and all(docs.values())
    text = help_text(capsys, *args)
    for name, default in asdict(defaults).items():
        default_text = "null" if default is None else default
        option = rf"{re.escape(prefix + name)} {name.upper()} {re.escape(docs[name])} \(type: [^)]*, default: "
        assert re.search(option + rf"{default_text}\)", text), f"{prefix}{name} lacks its help or default {default}"


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("max_new_tokens", 0, "max_new_tokens=0 must be at least 1"),
        ("temperature", -0.5, "temperature=-0.5 must be >= 0"),
        ("top_k", 0, "top_k=0 must be at least 1 (1 is greedy)"),
        ("num_samples", 0, "num_samples=0 must be at least 1"),
    ],
)
def test_each_user_refuses_a_bad_setting_with_the_same_line(
    capsys: pytest.CaptureFixture, tmp_path: Path, name: str, value: float, message: str
) -> None:
    # Checked before anything is loaded: the checkpoint need not exist.
    assert message in error_of(capsys, "generate", f"--checkpoint={tmp_path / 'x.ckpt'}", f"--{name}={value}")
    assert message in error_of(capsys, "predict", f"--data.{name}={value}")
    with pytest.raises(ValueError, match=re.escape(message)):
        ValidationSamples(**{name: value})


class RecordingWandbLogger(WandbLogger):
    """Keeps what ``log_text`` is given; starts no W&B run."""

    def __init__(self) -> None:
        self.tables: list[tuple[str, list[str], list[list[Any]], int]] = []

    def log_text(self, key: str, columns: list[str], data: list[list[Any]], step: int | None = None) -> None:
        self.tables.append((key, columns, [list(row) for row in data], step))


def test_validation_samples_draws_num_samples_per_prompt_the_same_at_every_validation() -> None:
    vocab = Vocabulary("\nabcd")
    module = LitGPT(GPTConfig(**TINY, vocab_size=len(vocab)))
    module.vocab = vocab
    logger = RecordingWandbLogger()
    trainer = SimpleNamespace(loggers=[logger], sanity_checking=False, state=SimpleNamespace(fn="fit"),
                              is_global_zero=True, global_step=4)  # fmt: skip
    callback = ValidationSamples(prompts=["a", "ba"], max_new_tokens=6, num_samples=3, temperature=1.0)
    assert asdict(callback.sampling) == asdict(SamplingSettings(max_new_tokens=6, temperature=1.0, num_samples=3))
    assert asdict(ValidationSamples().sampling) == asdict(SamplingSettings(max_new_tokens=100))  # its own default
    callback.on_validation_end(trainer, module)  # type: ignore[arg-type]
    trainer.global_step = 8
    callback.on_validation_end(trainer, module)  # type: ignore[arg-type]
    (_, _, first, _), (key, columns, rows, step) = logger.tables
    assert key == "samples" and columns == ["step", "prompt", "text"] and step == 8
    assert [row[:2] for row in rows] == [[s, p] for s in (4, 8) for p in ("a",) * 3 + ("ba",) * 3]
    texts = [row[2] for row in rows]
    assert all(len(t) == 6 and not vocab.unknown(t) for t in texts)
    assert len(set(texts[:3])) > 1  # three draws, not one sample repeated
    assert texts[:6] == texts[6:] and rows[:6] == first  # the same seed at every validation


def test_checkpoint_from_before_sampling_settings_predicts_with_its_own(baby_ckpt: Path, tmp_path: Path) -> None:
    """Earlier checkpoints hold the data module's sampling settings as flat hyperparameters, as new ones do."""
    expected = json.loads((NANOGPT_BABY / "expected.json").read_text())
    ckpt = torch.load(baby_ckpt, map_location="cpu", weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {
        "data_path": None, "block_size": 64, "batch_size": 64, "val_batch_size": 128, "val_fraction": 0.1,
        "cache_dir": None, "prompts": ["ROMEO:"], "num_samples": 2, "max_new_tokens": 20, "temperature": 0.0,
        "top_k": None,
    }  # fmt: skip
    torch.save(ckpt, tmp_path / "old.ckpt")
    out = tmp_path / "samples.jsonl"
    cli = LitNanoGPTCLI(args=["predict", f"--ckpt_path={tmp_path / 'old.ckpt'}", f"--sample_writer.output={out}",
                              "--sample_writer.quiet=true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert cli.datamodule.sampling == SamplingSettings(max_new_tokens=20, temperature=0.0, top_k=None, num_samples=2)
    greedy = expected["greedy"][: len("ROMEO:") + 20]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"prompt": "ROMEO:", "sample": i, "max_new_tokens": 20, "temperature": 0.0, "top_k": None, "num_samples": 2,
         "text": greedy}
        for i in range(2)
    ]  # fmt: skip
