"""``--amx_precision``: bf16 autocast where the CPU has AMX-BF16, the configured precision elsewhere.

The detection is monkeypatched both ways (this project's CPUs have no AMX); what is asserted is the precision
plugin the Trainer was actually built with, and the autocast its training step runs under.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from lit_nanogpt import cpu
from lit_nanogpt.cli import LitNanoGPTCLI
from tests.helpers import ROOT, TINY

CONFIG = ROOT / "configs" / "shakespeare_char_10m_cpu.yaml"


def test_amx_bf16_reads_torchs_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": True})
    assert cpu.amx_bf16() is True
    # AVX-512 BF16 alone (this project's AMD EPYC) is not AMX.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True})
    assert cpu.amx_bf16() is False


def test_amx_bf16_falls_back_to_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A torch without ``torch.cpu.get_capabilities``: Linux's flags line, read whole words only."""
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu, "CPUINFO", cpuinfo)
    cpuinfo.write_text("model name\t: Intel Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert cpu.amx_bf16() is True
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 xamx_bf16x\n")
    assert cpu.amx_bf16() is False
    cpuinfo.unlink()  # no /proc: cannot tell, so no
    assert cpu.amx_bf16() is False


def test_the_option_means_nothing_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "amx_bf16", lambda: True)
    assert cpu.amx_choice("bf16-mixed", "bf16-mixed", on_cpu=False) == (
        "bf16-mixed",
        "--amx_precision bf16-mixed applies to CPU runs only: training in bf16-mixed",
    )


def _trainer(*args: str) -> LitNanoGPTCLI:
    tiny = [f"--model.arch.{k}={v}" for k, v in TINY.items()]
    return LitNanoGPTCLI(args=["--config", str(CONFIG), *tiny, "--trainer.logger=false", *args], run=False)


@pytest.mark.parametrize("has_amx", [True, False], ids=["amx", "no-amx"])
def test_the_10m_cpu_recipe_trains_in_bf16_only_where_the_cpu_has_amx(
    has_amx: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cpu, "amx_bf16", lambda: has_amx)
    trainer = _trainer().trainer
    plugin = trainer.strategy.precision_plugin
    if has_amx:
        assert trainer.precision == "bf16-mixed"
        assert type(plugin) is MixedPrecision and plugin.device == "cpu" and plugin.scaler is None
        line = "lit-nanogpt: this CPU has AMX-BF16: training in bf16-mixed (--amx_precision) instead of 32-true"
    else:
        assert trainer.precision == "32-true" and type(plugin) is Precision
        line = ("lit-nanogpt: this CPU has no AMX-BF16: training in 32-true (--amx_precision bf16-mixed applies only "
                "where it has)")  # fmt: skip
    assert capsys.readouterr().err.splitlines() == [line]
    # The step runs under the autocast the plugin gives (bf16 matmuls), or under none.
    model = torch.nn.Linear(8, 8)
    with plugin.train_step_context():
        assert torch.is_autocast_enabled("cpu") is has_amx
        out = model(torch.randn(2, 8))
    assert out.dtype == (torch.bfloat16 if has_amx else torch.float32)


def test_without_the_option_nothing_changes_or_is_said(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cpu, "amx_bf16", lambda: True)
    trainer = _trainer("--amx_precision=null", "--trainer.precision=32-true").trainer
    assert trainer.precision == "32-true" and type(trainer.strategy.precision_plugin) is Precision
    assert "AMX" not in capsys.readouterr().err
