"""Ascend NPU wiring, proved without the hardware: a stand-in ``torch_npu`` (tests/fake_npu.py) in a
subprocess, since torch's backend rename cannot be undone, and the real absence of one here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

import lit_nanogpt
from lit_nanogpt.cli import LitNanoGPTCLI
from lit_nanogpt.npu import NPUAccelerator, NPUPrecision, SingleNPUStrategy, npu_available
from tests.helpers import ROOT, RunIf, run_cli, run_python

NPU_CONFIG = ROOT / "configs" / "shakespeare_char_npu.yaml"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What lit-nanogpt builds with a two-card fake NPU registered (one interpreter for all checks)."""
    cwd = tmp_path_factory.mktemp("fake_npu")  # the CLI may write relative paths: keep them out of the repo
    proc = run_python(
        str(ROOT / "tests" / "fake_npu.py"),
        str(NPU_CONFIG),
        cwd=cwd,
        # On an Ascend host torch would load the real torch_npu at `import torch`; the fake replaces it.
        env={"PYTHONPATH": str(ROOT), "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fake_npu_is_seen_only_once_installed(fake: dict) -> None:
    assert fake["available_before"] is False
    assert fake["available"] is True


def test_fake_behaves_as_torch_npu_2_13(fake: dict) -> None:
    """The parts of torch_npu the project leans on (tests/fake_npu.py cites the lines each copies)."""
    seen = fake["fake"]
    assert seen["stats_before_init"] == {}
    assert seen["set_device_cpu"].startswith("ValueError: Expected a npu device, but got: cpu")
    assert seen["amp_dtypes"] == ["torch.float16", "torch.bfloat16", "torch.float32"]
    assert seen["cuda_stream"] == "RuntimeError: torch.cuda.Stream requires CUDA support"


def test_ddp_wraps_the_model_on_an_npu_stream_never_cuda(fake: dict) -> None:
    """Lightning's DDPStrategy wraps under torch.cuda.Stream(), which a torch_npu host (a CPU torch) lacks."""
    setup = fake["ddp_setup"]
    assert "error" not in setup, setup["error"]
    assert setup["root_device"] == "npu:0" and setup["wrapped"] == "DistributedDataParallel"
    assert setup["device_ids"] == [0]
    assert setup["side_stream"] is True and setup["stream_device"] == "npu:0"  # as Lightning does on CUDA
    assert setup["stream_after_is_default"] is True
    assert setup["hook_registered"] is True  # Lightning registers ddp_comm_hook on CUDA only


def test_cli_config_trains_on_one_npu_in_fp16_amp(fake: dict) -> None:
    single = fake["single"]
    assert single["accelerator"] == "NPUAccelerator"
    assert single["strategy"] == "SingleNPUStrategy"
    assert single["root_device"] == "npu:0"
    assert single["plugin"] == "NPUPrecision" and single["plugin_device"] == "npu"
    assert single["scaler"] == "GradScaler" and single["scale"] == 2.0**16
    # torch's scaler on "npu", although the fake (as torch_npu) offers torch_npu.npu.amp.GradScaler
    assert single["scaler_class"] == "torch.amp.grad_scaler.GradScaler" and single["scaler_device"] == "npu"
    assert single["trainer_precision"] == "16-mixed"
    assert single["autocast_npu"] is True and single["autocast_dtype"] == "torch.float16"


@pytest.mark.parametrize("case", ["ddp", "ddp_by_index"])
def test_two_npus_give_ddp_over_hccl(fake: dict, case: str) -> None:
    ddp = fake[case]
    assert ddp["strategy"] == "DDPNPUStrategy"
    assert ddp["backend"] == "hccl"
    assert ddp["parallel_devices"] == ["npu:0", "npu:1"] and ddp["root_device"] == "npu:0"
    assert ddp["plugin"] == "NPUPrecision" and ddp["plugin_device"] == "npu" and ddp["scaler"] == "GradScaler"


def test_device_index_picks_the_card(fake: dict) -> None:
    assert fake["second_card"]["root_device"] == "npu:1"


@pytest.mark.parametrize(
    ("precision", "autocast", "dtype"),
    [("bf16-mixed", True, "torch.bfloat16"), ("32-true", False, None)],
)
def test_every_precision_gets_the_npu_plugin(fake: dict, precision: str, autocast: bool, dtype: str | None) -> None:
    run = fake[precision]
    assert run["plugin"] == "NPUPrecision" and run["plugin_device"] == "npu" and run["scaler"] is None
    assert run["trainer_precision"] == precision and run["root_device"] == "npu:0"
    assert run["autocast_npu"] is autocast
    if dtype:
        assert run["autocast_dtype"] == dtype


def test_documented_python_form(fake: dict) -> None:
    explicit = fake["python_form"]
    assert explicit["strategy"] == "SingleNPUStrategy" and explicit["root_device"] == "npu:1"
    assert explicit["plugin_device"] == "npu" and explicit["scaler"] == "GradScaler"
    assert explicit["trainer_precision"] == "16-mixed"


def test_unsupported_precision_is_named(fake: dict) -> None:
    assert "precision='16-true' is not supported on NPUs" in fake["16-true"]["error"]


def test_auto_takes_the_npu_when_there_is_one(fake: dict) -> None:
    assert fake["auto"]["accelerator"] == "NPUAccelerator" and fake["auto"]["root_device"] == "npu:0"


def test_parse_devices(fake: dict) -> None:
    parse = fake["parse"]
    assert parse["1"] == [0] and parse["2"] == [0, 1] and parse["-1"] == [0, 1] and parse["'auto'"] == [0, 1]
    assert parse["'0,1'"] == [0, 1] and parse["[1]"] == [1] and parse["[0, 1]"] == [0, 1] and parse["'1'"] == [0]
    assert "devices=3 asks for 3 NPUs but there are 2" in parse["3"]
    assert "no NPU [2]" in parse["[2]"] and "no NPU [5]" in parse["'0,5'"]
    assert parse["'x'"].startswith("ValueError: devices='x'") and "positive" in parse["0"]
    assert "asks for 3 NPUs" in fake["too_many"]["error"]


def test_ascend_rt_visible_devices_is_respected(fake: dict) -> None:
    assert fake["visible_one"]["auto_count"] == 1
    assert "ASCEND_RT_VISIBLE_DEVICES=1" in fake["visible_one"]["two"]


def test_descending_ascend_rt_visible_devices_is_named(fake: dict) -> None:
    """torch_npu sees no NPU at all then; the one line says why instead of "device_count() is 0"."""
    assert fake["visible_descending"]["count"] == 0
    error = fake["visible_descending"]["cli"]["error"]
    assert "ASCEND_RT_VISIBLE_DEVICES=1,0 must list NPU numbers in ascending order" in error
    assert "set_env.sh" not in error  # not an installation problem


def test_num_nodes_gives_ddp_over_hccl_on_one_card_per_node(fake: dict) -> None:
    run = fake["two_nodes"]
    assert run["strategy"] == "DDPNPUStrategy" and run["backend"] == "hccl" and run["num_nodes"] == 2
    assert run["parallel_devices"] == ["npu:0"] and run["root_device"] == "npu:0"


def test_device_stats_report_memory(fake: dict) -> None:
    assert fake["stats"]["allocated_bytes.all.current"] == 1024


def test_scaler_settings_reach_the_scaler(fake: dict) -> None:
    assert fake["settable"] == {"scale": 1024.0, "growth_interval": 7}


def test_step_timer_synchronises_the_npu(fake: dict) -> None:
    # Through torch.get_device_module("npu"), as for CUDA: no NPU branch outside lit_nanogpt/npu.
    assert fake["timer_synced"] == ["npu:1"]


# ---- without torch_npu (this machine; skipped on an Ascend host, where the fake tests above still run) ----
without_torch_npu = RunIf(without_torch_npu=True)


@without_torch_npu
def test_no_npu_here_and_nothing_raises() -> None:
    assert npu_available() is False
    assert NPUAccelerator.is_available() is False
    assert "torch_npu" not in sys.modules  # never imported at top level, and not installed here


@pytest.mark.slow  # a real process
def test_npu_package_imports_no_torch_npu_and_no_onnx() -> None:
    """The accelerator registration and the atc step stay cheap to import: the export's onnx comes only with it."""
    code = (
        "import sys, lit_nanogpt.npu, lit_nanogpt.export.atc; print(sorted({'onnx', 'torch_npu'} & set(sys.modules)))"
    )
    done = run_python("-c", code, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_registered_on_import() -> None:
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    assert lit_nanogpt.npu.NPUAccelerator is NPUAccelerator
    assert AcceleratorRegistry["npu"]["accelerator"] is NPUAccelerator
    assert {"single_npu", "ddp_npu"} <= set(StrategyRegistry.available_strategies())
    assert StrategyRegistry["ddp_npu"]["init_params"] == {}


@without_torch_npu
def test_asking_for_an_npu_without_one_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"torch_npu package is not installed.*lit-nanogpt\[npu\].*set_env\.sh"):
        LitNanoGPTCLI(args=["--config", str(NPU_CONFIG)], run=False)


@without_torch_npu
@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: SingleNPUStrategy("npu:1"), "SingleNPUStrategy(device='npu:1')"),
        (lambda: NPUPrecision("16-mixed"), "NPUPrecision(device='npu')"),
    ],  # fmt: skip
)
def test_python_form_without_npu_names_what_is_missing(build, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named) + ".*torch_npu package is not installed"):
        build()


@without_torch_npu
def test_auto_never_picks_a_missing_npu() -> None:
    trainer = LitNanoGPTCLI(args=["--config", str(NPU_CONFIG), "--trainer.accelerator", "auto"], run=False).trainer
    assert trainer.strategy.root_device == torch.device("cpu")


@pytest.mark.slow  # a real process
@without_torch_npu
def test_command_line_without_npu_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = run_cli("fit", "--config", str(NPU_CONFIG), cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lit-nanogpt: error:")]
    assert len(errors) == 1 and "torch_npu" in errors[0] and "set_env.sh" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
