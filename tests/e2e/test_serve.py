"""``lit-nanogpt serve`` as a real process on a free loopback port, through OpenAI's own Python client.

One server (batch 4, queue 2, an API key, small limits) answers most tests; a second one is stopped with
SIGTERM while requests run. The model is nanoGPT's trained baby (block_size 64), whose greedy text
for ``ROMEO:`` is ``generate``'s (tests/fixtures/nanogpt_baby/expected.json, checked in test_cli.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from lit_nanogpt.checkpoint import import_nanogpt, load_model
from lit_nanogpt.decoding import Sampler, TorchBackend, generate
from lit_nanogpt.model import GPT
from lit_nanogpt.sampling import SEPARATOR
from lit_nanogpt.serve.chat import Turn, play_script
from lit_nanogpt.text import Vocabulary
from tests.helpers import NANOGPT_BABY, ROOT, export_baby, run_cli

KEY = "sk-lit-nanogpt-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = ["--max_batch_size=4", "--max_queue=2", "--max_tokens_limit=300", "--max_n=4", "--max_body_bytes=20000"]
EXPECTED = json.loads((NANOGPT_BABY / "expected.json").read_text())


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: list[str] = field(default_factory=list)  # its stderr lines so far

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``GET /metrics``, read with Prometheus' own parser."""
        text = httpx.get(f"{self.url}/metrics", headers=AUTH).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def wait_until(self, condition: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, "\n".join(self.log)
            assert time.monotonic() < deadline, f"not within {timeout} s"
            time.sleep(0.02)


def start_server(*args: str) -> Server:
    """``lit-nanogpt serve ARGS`` on a port the system picks (``--port 0``), once its ready line is out."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LIT_NANOGPT_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "lit_nanogpt", "serve", "--port=0", *args],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    server = Server(proc, "")
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.log.append(line.rstrip("\n"))
            if found := re.search(r"(http://127\.0\.0\.1:\d+)/v1", line):
                server.url = found[1]
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(120) and server.url, "no ready line:\n" + "\n".join(server.log)
    return server


def stop_server(server: Server, timeout: float = 30) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout)


@pytest.fixture(scope="module")
def baby(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT, Vocabulary]:
    folder = tmp_path_factory.mktemp("serve")
    ckpt = import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", folder / "baby.ckpt")
    model, vocab = load_model(ckpt)
    return ckpt, model, vocab


@pytest.fixture(scope="module")
def server(baby: tuple[Path, GPT, Vocabulary]) -> Iterator[Server]:
    running = start_server(f"--checkpoint={baby[0]}", *LIMITS)
    yield running
    assert stop_server(running) == 0, "\n".join(running.log)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def reference(baby: tuple[Path, GPT, Vocabulary], prompt: str, tokens: int, sampler: Sampler | None = None) -> str:
    """The continuation ``generate`` prints for ``prompt`` alone (greedy unless ``sampler`` says otherwise)."""
    _, model, vocab = baby
    ids = vocab.encode(prompt).tolist()
    out = generate(TorchBackend(model, max_batch=1), [ids], tokens, sampler or Sampler(temperature=0.0))[0]
    return vocab.decode(out[len(ids) :])


def seeded(seed: int) -> Sampler:
    return Sampler(0.8, 200, generator=torch.Generator().manual_seed(seed))


async def stream_text(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[str, str | None, bool]:
    """A streamed completion read off the wire: its text, last finish_reason, and whether ``[DONE]`` ended it."""
    text, finish = "", None
    async with client.stream("POST", path, json={**body, "stream": True}, headers=AUTH) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return text, finish, True
            if line.startswith("data: "):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
    return text, finish, False


def test_completions_give_generates_greedy_text_streamed_and_not(client: openai.OpenAI) -> None:
    expected = EXPECTED["greedy"][len("ROMEO:") :]
    done = client.completions.create(model="baby", prompt="ROMEO:", max_tokens=200, temperature=0)
    assert done.choices[0].text == expected
    assert done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6, 200)
    streamed = client.completions.create(
        model="baby", prompt="ROMEO:", max_tokens=200, stream=True, extra_body={"top_k": 1},
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected  # top_k 1: generate --top_k 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 200
    echoed = client.completions.create(model="baby", prompt="ROMEO:", max_tokens=20, temperature=0, echo=True)
    assert echoed.choices[0].text == EXPECTED["greedy"][: len("ROMEO:") + 20]


def test_chat_is_the_play_script_and_stops_at_the_next_speaker(
    client: openai.OpenAI, baby: tuple[Path, GPT, Vocabulary]
) -> None:
    messages: Any = [{"role": "user", "content": "Good morrow."}]
    sample = reference(baby, play_script([Turn("user", "Good morrow.")]), 150, seeded(1))
    assert "\n\n" in sample  # the model ends the speech, and would go on with the next speaker's line
    expected = sample[: sample.index("\n\n")]
    options: Any = {"model": "baby", "messages": messages, "max_tokens": 150, "temperature": 0.8, "seed": 1,
                    "extra_body": {"top_k": 200}}  # fmt: skip
    done = client.chat.completions.create(**options)
    assert done.choices[0].message.content == expected
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**options, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    speakers = {"speakers": {"user": "SAMPSON", "assistant": "GREGORY"}}
    named = client.chat.completions.create(
        model="baby", messages=messages, max_tokens=20, temperature=0, extra_body=speakers
    )
    script = play_script([Turn("user", "Good morrow.")], user="SAMPSON", assistant="GREGORY")
    assert script.startswith("SAMPSON:\nGood morrow.\n\nGREGORY:\n")
    assert named.choices[0].message.content == reference(baby, script, 20).split("\n\n")[0]


def test_concurrent_greedy_requests_each_give_their_solo_text(
    server: Server, baby: tuple[Path, GPT, Vocabulary]
) -> None:
    """Four requests at once, at different positions, one prompt past block_size (64) and two crossing it."""
    prompts = ["ROMEO:", "JULIET:\nO Romeo, Romeo", "\n", "First Citizen:\n" + "Before we proceed, hear me speak. " * 2]
    lengths = [100, 40, 80, 30]
    expected = [reference(baby, p, n) for p, n in zip(prompts, lengths, strict=True)]
    single_row_steps = server.metric("lit_nanogpt_batch_size_bucket", le="1.0")
    steps = server.metric("lit_nanogpt_batch_size_count")

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        asks = [client.completions.create(model="baby", prompt=p, max_tokens=n, temperature=0)
                for p, n in zip(prompts, lengths, strict=True)]  # fmt: skip
        return [done.choices[0].text for done in await asyncio.gather(*asks)]

    assert asyncio.run(main()) == expected
    shared = (server.metric("lit_nanogpt_batch_size_count") - steps) - (
        server.metric("lit_nanogpt_batch_size_bucket", le="1.0") - single_row_steps
    )
    assert shared > 0, "some decode steps ran more than one row"


def test_seeded_samples_are_generates(client: openai.OpenAI, baby: tuple[Path, GPT, Vocabulary]) -> None:
    """n with a seed draws one sample after another from one generator, as generate --num_samples; each prompt
    of a list has its own."""
    sampler = seeded(7)
    expected = [reference(baby, "ROMEO:", 30, sampler) for _ in range(2)]
    printed = run_cli("generate", f"--checkpoint={baby[0]}", "--prompt=ROMEO:", "--max_new_tokens=30", "--seed=7",
                      "--num_samples=2", "--temperature=0.8", "--top_k=200", timeout=120)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == "".join(f"ROMEO:{text}\n{SEPARATOR}\n" for text in expected)  # generate's own text
    done = client.completions.create(model="baby", prompt="ROMEO:", max_tokens=30, n=2, seed=7, temperature=0.8,
                                     extra_body={"top_k": 200})  # fmt: skip
    assert [c.text for c in sorted(done.choices, key=lambda c: c.index)] == expected
    assert done.usage.completion_tokens == 60
    both = client.completions.create(model="baby", prompt=["ROMEO:", "JULIET:"], max_tokens=30, seed=7,
                                     temperature=0.8, extra_body={"top_k": 200})  # fmt: skip
    assert [c.text for c in both.choices] == [expected[0], reference(baby, "JULIET:", 30, seeded(7))]


BAD: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    # (what, path, body (bytes as they are, anything else as JSON), headers, status, text in the error's message)
    ("malformed JSON", "/v1/completions", b'{"prompt": "ROMEO:", ', AUTH, 400, "not valid JSON"),
    ("not an object", "/v1/completions", ["ROMEO:"], AUTH, 400, "must be a JSON object"),
    ("missing prompt", "/v1/completions", {"max_tokens": 5}, AUTH, 400, "missing required parameter 'prompt'"),
    ("prompt of the wrong type", "/v1/completions", {"prompt": 42}, AUTH, 400, "prompt: Input should be"),
    ("max_tokens of the wrong type", "/v1/completions", {"prompt": "a", "max_tokens": "5"}, AUTH, 400, "max_tokens"),
    ("unknown characters", "/v1/completions", {"prompt": "ROMEO€: ü"}, AUTH, 400, "vocabulary: 'ü€'"),
    ("max_tokens past the limit", "/v1/completions", {"prompt": "a", "max_tokens": 301}, AUTH, 400, "limit of 300"),
    ("max_tokens zero", "/v1/completions", {"prompt": "a", "max_tokens": 0}, AUTH, 400, "max_tokens=0 must be"),
    ("max_tokens negative", "/v1/completions", {"prompt": "a", "max_tokens": -3}, AUTH, 400, "max_tokens=-3"),
    ("n past the limit", "/v1/completions", {"prompt": "a", "n": 5}, AUTH, 400, "limit of 4 choices"),
    ("too many choices", "/v1/completions", {"prompt": ["a", "b", "c"], "n": 2}, AUTH, 400, "6 choices"),
    ("unsupported logprobs", "/v1/completions", {"prompt": "a", "logprobs": 2}, AUTH, 400, "not supported"),
    ("body too large", "/v1/completions", {"prompt": "a" * 30_000}, AUTH, 413, "limit of 20000 bytes"),
    ("no API key", "/v1/completions", {"prompt": "a"}, {}, 401, "API key"),
    ("wrong API key", "/v1/models", None, {"Authorization": "Bearer nope"}, 401, "API key"),
    ("chat role", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, AUTH, 400, "role"),
    (
        "chat characters",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "«hi»"}]},
        AUTH,
        400,
        "messages.0.content has characters",
    ),  # fmt: skip
    (
        "chat speaker",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "speakers": {"user": "A:B"}},
        AUTH,
        400,
        "speaker",
    ),  # fmt: skip
    ("unknown route", "/v1/embeddings", {"input": "a"}, AUTH, 404, "Not Found"),
]


def test_bad_input_gets_openais_error_shape_and_touches_no_other_request(
    server: Server, baby: tuple[Path, GPT, Vocabulary]
) -> None:
    expected = reference(baby, "ROMEO:", 150)

    async def main() -> tuple[str, str | None, bool]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            body = {"prompt": "ROMEO:", "max_tokens": 150, "temperature": 0}
            running = asyncio.ensure_future(stream_text(http, "/v1/completions", body))
            for what, path, body, headers, status, message in BAD:
                if body is None:
                    response = await http.get(path, headers=headers)
                elif isinstance(body, bytes):
                    response = await http.post(path, content=body, headers=headers)
                else:
                    response = await http.post(path, json=body, headers=headers)
                assert response.status_code == status, (what, response.text)
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, what
                assert message in error["message"], (what, error)
            return await running

    assert asyncio.run(main()) == (expected, "length", True)
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert server.metric("lit_nanogpt_requests_total", route="/v1/completions", status="400") >= 11
    assert server.metric("lit_nanogpt_requests_total", route="/v1/completions", status="413") == 1


def test_a_full_queue_is_429_and_clients_that_leave_free_their_slots(server: Server) -> None:
    """Four rows run and two requests wait: the next is refused with Retry-After. Then all six clients hang
    up mid-stream, and every slot and queue place is free again at once."""
    cancelled = server.metric("lit_nanogpt_cancelled_rows_total")

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            body = {"prompt": "ROMEO:", "max_tokens": 300, "temperature": 0, "stream": True}
            streams = [http.stream("POST", "/v1/completions", json=body, headers=AUTH) for _ in range(6)]
            responses = [await s.__aenter__() for s in streams]
            assert [r.status_code for r in responses] == [200] * 6
            await asyncio.to_thread(server.wait_until, lambda: server.metric("lit_nanogpt_queue_depth") == 2)
            refused = await http.post("/v1/completions", json=body, headers=AUTH)
            reader = responses[0].aiter_lines()
            assert (await reader.__anext__()).startswith("data: ")  # a running one streams meanwhile
            for s in streams:
                await s.__aexit__(None, None, None)  # the client hangs up
            return refused

    refused = asyncio.run(main())
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    server.wait_until(lambda: server.metric("lit_nanogpt_running_rows") == 0, timeout=5)
    assert server.metric("lit_nanogpt_queue_depth") == 0
    # The four running rows are cancelled; a waiting request can take a slot they free before its own hang-up
    # is seen, and is then cancelled as a row too (seen once in six runs): each row counted once, none leaked.
    assert 4 <= server.metric("lit_nanogpt_cancelled_rows_total") - cancelled <= 6


def test_a_client_that_disconnects_frees_its_slot(server: Server) -> None:
    """Mid-stream, and while waiting for a whole (not streamed) answer."""
    body = {"prompt": "ROMEO:", "max_tokens": 300, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body, headers=AUTH) as response,
    ):
        lines = response.iter_lines()
        assert sum(1 for _, line in zip(range(20), lines, strict=False) if line.startswith("data: ")) >= 5
    # Released as soon as the server sees the connection close (the engine's tests bound it to one step).
    server.wait_until(lambda: server.metric("lit_nanogpt_running_rows") == 0, timeout=5)
    server.wait_until(lambda: any("client left" in line for line in server.log[-5:]), timeout=5)
    line = next(line for line in reversed(server.log) if "client left" in line)
    assert int(re.search(r" (\d+) tokens", line)[1]) < 300  # type: ignore[index]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.2 s, and hangs up
        httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, headers=AUTH, timeout=0.2)
    server.wait_until(lambda: any('" 499 ' in line and "client left" in line for line in server.log[-5:]), timeout=5)
    assert server.metric("lit_nanogpt_running_rows") == 0


def test_models_health_metrics_and_the_access_log(client: openai.OpenAI, server: Server) -> None:
    client.completions.create(model="baby", prompt="ROMEO:", max_tokens=7, temperature=0)
    assert [m.id for m in client.models.list()] == ["baby.ckpt"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "model": "baby.ckpt"}
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # what it tells of the traffic needs the key too
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    for name in ("lit_nanogpt_requests_total", "lit_nanogpt_generated_tokens_total", "lit_nanogpt_queue_depth",
                 "lit_nanogpt_batch_size_bucket", "lit_nanogpt_time_to_first_token_seconds_bucket",
                 "lit_nanogpt_inter_token_latency_seconds_bucket"):  # fmt: skip
        assert re.search(rf"^{name}(\{{.*\}})? \d", text, re.M), name
    assert server.metric("lit_nanogpt_generated_tokens_total") >= 7
    assert any(re.fullmatch(r'127\.0\.0\.1:\d+ "POST /v1/completions" 200 7 tokens [\d.]+ s', line)
               for line in server.log)  # fmt: skip


def test_a_port_in_use_is_one_line_and_exit_1(server: Server, baby: tuple[Path, GPT, Vocabulary]) -> None:
    result = run_cli("serve", f"--checkpoint={baby[0]}", f"--port={server.port}", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"lit-nanogpt: error: port {server.port} on 127.0.0.1 is in use: pass another --port, or stop what holds it"
    )


def test_sigterm_lets_running_requests_finish_then_exits_0(baby: tuple[Path, GPT, Vocabulary], tmp_path: Path) -> None:
    """Over the ONNX export this time: two rows run and a third waits when SIGTERM comes; all three end whole,
    with the checkpoint's greedy text, then the process exits 0. --quiet: no access log."""
    lengths = [400, 300, 60]  # the long rows run past block_size: about a second on the window thread
    expected = [reference(baby, "ROMEO:", n) for n in lengths]
    _, export = export_baby(tmp_path, int8=False)
    server = start_server(f"--onnx={export}", "--max_batch_size=2", "--grace_s=30", "--quiet=true")
    try:

        async def main() -> list[tuple[str, str | None, bool]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                bodies = [{"prompt": "ROMEO:", "max_tokens": n, "temperature": 0} for n in lengths]
                # The two long rows first, then the short one, which waits for a slot until a long one ends (sent
                # together, the short one could take a slot and leave the queue within milliseconds, unseen).
                runs = [asyncio.ensure_future(stream_text(http, "/v1/completions", b)) for b in bodies[:2]]
                running = lambda: server.metric("lit_nanogpt_running_rows") == 2  # noqa: E731
                await asyncio.to_thread(server.wait_until, running, 60)
                runs.append(asyncio.ensure_future(stream_text(http, "/v1/completions", bodies[2])))
                queued = lambda: server.metric("lit_nanogpt_queue_depth") == 1  # noqa: E731
                await asyncio.to_thread(server.wait_until, queued, 60)
                server.proc.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*runs))

        assert asyncio.run(main()) == [(text, "length", True) for text in expected]
        assert server.proc.wait(30) == 0, "\n".join(server.log)
        assert len(server.log) == 1 and server.log[0].startswith("lit-nanogpt serve: http://127.0.0.1:")
    finally:
        stop_server(server)
