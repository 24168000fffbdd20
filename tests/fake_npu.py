"""A stand-in Ascend NPU, and a probe that reports how lit-nanogpt wires it.

The stand-in follows torch_npu 2.13.0 where lit-nanogpt depends on it; each part cites the file and
lines of the torch_npu 2.13.0 wheel it copies (paths inside the wheel; ``pip download --no-deps
torch-npu==2.13.0`` and unzip to read them). The device holds no tensors: what runs here is the
wiring (devices, streams, scaler state, autocast), never a kernel or an hccl collective.

The rename of torch's PrivateUse1 backend cannot be undone, so the probe runs in its own
interpreter: ``python tests/fake_npu.py CONFIG`` prints one JSON object that the tests check. It
blocks a real torch_npu first, so it reports the same on an Ascend host as here.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import sys
import types
from typing import Any

import torch

MEMORY = {"allocated_bytes.all.current": 1024, "reserved_bytes.all.current": 4096}


class VendorGradScaler(torch.amp.GradScaler):
    """``torch_npu.npu.amp.GradScaler``'s contract (torch_npu/npu/amp/grad_scaler.py), on CPU tensors.

    Importable without installing the fake, so in-process tests can hand it to ``NPUPrecision``.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        dynamic: bool = True,
        enabled: bool = True,
    ) -> None:
        # grad_scaler.py:93-99: no device argument (always "npu"), and a `dynamic` switch; lines
        # 106-118 keep torch's private fields, so the base class's get_scale/state_dict work (444-445).
        super().__init__("cpu", init_scale, growth_factor, backoff_factor, growth_interval, enabled)
        self._dynamic = dynamic

    def _maybe_opt_step(self, optimizer: Any, optimizer_state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # grad_scaler.py:329-335: a host sync on found_inf, and a printed line on every overflow.
        if not sum(v.item() for v in optimizer_state["found_inf_per_device"].values()):
            return optimizer.step(*args, **kwargs)
        print("Gradient overflow. Skipping step")
        return None

    def state_dict(self) -> dict[str, Any]:
        # grad_scaler.py:444-448: torch's keys plus "dynamic".
        state = super().state_dict()
        if self._enabled:
            state["dynamic"] = self._dynamic
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # grad_scaler.py:450-459: "dynamic" is required, so a CPU or GPU scaler's state raises KeyError.
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled instance")
        super().load_state_dict(state_dict)
        self._dynamic = state_dict["dynamic"]


def _no_cuda() -> None:
    """torch_npu refuses to load into a torch built for another accelerator (torch_npu/__init__.py:13-35,
    ``_check_device_conflict``), so next to it ``torch.cuda`` is the CPU build's: nothing there, and a
    stream cannot be made. Copied here so the probe means the same on a GPU machine."""

    def no_stream(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torch.cuda.Stream requires CUDA support")  # the CPU build's message (torch 2.13)

    torch.cuda.is_available = lambda: False
    torch.cuda.device_count = lambda: 0
    torch.cuda.Stream = no_stream  # type: ignore[assignment,misc]
    torch.cuda.stream = no_stream  # type: ignore[assignment]


def install_fake_npu(device_count: int = 2) -> types.ModuleType:
    """Register a ``torch_npu`` whose ``npu`` module behaves as torch_npu 2.13's where the project uses it."""
    _no_cuda()
    npu = types.ModuleType("torch_npu.npu")
    state = {"initialized": False, "device": 0}

    def _lazy_init() -> None:  # npu/__init__.py:293-333; is_initialized: 232-234
        state["initialized"] = True

    def _get_device_index(device: Any, optional: bool = False) -> int:  # npu/utils.py:132-160
        if isinstance(device, int):
            return device
        if isinstance(device, str):
            device = torch.device(device)
        if isinstance(device, torch.device):
            if device.type != "npu":
                raise ValueError(f"Expected a npu device, but got: {device}")
            return state["device"] if device.index is None else device.index
        if device is None and optional:
            return state["device"]
        raise ValueError(f"Expected a npu device, but got: {device!r}")

    def set_device(device: Any) -> None:  # npu/utils.py:91-94: refuses a non-NPU device, no lazy init
        if (index := _get_device_index(device, optional=True)) >= 0:
            state["device"] = index

    def current_device() -> int:  # npu/utils.py:97-99
        _lazy_init()
        return state["device"]

    def memory_stats(device: Any = None) -> collections.OrderedDict:  # npu/memory.py:276-349, 352-357
        if not state["initialized"]:
            return collections.OrderedDict()  # nothing before the device is initialised
        _get_device_index(device, optional=True)
        return collections.OrderedDict(sorted(MEMORY.items()))

    class Stream:  # npu/streams.py:9-26: on the given device (the current one by default)
        def __init__(self, device: Any = None, priority: int = 0) -> None:
            _lazy_init()
            self.device = torch.device("npu", _get_device_index(device, optional=True))
            self.priority = priority

        def __repr__(self) -> str:
            return f"<fake torch.npu.Stream device={self.device} id={id(self):#x}>"

    default_streams: dict[int, Stream] = {}
    current_streams: dict[int, Stream] = {}

    def default_stream(device: Any = None) -> Stream:  # npu/utils.py:278-290
        index = _get_device_index(device, optional=True)
        return default_streams.setdefault(index, Stream(index))

    def current_stream(device: Any = None) -> Stream:  # npu/utils.py:263-275
        index = _get_device_index(device, optional=True)
        return current_streams.get(index) or default_stream(index)

    def set_stream(stream: Stream | None) -> None:  # npu/utils.py:248-260: None is a no-op
        if stream is not None:
            current_streams[stream.device.index] = stream

    @contextlib.contextmanager
    def stream(s: Stream | None):  # npu/utils.py:179-232 (StreamContext), 235-245: None is a no-op
        if s is None:
            yield
            return
        previous = current_stream(s.device)
        set_stream(s)
        try:
            yield
        finally:
            set_stream(previous)

    def visible_count() -> int:  # npu/__init__.py:418-486 (ascend_hal count), used by device_count: 492-504
        visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
        if visible is None:
            return device_count
        ids = [int(d) for d in visible.split(",") if d.isdigit()]
        for i, d in enumerate(ids):
            if i > 0 and d <= ids[i - 1]:
                return 0  # "`rts` need ascending order"
            if d >= device_count:
                return i
        return len(ids)

    npu.is_available = lambda: True  # npu/__init__.py:410-415
    npu.device_count = visible_count
    npu._lazy_init = _lazy_init
    npu.is_initialized = lambda: state["initialized"]
    npu.set_device = set_device
    npu.current_device = current_device
    npu.synchronize = lambda device=None: _lazy_init()  # npu/utils.py:65-75
    npu.empty_cache = lambda: None  # npu/memory.py:168-182: a no-op until initialised, then frees the cache
    npu.memory_stats = memory_stats
    npu.is_bf16_supported = lambda including_emulation=False: True  # npu/utils.py:407-409
    # npu/autocast_utils.py:8-11: torch.autocast("npu", dtype) is refused for a dtype outside this list.
    npu.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16, torch.float32]
    npu.manual_seed_all = lambda seed: None  # npu/random.py:93-110
    npu._is_in_bad_fork = lambda: False  # npu/__init__.py:228-229; torch.manual_seed seeds "npu" through both
    npu.Stream, npu.stream, npu.set_stream = Stream, stream, set_stream
    npu.current_stream, npu.default_stream = current_stream, default_stream
    amp = types.ModuleType("torch_npu.npu.amp")  # npu/amp/__init__.py:1-6
    amp.GradScaler = VendorGradScaler
    npu.amp = amp
    torch_npu = types.ModuleType("torch_npu")
    torch_npu.npu = npu
    torch_npu.__version__ = "2.13.0"
    sys.modules.update({"torch_npu": torch_npu, "torch_npu.npu": npu, "torch_npu.npu.amp": amp})
    # _init/registry/backend.py:46-49: the PrivateUse1 backend is named "npu" and torch.npu is the module.
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
        "scaler_class": f"{type(plugin.scaler).__module__}.{type(plugin.scaler).__qualname__}",
        "scaler_device": getattr(plugin.scaler, "_device", None),
        "scale": plugin.scaler.get_scale() if getattr(plugin, "scaler", None) is not None else None,
        "trainer_precision": trainer.precision,
        "num_nodes": trainer.num_nodes,
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


def _error(build: Any) -> str | None:
    try:
        build()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _ddp_setup() -> dict:
    """``DDPNPUStrategy._setup_model`` on ``npu:0`` with DDP's constructor stubbed: its arguments and stream."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from torch.nn.parallel import DistributedDataParallel

    from lit_nanogpt.npu import DDPNPUStrategy, NPUAccelerator

    seen: dict = {}

    def stub_init(self, module: torch.nn.Module, device_ids: list[int] | None = None, **kwargs: Any) -> None:
        torch.nn.Module.__init__(self)
        self.module = module
        stream = torch.npu.current_stream()
        seen.update(device_ids=device_ids, kwargs=sorted(kwargs), stream_device=str(stream.device),
                    side_stream=stream is not torch.npu.default_stream())  # fmt: skip

    def comm_hook(state: Any, bucket: Any) -> Any:  # never called: registration is what is checked
        raise AssertionError

    original = DistributedDataParallel.__init__
    DistributedDataParallel.__init__ = stub_init  # type: ignore[method-assign]
    try:
        strategy = DDPNPUStrategy(
            accelerator=NPUAccelerator(),
            parallel_devices=[torch.device("npu", 0), torch.device("npu", 1)],
            cluster_environment=LightningEnvironment(),
            ddp_comm_hook=comm_hook,
        )
        seen["root_device"] = str(strategy.root_device)
        try:
            wrapped = strategy._setup_model(torch.nn.Linear(2, 2))
            seen["wrapped"] = type(wrapped).__name__
            wrapped.register_comm_hook = lambda state, hook: seen.update(hook_registered=hook is comm_hook)
            strategy.model = wrapped
            strategy._register_ddp_hooks()
        except Exception as e:
            seen["error"] = f"{type(e).__name__}: {e}"
        seen["stream_after_is_default"] = torch.npu.current_stream() is torch.npu.default_stream()
    finally:
        DistributedDataParallel.__init__ = original  # type: ignore[method-assign]
    return seen


def probe(config: str) -> dict:
    """Everything the fake-NPU tests assert on, gathered in one interpreter."""
    # A real torch_npu stays out (on an Ascend host the tests start this with TORCH_DEVICE_BACKEND_AUTOLOAD=0).
    assert "torch_npu" not in sys.modules, "run with TORCH_DEVICE_BACKEND_AUTOLOAD=0: a real torch_npu is loaded"
    sys.modules["torch_npu"] = None  # type: ignore[assignment]
    from lit_nanogpt.npu import NPUAccelerator, NPUPrecision, npu_available

    report: dict = {"available_before": npu_available()}
    del sys.modules["torch_npu"]
    npu = install_fake_npu(device_count=2)
    report["available"] = npu_available()
    report["fake"] = {
        "stats_before_init": dict(npu.memory_stats(0)),
        "set_device_cpu": _error(lambda: npu.set_device(torch.device("cpu"))),
        "amp_dtypes": [str(d) for d in npu.get_amp_supported_dtype()],
        "cuda_stream": _error(lambda: torch.cuda.Stream()),
    }
    report["ddp_setup"] = _ddp_setup()
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
    os.environ["ASCEND_RT_VISIBLE_DEVICES"] = "1"
    report["visible_one"] = {"auto_count": NPUAccelerator.auto_device_count(), "two": _parse(2)}
    os.environ["ASCEND_RT_VISIBLE_DEVICES"] = "1,0"
    report["visible_descending"] = {"count": npu.device_count(), "cli": _cli(config)}
    del os.environ["ASCEND_RT_VISIBLE_DEVICES"]
    report["two_nodes"] = _cli(config, "--trainer.num_nodes", "2", "--trainer.devices", "1")
    npu.synchronize()  # the device is initialised by now in a real run (tensors were moved to it)
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
