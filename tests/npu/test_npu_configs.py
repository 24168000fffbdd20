"""Every shipped config parses through the CLI, and states its command and expected result up front."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from lit_nanogpt.cli import FIT_DEFAULTS, LitNanoGPTCLI
from tests.helpers import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses_through_the_cli(config: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        LitNanoGPTCLI(args=["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    parsed, written = yaml.safe_load(out.getvalue()), yaml.safe_load(config.read_text())
    # The whole resolved config: the recipe on top of the defaults every fit starts from.
    defaults = yaml.safe_load(FIT_DEFAULTS.read_text())["trainer"]
    assert [c["class_path"] for c in parsed["trainer"]["callbacks"]] == [c["class_path"] for c in defaults["callbacks"]]
    assert parsed["trainer"]["logger"]["class_path"] == defaults["logger"]["class_path"]
    assert parsed["trainer"]["gradient_clip_val"] == defaults["gradient_clip_val"] == 1.0
    for section in ("trainer", "model", "data"):
        for key, value in written.get(section, {}).items():
            if key != "callbacks":
                assert_within(value, parsed[section][key], f"{config.name}: {section}.{key}")


def assert_within(written: object, parsed: object, where: str) -> None:
    """Every value the file sets is what the CLI resolved (the CLI adds defaults beside them)."""
    if isinstance(written, dict):
        assert isinstance(parsed, dict), where
        for key, value in written.items():
            assert_within(value, parsed.get(key), f"{where}.{key}")
    else:
        assert parsed == written, where


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_header_gives_command_and_result(config: Path) -> None:
    header = [line for line in config.read_text().splitlines() if line.startswith("#")]
    assert f"lit-nanogpt fit --config configs/{config.name}" in "\n".join(header)
    assert "loss" in "\n".join(header).lower()
