"""What a user sees, through real processes of the CLI: one-line errors, streamed samples, a checkpoint
that needs no corpus, any corpus training with the shipped configs, and a README that leaves the checkout clean."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli

CPU_CONFIG = ROOT / "configs/shakespeare_char_cpu.yaml"


def one_error_line(result) -> str:
    """The process failed with exactly one line on stderr, ``lit-nanogpt: error: ...``; that line."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lit-nanogpt: error: "), result.stderr
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_accelerator_without_cuda_is_one_line() -> None:
    line = one_error_line(
        run_cli(
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


def test_yaml_typo_names_the_file_the_key_and_the_fix(tmp_path: Path) -> None:
    typo = tmp_path / "mine.yaml"
    typo.write_text("trainer:\n  max_step: 3\nmodel:\n  arch:\n    n_layer: 2\n")
    line = one_error_line(run_cli("fit", "--config", str(CPU_CONFIG), "--config", str(typo)))
    assert line == (
        f"lit-nanogpt: error: {typo}: trainer.max_step is not an option of lit-nanogpt fit; "
        "did you mean trainer.max_steps?"
    )
    line = one_error_line(run_cli("fit", "--trainer.max_stepz=3"))
    assert line.endswith("--trainer.max_stepz is not an option of lit-nanogpt fit; did you mean --trainer.max_steps?")
