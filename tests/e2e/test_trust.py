"""Files a user is handed are data: a checkpoint or meta.pkl that names code is refused before any of it runs.

Each bait file carries an object whose unpickling runs ``touch MARKER`` (checked live below), beside real
weights. Every command that reads such a file runs with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, the switch that turns
torch.load's default back to running pickled code (torch reads it at every load): only an explicit
``weights_only=True`` holds against it. Each command goes through the command table's ``main`` in this process;
Lightning's own resume runs in a real process.
"""

from __future__ import annotations

import os
import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lit_nanogpt.checkpoint import import_nanogpt, read_nanogpt_meta
from lit_nanogpt.checkpoint_io import AtomicCheckpointIO
from lit_nanogpt.commands import main
from tests.helpers import NANOGPT_BABY, TINY, cli, run_cli

NAMED = f"{os.system.__module__}.system"  # what the bait's pickle names: posix.system on Linux and macOS
UNSAFE_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


class Payload:
    """Unpickled, runs ``touch MARKER``: what a malicious file does to whoever loads it with plain pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@dataclass
class Bait:
    marker: Path
    meta: Path  # nanoGPT's meta.pkl with the payload as an extra key
    nanogpt: Path  # nanoGPT's ckpt.pt: real model_args and model, plus the payload
    lit: Path  # a lit-nanogpt checkpoint (the baby, imported) with the payload in its hyper_parameters


def write_bait(folder: Path) -> Bait:
    folder.mkdir(parents=True, exist_ok=True)
    bait = Bait(folder / "MARKER", folder / "meta.pkl", folder / "nanogpt_ckpt.pt", folder / "lit.ckpt")
    meta = pickle.loads((NANOGPT_BABY / "meta.pkl").read_bytes())  # our own fixture: trusted
    bait.meta.write_bytes(pickle.dumps({**meta, "payload": Payload(bait.marker)}))
    src = torch.load(NANOGPT_BABY / "ckpt.pt", map_location="cpu", weights_only=True)
    torch.save({**src, "payload": Payload(bait.marker)}, bait.nanogpt)
    ckpt = torch.load(import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", bait.lit), weights_only=True)
    ckpt["hyper_parameters"]["payload"] = Payload(bait.marker)
    torch.save(ckpt, bait.lit)
    return bait


@pytest.fixture(scope="module")
def bait(tmp_path_factory: pytest.TempPathFactory) -> Bait:
    return write_bait(tmp_path_factory.mktemp("bait"))


def test_the_bait_runs_code_when_unpickled_the_old_way(tmp_path: Path) -> None:
    """Without the guards each file does run its payload, so the tests below can fail."""
    bait = write_bait(tmp_path)
    loads = {
        bait.meta: lambda p: pickle.loads(p.read_bytes()),
        bait.nanogpt: lambda p: torch.load(p, weights_only=False),
        bait.lit: lambda p: torch.load(p, weights_only=False),
    }
    for path, load in loads.items():
        assert not bait.marker.exists()
        load(path)
        assert bait.marker.exists(), path
        bait.marker.unlink()


def the_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("lit-nanogpt: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# command: (the bait it reads, its arguments)
COMMANDS = {
    "import-nanogpt-meta": ("meta", lambda b, out: ["import-nanogpt", f"--ckpt={NANOGPT_BABY / 'ckpt.pt'}",
                                                    f"--meta={b.meta}", f"--out={out}"]),
    "import-nanogpt-ckpt": ("nanogpt", lambda b, out: ["import-nanogpt", f"--ckpt={b.nanogpt}",
                                                       f"--meta={NANOGPT_BABY / 'meta.pkl'}", f"--out={out}"]),
    "validate": ("lit", lambda b, out: ["validate", f"--ckpt_path={b.lit}"]),
    "test": ("lit", lambda b, out: ["test", f"--ckpt_path={b.lit}"]),
    "predict": ("lit", lambda b, out: ["predict", f"--ckpt_path={b.lit}"]),
    "fit": ("lit", lambda b, out: ["fit", f"--ckpt_path={b.lit}", "--trainer.max_steps=2", "--trainer.logger=false",
                                   f"--trainer.default_root_dir={out}"]),
    "generate": ("lit", lambda b, out: ["generate", f"--checkpoint={b.lit}", "--max_new_tokens=5"]),
    "export": ("lit", lambda b, out: ["export", f"--checkpoint={b.lit}", f"--out={out}"]),
}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_file_that_names_code(
    bait: Bait, tmp_path: Path, command: str, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, args = COMMANDS[command]
    out = tmp_path / "out"
    for name, value in UNSAFE_ENV.items():
        monkeypatch.setenv(name, value)
    result = cli(capfd, *args(bait, out))
    assert not bait.marker.exists()
    assert result.returncode == 1
    line = the_error_line(result.stderr)
    assert f"{getattr(bait, kind)} is not " in line and f"it names {NAMED}, which" in line
    assert not out.exists()  # nothing written either


def test_lightning_own_resume_loads_as_data_whatever_weights_only_says(bait: Bait, tmp_path: Path) -> None:
    """``--ckpt_path last`` skips lit-nanogpt's own reading: Lightning loads the file through AtomicCheckpointIO."""
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(bait.lit.read_bytes())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40, encoding="utf-8")
    result = run_cli(
        "fit", f"--data.data_path={corpus}", *[f"--model.arch.{k}={v}" for k, v in TINY.items()],
        "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=last", "--weights_only=false", env=UNSAFE_ENV,
    )  # fmt: skip
    assert not bait.marker.exists()
    assert result.returncode == 1
    line = the_error_line(result.stderr)
    assert f"checkpoint {last} is not plain data: it names {NAMED}" in line


def test_checkpoint_io_forces_weights_only(bait: Bait, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    io = AtomicCheckpointIO()
    with pytest.raises(ValueError, match=f"it names {NAMED}"):
        io.load_checkpoint(bait.lit, weights_only=False)
    assert not bait.marker.exists()
    real = io.load_checkpoint(NANOGPT_BABY / "ckpt.pt", weights_only=False)  # plain data loads as before
    assert real["model_args"]["vocab_size"] == 65


def test_the_real_meta_pkl_still_loads() -> None:
    assert read_nanogpt_meta(NANOGPT_BABY / "meta.pkl") == (
        "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    )


class Persistent(pickle.Pickler):
    def persistent_id(self, obj: object) -> str | None:
        return "ref-7" if obj == "x" else None


def plain(**change: object) -> bytes:
    meta = pickle.loads((NANOGPT_BABY / "meta.pkl").read_bytes())
    return pickle.dumps({**meta, **change})


@pytest.mark.parametrize(
    "data,reason",
    [
        (plain(itos={i: i for i in range(65)}), "its itos[0] is 0, not one character"),
        (plain(itos={str(i): "a" for i in range(65)}), "its itos is not a dict of the ids 0..N-1"),
        (plain(vocab_size="65"), "its vocab_size='65' but its itos lists 65 characters"),
        (plain(stoi={"a": 0.0}), "its stoi is not the inverse of its itos"),
        (pickle.dumps(["\n", "a"]), "it holds a list"),
        (pickle.dumps({"itos": {0: "a"}}), "it holds a dict with keys ['itos']"),
        (None, "it holds persistent id 'ref-7', which lit-nanogpt never resolves"),
    ],
    ids=["itos-ints", "itos-str-keys", "vocab_size-str", "stoi-floats", "list", "missing-keys", "persistent-id"],
)
def test_meta_pkl_of_the_wrong_shape_is_refused_in_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path, data: bytes | None, reason: str
) -> None:
    meta = tmp_path / "meta.pkl"
    if data is None:
        with meta.open("wb") as f:
            Persistent(f).dump({"vocab_size": 1, "itos": {0: "x"}, "stoi": {"x": 0}})
    else:
        meta.write_bytes(data)
    out = tmp_path / "out.ckpt"
    assert main(["import-nanogpt", f"--ckpt={NANOGPT_BABY / 'ckpt.pt'}", f"--meta={meta}", f"--out={out}"]) == 1
    line = the_error_line(capsys.readouterr().err)
    assert line == (
        f"lit-nanogpt: error: {meta} is not a plain nanoGPT meta.pkl: {reason}; "
        "pass the meta.pkl that nanoGPT's prepare.py writes (a dict of vocab_size, itos and stoi)"
    )
    assert not out.exists()
