"""``lit-nanogpt serve``'s one-line errors, in-process: each comes before a model loads or a port is held."""

from __future__ import annotations

import re
import socket

import pytest

from lit_nanogpt.commands import main
from tests.helpers import error_of


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pass exactly one of --checkpoint CKPT (PyTorch) and --onnx EXPORT_DIR"),
        (["--checkpoint=a.ckpt", "--onnx=export"], "pass exactly one of"),
        (["--checkpoint=a.ckpt", "--backend=om"], "--backend applies to --onnx EXPORT_DIR only"),
        (["--onnx=export", "--device=cuda"], "--device applies to --checkpoint only"),
        (["--checkpoint=a.ckpt", "--max_batch_size=0"], "--max_batch_size 0 must be at least 1"),
        (["--checkpoint=a.ckpt", "--max_queue=-1"], "--max_queue -1 must be at least 0"),
        (["--checkpoint=a.ckpt", "--grace_s=-1"], "--grace_s -1 must be at least 0"),
        (["--checkpoint=missing.ckpt", "--port=0"], "checkpoint missing.ckpt does not exist"),
        (["--checkpoint=a.ckpt", "--port=0", "--host=no-such-host.invalid"], "--host 'no-such-host.invalid' is not"),
    ],
)
def test_bad_options_are_one_line(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert message in error_of(capsys, "serve", *args)


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = error_of(capsys, "serve", "--checkpoint=not-read.ckpt", f"--port={port}")
    assert line == f"lit-nanogpt: error: port {port} on 127.0.0.1 is in use: pass another --port, or stop what holds it"


def test_the_overview_lists_serve(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert re.search(r"^  serve +Serve a checkpoint or an export over OpenAI's HTTP API", capsys.readouterr().out, re.M)
