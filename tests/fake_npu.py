"""A stand-in Ascend NPU (the seam of issue 3), and a probe that reports how lit-nanogpt wires it.

The rename of torch's PrivateUse1 backend cannot be undone, so the probe runs in its own
interpreter: ``python tests/fake_npu.py CONFIG`` prints one JSON object that the tests check.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import types

import torch

MEMORY = {"allocated_bytes.all.current": 1024, "reserved_bytes.all.current": 4096}


def install_fake_npu(device_count: int = 2) -> types.ModuleType:
    """Register a ``torch_npu`` whose ``npu`` module is exactly the functions issue 3 lists."""
    npu = types.ModuleType("torch_npu.npu")
    npu.is_available = lambda: True
    npu.device_count = lambda: device_count
    npu.current_device = lambda: 0
    npu.set_device = lambda device: None
    npu.synchronize = lambda device=None: None
    npu.empty_cache = lambda: None
    npu.memory_stats = lambda device=None: dict(MEMORY)
    npu.is_bf16_supported = lambda: True
    npu.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16]
    npu.manual_seed_all = lambda seed: None
    torch_npu = types.ModuleType("torch_npu")
    torch_npu.npu = npu
    sys.modules["torch_npu"] = torch_npu
    torch.utils.rename_privateuse1_backend("npu")
    torch._register_device_module("npu", npu)
    return npu


def _describe(trainer) -> dict:
    plugin = trainer.precision_plugin
    strategy = trainer.strategy
    with plugin.forward_context():
        autocast_npu = torch.is_autocast_enabled("npu")
        autocast_dtype = str(torch.get_autocast_dtype("npu"))
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(strategy).__name__,
        "root_device": str(strategy.root_device),
        "parallel_devices": [str(d) for d in getattr(strategy, "parallel_devices", None) or []],
        "backend": getattr(strategy, "process_group_backend", None),
        "plugin": type(plugin).__name__,
        "plugin_device": getattr(plugin, "device", None),
        "scaler": type(plugin.scaler).__name__ if getattr(plugin, "scaler", None) is not None else None,
        "scale": plugin.scaler.get_scale() if getattr(plugin, "scaler", None) is not None else None,
        "trainer_precision": trainer.precision,
        "autocast_npu": autocast_npu,
        "autocast_dtype": autocast_dtype,
    }


def _cli(config: str, *args: str) -> dict:
    from lit_nanogpt.cli import LitNanoGPTCLI

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return _describe(LitNanoGPTCLI(args=["--config", config, *args], run=False).trainer)
    except ValueError as e:
        return {"error": str(e)}


def _parse(devices) -> list[int] | str:
    from lit_nanogpt.npu import NPUAccelerator

    try:
        return NPUAccelerator.parse_devices(devices)
    except ValueError as e:
        return f"ValueError: {e}"


def probe(config: str) -> dict:
    """Everything the fake-NPU tests assert on, gathered in one interpreter."""
    from lit_nanogpt.npu import NPUAccelerator, NPUPrecision, npu_available

    report: dict = {"available_before": npu_available()}
    npu = install_fake_npu(device_count=2)
    report["available"] = npu_available()
    report["single"] = _cli(config)
    report["ddp"] = _cli(config, "--trainer.devices", "2")
    report["ddp_by_index"] = _cli(config, "--trainer.devices", "0,1")
    report["second_card"] = _cli(config, "--trainer.devices", "[1]")
    for precision in ("bf16-mixed", "32-true", "16-true"):
        report[precision] = _cli(config, "--trainer.precision", precision)
    report["auto"] = _cli(config, "--trainer.accelerator", "auto", "--trainer.precision", "32-true")
    import lightning as L

    from lit_nanogpt.npu import SingleNPUStrategy

    explicit = L.Trainer(
        accelerator=NPUAccelerator(),
        strategy=SingleNPUStrategy("npu:1"),
        plugins=[NPUPrecision("16-mixed")],
        logger=False,
        enable_progress_bar=False,
    )
    report["python_form"] = _describe(explicit)
    report["too_many"] = _cli(config, "--trainer.devices", "3")
    report["parse"] = {repr(d): _parse(d) for d in (1, 2, -1, "auto", "0,1", "1", [1], [0, 1], 3, [2], "0,5", "x", 0)}
    os.environ["ASCEND_RT_VISIBLE_DEVICES"] = "6"
    report["visible_one"] = {"auto_count": NPUAccelerator.auto_device_count(), "two": _parse(2)}
    del os.environ["ASCEND_RT_VISIBLE_DEVICES"]
    report["stats"] = NPUAccelerator().get_device_stats(torch.device("npu", 0))
    scaled = NPUPrecision("16-mixed", device="npu", init_scale=1024.0, growth_interval=7)
    report["settable"] = {"scale": scaled.scaler.get_scale(), "growth_interval": scaled.scaler.get_growth_interval()}
    from lit_nanogpt.callbacks.metrics import synchronize

    synced: list[str] = []
    npu.synchronize = lambda device=None: synced.append(str(device))
    synchronize(torch.device("npu", 1))
    report["timer_synced"] = synced
    return report


if __name__ == "__main__":
    config = sys.argv.pop(1)  # LightningCLI warns when sys.argv holds more than the program
    print(json.dumps(probe(config)))
