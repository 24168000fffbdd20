"""The NPU's DDP strategy for real: two CPU processes over gloo, through the same class and code paths,
on one node (Lightning's launcher) and as two nodes (torchrun, one process each)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.checkpoint_io import AtomicCheckpointIO
from lit_nanogpt.npu import DDPNPUStrategy, SingleNPUStrategy
from tests.helpers import ROOT, run_python, run_without_torch_npu


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_npu")
    proc = run_python(
        str(ROOT / "tests" / "ddp_npu_run.py"),
        str(out),
        cwd=out,
        # One thread per process, as in the two-node run: the weights are then compared bitwise.
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Two "machines" of one process each: two torchrun invocations, --node-rank 0 and 1, meeting on 127.0.0.1."""
    port, start = free_port(), time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs, outs = [], []
    for node_rank in (0, 1):
        out = tmp_path_factory.mktemp(f"node{node_rank}")  # nothing shared but the rendezvous, as on two hosts
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                    "--node-rank", str(node_rank), "--master-addr", "127.0.0.1",
                    "--master-port", str(port)]  # fmt: skip
        command = [*torchrun, str(ROOT / "tests" / "ddp_npu_run.py"), str(out), "cpu", "2"]
        procs.append(subprocess.Popen(command, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))  # fmt: skip
        outs.append(out)
    try:
        logs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return outs[0], time.perf_counter() - start


def test_two_nodes_over_torchrun_train_as_one_node_does(two_nodes: tuple[Path, float], ddp_run: Path) -> None:
    out, seconds = two_nodes
    result = torch.load(out / "params.pt")
    assert result["num_nodes"] == 2 and result["world_size"] == 2 and result["node_ranks"] == [0, 1]
    assert result["environment"] == "TorchElasticEnvironment" and result["backend"] == "gloo"
    ranks = result["ranks"]
    assert not torch.equal(ranks[0], result["initial"])  # it trained
    torch.testing.assert_close(ranks[0], ranks[1], rtol=0, atol=0)
    # The same global ranks, data shards and all-reduces as two processes on one node: the same weights, bitwise.
    torch.testing.assert_close(ranks, torch.load(ddp_run / "params.pt")["ranks"], rtol=0, atol=0)
    print(f"two nodes: {seconds:.1f} s")


def test_two_ranks_agree_on_the_parameters(ddp_run: Path) -> None:
    result = torch.load(ddp_run / "params.pt")
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["wrapper"] == "DistributedDataParallel" and result["device_ids"] is None  # CPU: Lightning's path
    ranks, initial = result["ranks"], result["initial"]
    assert ranks.shape == (2, initial.numel())
    assert not torch.equal(ranks[0], initial)  # it trained
    torch.testing.assert_close(ranks[0], ranks[1], rtol=0, atol=0)


def test_validation_over_two_ranks_equals_one_process(ddp_run: Path) -> None:
    """Each rank validates its own windows; torchmetrics' token-weighted mean equals the one-process value."""
    from lit_nanogpt.cli import LitNanoGPTCLI

    two_ranks = torch.load(ddp_run / "params.pt")["val_loss"]
    ckpt = ddp_run / "model.ckpt"
    cli = LitNanoGPTCLI(args=["validate", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false",
                              "--trainer.accelerator=cpu"])  # fmt: skip  # auto would take an Ascend host's NPU
    one = cli.trainer.callback_metrics["val_loss"].item()
    assert 2.0 < one < 4.5
    assert two_ranks == pytest.approx(one, abs=1e-5)


@pytest.mark.slow  # a real process
def test_checkpoint_is_on_cpu_and_loads_without_torch_npu(ddp_run: Path) -> None:
    code = (
        f"import torch; ckpt = torch.load({str(ddp_run / 'model.ckpt')!r}, weights_only=True)\n"  # no map_location
        "print(sorted({t.device.type for t in ckpt['state_dict'].values()}))"
    )
    proc = run_without_torch_npu(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["['cpu']"]
    ckpt = torch.load(ddp_run / "model.ckpt", weights_only=True)
    assert ckpt["NPUPrecision"]["scale"] <= 1024.0 and "skipped_steps" in ckpt["NPUPrecision"]
    model, vocab = load_model(ddp_run / "model.ckpt")
    trained = torch.load(ddp_run / "params.pt")["ranks"][0]
    torch.testing.assert_close(torch.cat([p.flatten() for p in model.parameters()]), trained)
    assert len(vocab) == 65


class _OnDevice:
    """Stands for a tensor on an NPU: Lightning moves anything with ``.to``."""

    def __init__(self, device: str = "npu:0") -> None:
        self.device = device

    def to(self, device: torch.device, **kwargs: object) -> _OnDevice:
        return _OnDevice(str(device))


@pytest.mark.parametrize("strategy_cls", [SingleNPUStrategy, DDPNPUStrategy])
def test_strategies_move_checkpoint_tensors_to_cpu(
    strategy_cls: type, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    saved = {}
    monkeypatch.setattr("lit_nanogpt.checkpoint_io.torch.save", lambda checkpoint, f: saved.update(checkpoint))
    extra = {"device": "cpu"} if strategy_cls is SingleNPUStrategy else {}  # the save path is the same on an NPU
    strategy = strategy_cls(**extra)
    assert type(strategy.checkpoint_io) is AtomicCheckpointIO  # the one plugin, by default
    strategy.save_checkpoint(
        {"state_dict": {"w": _OnDevice()}, "optimizer_states": [{"m": _OnDevice()}]}, tmp_path / "x.ckpt"
    )
    assert saved["state_dict"]["w"].device == "cpu" and saved["optimizer_states"][0]["m"].device == "cpu"
