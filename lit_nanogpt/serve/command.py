"""``lit-nanogpt serve``: load a checkpoint or an export, bind the port, run uvicorn until SIGTERM or SIGINT.

The port is bound before the model loads, so a port in use is one line and exit 1 at once. On SIGTERM
or SIGINT uvicorn stops accepting, lets running requests finish for up to ``--grace_s`` seconds, the
engine's threads stop, and the command returns: exit 0.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lit_nanogpt.text import Tokenizer

API_KEY_ENV = "LIT_NANOGPT_API_KEY"


def _bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or one line saying why not.

    It listens from here on, before the model loads and before uvicorn accepts: a client that connects as
    soon as the ready line is printed waits in the backlog instead of being refused (uvicorn prints the line
    at startup, before its own ``listen``).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ValueError(f"--host {host!r} is not an address here ({e.strerror}): use e.g. 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: no wait on TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use: pass another --port, or stop what holds it") from None
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --host or --port") from None
    return sock


def serve(
    checkpoint: str | None = None,
    onnx: str | None = None,
    device: str = "cpu",
    backend: Literal["auto", "cpu", "cann", "om"] = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch_size: int = 16,
    max_queue: int = 64,
    max_tokens_limit: int = 1024,
    max_n: int = 16,
    max_body_bytes: int = 1_000_000,
    window: Literal["exact", "half"] = "exact",
    grace_s: int = 30,
    model_name: str | None = None,
    quiet: bool = False,
) -> None:
    """Serve a checkpoint or an export folder over OpenAI's HTTP API, batching concurrent requests.

    Args:
        checkpoint: A checkpoint written by ``fit`` or ``import-nanogpt`` (PyTorch).
        onnx: Instead of ``checkpoint``: an export folder (``lit-nanogpt export``), run with onnxruntime, or on
            Ascend with its CANN provider or the atc-compiled .om files.
        device: With ``checkpoint``: where to run, e.g. ``cpu``, ``cuda`` or ``npu``.
        backend: With ``onnx``: ``auto``, ``cpu``, ``cann`` or ``om``, as ``generate --backend``.
        host: Address to listen on; ``0.0.0.0`` for every interface.
        port: Port to listen on; 0 picks a free one (the ready line names it).
        api_key: Every ``/v1`` request and ``/metrics`` must then send ``Authorization: Bearer KEY``
            (``/health`` stays open). Default: the ``LIT_NANOGPT_API_KEY`` environment variable, else no key.
        max_batch_size: Rows decoded together in one step (a static export's batch may cap it lower).
        max_queue: Requests that may wait for a free row; past that a request gets 429 with Retry-After.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for (and chat's default).
        max_n: Most choices in one request (``n`` times the number of prompts).
        max_body_bytes: Largest request body; a larger one gets 413.
        window: Past block_size: ``exact`` (nanoGPT's sliding window, a full forward per token, run apart
            from the batch) or ``half`` (re-read the last block_size/2 tokens when a row's cache is full:
            faster, not identical), as ``generate --window``.
        grace_s: On SIGTERM or SIGINT, seconds running requests get to finish before they are cut.
        model_name: The model's id in responses and ``/v1/models``; default the checkpoint's file name or
            the export folder's name.
        quiet: No access log line per request.
    """
    if (checkpoint is None) == (onnx is None):
        raise ValueError("pass exactly one of --checkpoint CKPT (PyTorch) and --onnx EXPORT_DIR (onnxruntime)")
    if onnx is None and backend != "auto":
        raise ValueError("--backend applies to --onnx EXPORT_DIR only; a checkpoint runs on --device")
    if onnx is not None and device != "cpu":
        raise ValueError("--device applies to --checkpoint only; an export runs on --backend")
    for name, value, least in (("max_batch_size", max_batch_size, 1), ("max_queue", max_queue, 0),
                               ("max_tokens_limit", max_tokens_limit, 1), ("max_n", max_n, 1),
                               ("max_body_bytes", max_body_bytes, 1), ("grace_s", grace_s, 0)):  # fmt: skip
        if value < least:
            raise ValueError(f"--{name} {value} must be at least {least}")
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"serve needs {', '.join(missing)}: pip install 'lit-nanogpt[serve]'")
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None

    with _bind(host, port) as sock:  # closed on the way out, also when loading fails
        start = time.perf_counter()
        runner, vocab, source, where = _load(checkpoint, onnx, device, backend, max_batch_size)
        name = model_name or source.name
        capped = ", capped by the export's static batch" if runner.max_batch < max_batch_size else ""

        import prometheus_client
        import uvicorn

        from lit_nanogpt.serve.app import Limits, create_app
        from lit_nanogpt.serve.engine import Engine

        _access_log(quiet)
        prometheus_client.disable_created_metrics()  # no *_created series beside each counter: /metrics stays readable
        engine = Engine(runner, vocab, window=window, max_queue=max_queue)
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/v1"

        def ready() -> None:
            key = "required" if api_key else "off"
            print(f"lit-nanogpt serve: {url} serving {name} ({where}, batch {runner.max_batch}{capped}, "
                  f"window {window}, API key {key}; ready in {time.perf_counter() - start:.1f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip

        limits = Limits(max_tokens_limit, max_n, max_body_bytes)
        app = create_app(engine, vocab, name, limits, api_key, on_ready=ready)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=grace_s,
                                lifespan="on")  # fmt: skip
        server = uvicorn.Server(config)

        # uvicorn handles SIGTERM/SIGINT while it runs, then raises the signal again so that the process would
        # die of it; these handlers take that second delivery (and any signal before uvicorn's are in place) as a
        # request to stop, so a graceful shutdown ends the command normally: exit 0.
        def stop(signum: int, frame: FrameType | None) -> None:
            server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        server.run(sockets=[sock])
        if not server.started:
            raise ValueError("the server did not start (see the lines above)")


def _load(
    checkpoint: str | None, onnx: str | None, device: str, backend: str, max_batch: int
) -> tuple[Any, Tokenizer, Path, str]:
    """The decoding backend, its vocabulary, the file it came from and where it runs."""
    if onnx is not None:
        from lit_nanogpt.export.onnxrt import open_export

        runner, kind = open_export(onnx, backend=backend, max_batch=max_batch)
        return runner, runner.vocab, Path(onnx), f"onnx on {kind}"
    from lit_nanogpt.checkpoint import load_model
    from lit_nanogpt.decoding import TorchBackend
    from lit_nanogpt.generate import torch_device

    assert checkpoint is not None  # exactly one of the two, checked by serve
    model, vocab = load_model(checkpoint)
    target = torch_device(device)
    model.to(target)
    return TorchBackend(model, max_batch=max_batch), vocab, Path(checkpoint), f"checkpoint on {target}"


def _access_log(quiet: bool) -> None:
    """One line per request on stderr (``--quiet``: none)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("lit_nanogpt.serve")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
