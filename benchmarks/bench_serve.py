#!/usr/bin/env python
"""Serving: ``lit-nanogpt serve`` under 1, 4, 16 and 64 streaming clients in a closed loop, against the same
server with ``--max_batch_size 1``, for the checkpoint and its ONNX export.

    python benchmarks/bench_serve.py [--requests 200] [--clients 1 4 16 64] [--tokens 200]
                                     [--backends checkpoint onnx] [--checkpoint CKPT] [--tiny] [--out F.json]

Model: nanoGPT's Shakespeare-char shape, 10.65M parameters (6 layers, 6 heads, 384 wide, block 256),
random weights (``bench_generate.random_checkpoint``: the time per token does not depend on their values),
or ``--checkpoint``; ``--tiny`` for a smoke test. Each request: a fixed 32-character prompt (consecutive
slices of Tiny Shakespeare, one per request in turn), ``max_tokens`` 200 (within block_size),
temperature 0.8 and top_k 200 (``generate``'s defaults), streamed.

For each backend, two servers (``--max_batch_size 16`` and ``1``), each run at every client count: every
client holds one keep-alive connection and sends its next request when the last one ends; one warm-up
request per client, then ``--requests`` requests are timed (so p99 is not the maximum). The client is this
process, a plain asyncio HTTP/1.1 reader (no HTTP library), whose own CPU time is reported: it shares the
machine with the server. Per row: aggregate tokens/s (timed tokens over the timed wall time), time to
first token and inter-token latency (p50, p99), the per-stream rate with the first token excluded, the
server's and the client's CPU seconds, and the count of malformed (not 200, bad JSON, no ``[DONE]``) or
incomplete (fewer tokens than asked) responses.

In the same run: ``lit-nanogpt generate``'s printed tokens/s for one stream (same prompt length, tokens and
sampling), and the machine's matmul rate for a 16-row batch: every weight matrix of the model multiplied by
a (16, in) activation, best of 30, as tokens/s (16 rows / that time). Targets (issue 18): 16 clients >= 5x
the aggregate of ``--max_batch_size 1``; one client's per-stream rate within 10% of generate's; p99 time
to first token at 16 clients <= 250 ms; nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_generate import SHAKESPEARE_CHAR, TINY, TOKENS_LINE, random_checkpoint
from harness import ROOT, cli, machine_info, machine_line, print_table, run_process

from lit_nanogpt.checkpoint import load_model
from lit_nanogpt.export import ExportSettings, export_model
from lit_nanogpt.model import GPTConfig
from lit_nanogpt.text import SHIPPED_CORPUS

PROMPT_CHARS, TEMPERATURE, TOP_K, SEED = 32, 0.8, 200, 1337
READY = re.compile(r"lit-nanogpt serve: http://([\d.]+):(\d+)/v1")


# ---- the server ----
@dataclass
class Server:
    proc: subprocess.Popen
    host: str
    port: int
    log: list[str] = field(default_factory=list)

    def cpu_s(self) -> float:
        """The server process's user + system CPU seconds so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def start_server(source: list[str], batch: int) -> Server:
    cmd = cli("serve", *source, "--port=0", "--quiet=true", f"--max_batch_size={batch}", "--max_queue=256")
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found: list[re.Match[str]] = []
    log: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            if not found and (m := READY.search(line)):
                found.append(m)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300) or not found:
        proc.kill()
        raise SystemExit(f"{' '.join(cmd)} did not start:\n" + "\n".join(log[-20:]))
    print(log[0], flush=True)
    return Server(proc, found[0][1], int(found[0][2]), log)


# ---- the client ----
@dataclass
class Record:
    start: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0
    done: bool = False
    malformed: str | None = None


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], on_data: Any) -> None:
    """Feed the body to ``on_data`` as it arrives: chunked transfer coding, else its Content-Length."""
    if headers.get("transfer-encoding") != "chunked":
        on_data(await reader.readexactly(int(headers.get("content-length", "0"))))
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return
        on_data((await reader.readexactly(size + 2))[:-2])


async def stream_request(host: str, port: int, conn: list[Any], body: bytes, want: int) -> Record:
    """One streamed completion over the client's keep-alive connection (``conn``: reader, writer, or empty)."""
    record = Record(time.perf_counter())
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
    for fresh in (False, True):  # an idle connection the server has closed (uvicorn's keep-alive timeout): reopen
        if fresh or not conn:
            conn[:] = await asyncio.open_connection(host, port)
        reader, writer = conn
        writer.write(request)
        status = (await reader.readline()).split(b" ")
        if status != [b""]:
            break
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    buffer = b""

    def on_data(data: bytes) -> None:
        nonlocal buffer
        now = time.perf_counter()
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: "):
                continue
            if event == b"data: [DONE]":
                record.done = True
                continue
            try:
                for choice in json.loads(event[6:])["choices"]:
                    if choice["text"]:
                        record.tokens += len(choice["text"])  # one character per token
                        record.token_times.append(now)
            except (ValueError, KeyError, TypeError) as e:
                record.malformed = f"bad event ({type(e).__name__})"

    await _read_body(reader, headers, on_data)
    if len(status) < 2 or status[1] != b"200":
        record.malformed = f"status {status[1:2]}"
    elif not record.done:
        record.malformed = record.malformed or "no [DONE]"
    if headers.get("connection") == "close":
        writer.close()
        conn.clear()
    return record


async def closed_loop(server: Server, clients: int, requests: int, prompts: list[str], tokens: int) -> dict:
    """``clients`` closed-loop clients: one warm-up request each, then ``requests`` timed ones shared among them."""

    def body(i: int) -> bytes:
        return json.dumps({"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": tokens,
                           "temperature": TEMPERATURE, "top_k": TOP_K, "stream": True}).encode()  # fmt: skip

    conns: list[list[Any]] = [[] for _ in range(clients)]
    await asyncio.gather(*(stream_request(server.host, server.port, conns[c], body(c), tokens) for c in range(clients)))
    records: list[Record] = []
    issued = 0

    async def client(c: int) -> None:
        nonlocal issued
        while issued < requests:
            i, issued = issued, issued + 1
            records.append(await stream_request(server.host, server.port, conns[c], body(clients + i), tokens))

    cpu, server_cpu, start = time.process_time(), server.cpu_s(), time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    cpu, server_cpu = time.process_time() - cpu, server.cpu_s() - server_cpu
    for conn in conns:
        if conn:
            conn[1].close()
    return summarize(records, wall, cpu, server_cpu, tokens)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(records: list[Record], wall: float, cpu: float, server_cpu: float, tokens: int) -> dict:
    ttft = [(r.token_times[0] - r.start) * 1e3 for r in records if r.token_times]
    itl = [(b - a) * 1e3 for r in records for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    rates = [(len(r.token_times) - 1) / (r.token_times[-1] - r.token_times[0]) for r in records
             if len(r.token_times) > 2 and r.token_times[-1] > r.token_times[0]]  # fmt: skip
    return {
        "requests": len(records),
        "wall_s": wall,
        "tokens_per_s": sum(r.tokens for r in records) / wall,
        "ttft_ms_p50": _pct(ttft, 50),
        "ttft_ms_p99": _pct(ttft, 99),
        "itl_ms_p50": _pct(itl, 50),
        "itl_ms_p99": _pct(itl, 99),
        "stream_tokens_per_s_p50": _pct(rates, 50),
        "client_cpu_s": cpu,
        "server_cpu_s": server_cpu,
        "malformed": sum(r.malformed is not None for r in records),
        "malformed_first": next((r.malformed for r in records if r.malformed is not None), None),
        "incomplete": sum(r.malformed is None and r.tokens != tokens for r in records),
    }


# ---- the references ----
def generate_rate(source: list[str], prompt: str, tokens: int) -> float:
    """The tokens/s ``lit-nanogpt generate`` prints for one stream with the same prompt length and sampling."""
    done = run_process(cli("generate", *source, f"--prompt={prompt}", f"--max_new_tokens={tokens}",
                           f"--temperature={TEMPERATURE}", f"--top_k={TOP_K}", f"--seed={SEED}"), cwd=ROOT)  # fmt: skip
    found = TOKENS_LINE.search(done.stderr)
    if found is None:
        raise SystemExit(f"generate printed no tokens/s line:\n{done.stderr[-2000:]}")
    return float(found.group(2))


@torch.no_grad()
def matmul_rate(config: GPTConfig, rows: int = 16, tries: int = 30) -> dict:
    """Tokens/s if a decode step of ``rows`` rows cost only its weight matmuls: every weight matrix of the model
    times a (rows, in) activation, best of ``tries``, with torch's threads as the server has them."""
    c = config.n_embd
    shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)] * config.n_layer + [(c, config.vocab_size)]
    weights = [torch.randn(i, o) for i, o in shapes]
    inputs = {i: torch.randn(rows, i) for i, _ in shapes}
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        for w in weights:
            inputs[w.shape[0]] @ w
        best = min(best, time.perf_counter() - start)
    flops = 2 * rows * sum(i * o for i, o in shapes)
    return {"tokens_per_s": rows / best, "gflops": flops / best / 1e9, "step_ms": best * 1e3}


# ---- the run ----
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per row (after the warm-up)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--tokens", type=int, default=200, help="max_tokens of every request")
    parser.add_argument("--batch", type=int, default=16, help="the batched server's --max_batch_size")
    parser.add_argument("--backends", nargs="+", default=["checkpoint", "onnx"], choices=["checkpoint", "onnx"])
    parser.add_argument("--checkpoint", type=Path, help="a trained lit-nanogpt checkpoint instead of random weights")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide model (a smoke test)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    text = SHIPPED_CORPUS.read_text(encoding="utf-8")
    prompts = [text[i * PROMPT_CHARS : (i + 1) * PROMPT_CHARS] for i in range(256)]
    result: dict[str, Any] = {"machine": machine_info(), "torch_threads": torch.get_num_threads(), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = args.checkpoint or random_checkpoint(work, TINY if args.tiny else SHAKESPEARE_CHAR)
        model, vocab = load_model(ckpt)
        sources = {"checkpoint": ["--checkpoint", str(ckpt)], "onnx": ["--onnx", str(work / "export")]}
        if "onnx" in args.backends:
            export_model(model, vocab, work / "export", ExportSettings(atc=None, int8=False), source=str(ckpt))
        result["matmul_16_rows"] = matmul_rate(model.config, rows=args.batch)
        print(f"matmul rate, {args.batch} rows: {result['matmul_16_rows']['tokens_per_s']:.0f} tokens/s "
              f"({result['matmul_16_rows']['gflops']:.2f} GFLOP/s)", flush=True)  # fmt: skip
        for backend in args.backends:
            rate = generate_rate(sources[backend], prompts[0], args.tokens)
            result[f"generate_{backend}_tokens_per_s"] = rate
            print(f"generate {backend}: {rate:.1f} tokens/s", flush=True)
            for batch in (args.batch, 1):
                server = start_server(sources[backend], batch)
                try:
                    for clients in args.clients:
                        try:
                            row = asyncio.run(closed_loop(server, clients, args.requests, prompts, args.tokens))
                        except OSError as e:  # the server went away: say how, with its last words
                            code = server.proc.poll()
                            raise SystemExit(f"{e}; the server's exit code: {code}; its stderr:\n"
                                             + "\n".join(server.log[-30:])) from None  # fmt: skip
                        row.update(backend=backend, max_batch_size=batch, clients=clients)
                        result["rows"].append(row)
                        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                              flush=True)  # fmt: skip
                finally:
                    code = server.stop()
                    if code != 0:
                        print(f"server exited with {code}:\n" + "\n".join(server.log[-10:]), file=sys.stderr)
    report(result, args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


def report(result: dict, args: argparse.Namespace) -> None:
    rows = result["rows"]
    print_table(
        ["backend", "max_batch_size", "clients", "tokens/s", "TTFT p50/p99 ms", "ITL p50/p99 ms", "stream tok/s",
         "client CPU s", "server CPU s", "lost"],
        [[r["backend"], r["max_batch_size"], r["clients"], f"{r['tokens_per_s']:.0f}",
          f"{r['ttft_ms_p50']:.0f} / {r['ttft_ms_p99']:.0f}", f"{r['itl_ms_p50']:.1f} / {r['itl_ms_p99']:.1f}",
          f"{r['stream_tokens_per_s_p50']:.0f}", f"{r['client_cpu_s']:.1f}", f"{r['server_cpu_s']:.1f}",
          r["malformed"] + r["incomplete"]] for r in rows],
    )  # fmt: skip
    bound = result["matmul_16_rows"]["tokens_per_s"]
    for backend in args.backends:

        def row(batch: int, clients: int, backend: str = backend) -> dict | None:
            return next((r for r in rows if (r["backend"], r["max_batch_size"], r["clients"]) ==
                         (backend, batch, clients)), None)  # fmt: skip

        many, many_b1, one = row(args.batch, 16), row(1, 16), row(args.batch, 1)
        if many and many_b1 and many_b1["tokens_per_s"] > 0:
            ratio = many["tokens_per_s"] / many_b1["tokens_per_s"]
            print(f"{backend}: 16 clients {many['tokens_per_s']:.0f} tokens/s = {ratio:.2f}x --max_batch_size 1 "
                  f"(target >= 5x: {'met' if ratio >= 5 else 'MISSED'}); {many['tokens_per_s'] / bound:.0%} of the "
                  f"{args.batch}-row matmul rate ({bound:.0f} tokens/s)")  # fmt: skip
            print(f"{backend}: p99 time to first token at 16 clients {many['ttft_ms_p99']:.0f} ms "
                  f"(target <= 250 ms: {'met' if many['ttft_ms_p99'] <= 250 else 'MISSED'})")  # fmt: skip
        if one:
            reference = result[f"generate_{backend}_tokens_per_s"]
            gap = one["stream_tokens_per_s_p50"] / reference - 1
            verdict = "met" if abs(gap) <= 0.1 else "MISSED"
            print(f"{backend}: one client's stream {one['stream_tokens_per_s_p50']:.1f} tokens/s against generate's "
                  f"{reference:.1f} ({gap:+.0%}; target within 10%: {verdict})")  # fmt: skip
    lost = sum(r["malformed"] + r["incomplete"] for r in rows)
    print(f"malformed or incomplete responses: {lost} (target 0: {'met' if lost == 0 else 'MISSED'})")


if __name__ == "__main__":
    main()
