"""The HTTP side: OpenAI's routes over an ``Engine``, streamed as server-sent events, with errors in OpenAI's shape.

FastAPI routes the requests and sends the responses (``EventSourceResponse`` and its SSE framing for
streams); the body is read here, against the size limit, before any JSON is parsed, so an oversized
body is a 413 and a malformed one a 400 in OpenAI's error shape whatever its ``Content-Type``. One
pure-ASGI layer in front checks the API key, counts requests by status and writes the access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lit_nanogpt.serve.chat import DEFAULT_ASSISTANT, DEFAULT_USER, TURN_END, Turn, play_script
from lit_nanogpt.serve.engine import Collected, Engine, Event, Job, QueueFull, Sampling, Stopping
from lit_nanogpt.serve.metrics import CONTENT_TYPE
from lit_nanogpt.serve.protocol import APIError, ChatRequest, CompletionRequest, Speakers, parse, usage
from lit_nanogpt.text import Tokenizer

access_log = logging.getLogger("lit_nanogpt.serve.access")

ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's, for /v1/completions; chat's is the server's limit
DONE = format_sse_event(data_str="[DONE]")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server.

    Attributes:
        max_tokens: Largest ``max_tokens`` a request may set (chat's default).
        max_n: Most choices in one request (``n`` times the number of prompts).
        max_body_bytes: Largest request body; a larger one is a 413.
    """

    max_tokens: int = 1024
    max_n: int = 16
    max_body_bytes: int = 1_000_000


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(obj: Any) -> bytes:
    return format_sse_event(data_str=_json(obj))


class Gate:
    """In front of the app: the API key (``/v1`` routes and ``/metrics``), requests counted by route and status,
    the access log."""

    def __init__(self, app: ASGIApp, engine: Engine, api_key: str | None) -> None:
        self.app, self.engine = app, engine
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            guarded = scope["path"].startswith("/v1") or scope["path"] == "/metrics"  # /health stays open for probes
            if self.expected is not None and guarded and not self._authorized(scope):
                error = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                 code="invalid_api_key")  # fmt: skip
                await JSONResponse(error.body(), status_code=401)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.engine.metrics.requests.labels(route, str(status)).inc()
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                state = scope.get("state", {})
                tokens = f" {state['tokens']} tokens" if "tokens" in state else ""
                note = f" ({state['note']})" if "note" in state else ""
                access_log.info(
                    '%s:%s "%s %s" %d%s %.3f s%s', client[0], client[1], scope["method"], scope["path"], status, tokens,
                    time.perf_counter() - start, note,
                )  # fmt: skip

    def _authorized(self, scope: Scope) -> bool:
        assert self.expected is not None
        given = dict(scope["headers"]).get(b"authorization", b"")
        return secrets.compare_digest(given, self.expected)


def create_app(
    engine: Engine,
    vocab: Tokenizer,
    model_name: str,
    limits: Limits | None = None,
    api_key: str | None = None,
    on_ready: Callable[[], None] | None = None,
) -> ASGIApp:
    """The ASGI app serving ``engine``'s model as ``model_name``; the engine's threads run for the app's lifespan."""
    limits = limits if limits is not None else Limits()
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="lit-nanogpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> Response:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:  # unknown route, wrong method
        code = "not_found" if e.status_code == 404 else None
        return await api_error(request, APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> Response:
        return await api_error(request, APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    # ---- reading a request ----
    async def read_json(request: Request) -> Any:
        too_large = APIError(413, f"the body is larger than this server's limit of {limits.max_body_bytes} bytes "
                             "(--max_body_bytes)", code="request_too_large")  # fmt: skip
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise too_large
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON ({e})", code="invalid_json") from None

    def known(text: str, param: str) -> None:
        if missing := vocab.unknown(text):
            raise APIError(400, f"{param} has characters not in the model's vocabulary: {''.join(missing)!r}; "
                           "remove them", param, "unknown_characters")  # fmt: skip

    def encode(text: str, param: str) -> list[int]:
        known(text, param)
        return vocab.encode(text or vocab.default_prompt).tolist()  # an empty prompt starts where generate does

    def max_tokens_of(value: int | None, default: int, param: str) -> int:
        value = min(default, limits.max_tokens) if value is None else value
        if value < 1:
            raise APIError(400, f"{param}={value} must be at least 1", param)
        if value > limits.max_tokens:
            raise APIError(400, f"{param}={value} is past this server's limit of {limits.max_tokens} "
                           "(--max_tokens_limit)", param)  # fmt: skip
        return value

    def n_of(n: int | None, prompts: int) -> int:
        n = 1 if n is None else n
        if n * prompts > limits.max_n:
            many = f"n={n}" if prompts == 1 else f"{prompts} prompts x n={n} = {n * prompts} choices"
            raise APIError(400, f"{many} is past this server's limit of {limits.max_n} choices a request (--max_n)",
                           "n")  # fmt: skip
        return n

    def submit(ids: list[list[int]], n: int, request: CompletionRequest | ChatRequest, max_tokens: int,
               stop: list[str]) -> Job:  # fmt: skip
        temperature = 1.0 if request.temperature is None else request.temperature
        top_p = 1.0 if request.top_p is None else request.top_p
        sampling = Sampling(temperature, request.top_k, top_p, request.seed)
        try:
            return engine.submit(ids, n, sampling, max_tokens, stop)
        except QueueFull as e:
            raise APIError(429, f"the server is busy ({e}); retry in a moment", code="rate_limit_exceeded",
                           type="rate_limit_error", headers={"Retry-After": "1"}) from None  # fmt: skip
        except Stopping as e:
            raise APIError(503, str(e), type="server_error") from None

    # ---- answering ----
    async def collect(request: Request, job: Job, choices: int) -> Collected | None:
        """The job's whole output, or None when the client leaves first (its rows are then released)."""
        gathering = asyncio.ensure_future(Collected.of(job, choices))
        leaving = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({gathering, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            left = not gathering.done()
            if left:
                gathering.cancel()
                engine.cancel(job)
        request.state.tokens = job.completion_tokens
        if left:
            request.state.note = "client left"
            return None
        return gathering.result()

    def failed(collected: Collected) -> None:
        if "error" in collected.finish_reasons:
            raise APIError(500, "the model failed while generating (see the server's log)", type="server_error")

    async def stream(request: Request, job: Job, first: list[dict], chunk: Callable[[Event], dict],
                     include_usage: bool, head: dict) -> AsyncIterator[bytes]:  # fmt: skip
        try:
            if first:
                yield b"".join(sse(c) for c in first)
            while events := await job.next_events():
                if any(e.finish_reason == "error" for e in events):
                    yield sse(APIError(500, "the model failed while generating", type="server_error").body()) + DONE
                    return
                yield b"".join(sse(chunk(e)) for e in events)
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(job.prompt_tokens, job.completion_tokens)})
            yield DONE
        finally:  # also when the client has gone: Starlette cancels the stream, and the rows are released
            if job.remaining:
                request.state.note = "client left"
            engine.cancel(job)
            request.state.tokens = job.completion_tokens

    def streamed(body: AsyncIterator[bytes]) -> Response:
        return EventSourceResponse(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---- routes ----
    @app.get("/health")
    async def health() -> Response:
        if not engine.alive:  # a worker thread died (its traceback is in the log): nothing would be answered
            return JSONResponse({"status": "down", "model": model_name}, status_code=503)
        return JSONResponse({"status": "ok", "model": model_name})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "lit-nanogpt"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = parse(CompletionRequest, await read_json(request))
        single = isinstance(req.prompt, str)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt is an empty list: give a string or a list of strings", "prompt")
        ids = [encode(p, "prompt" if single else f"prompt.{i}") for i, p in enumerate(prompts)]
        max_tokens = max_tokens_of(req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, "max_tokens")
        n = n_of(req.n, len(prompts))
        job = submit(ids, n, req, max_tokens, req.stops())
        echo = [prompts[i // n] if req.echo else "" for i in range(len(prompts) * n)]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}  # fmt: skip

        def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}

        if req.stream:
            first = [{**head, "choices": [choice(i, text, None)]} for i, text in enumerate(echo) if text]
            chunk = lambda e: {**head, "choices": [choice(e.index, e.text, e.finish_reason)]}  # noqa: E731
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return streamed(stream(request, job, first, chunk, include_usage, head))
        collected = await collect(request, job, len(echo))
        if collected is None:
            return Response(status_code=499)
        failed(collected)
        choices = [choice(i, echo[i] + "".join(t), collected.finish_reasons[i]) for i, t in enumerate(collected.texts)]
        return JSONResponse({**head, "choices": choices, "usage": usage(job.prompt_tokens, job.completion_tokens)})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req: ChatRequest = parse(ChatRequest, await read_json(request))
        speakers = req.speakers or Speakers()
        user, assistant = speakers.user or DEFAULT_USER, speakers.assistant or DEFAULT_ASSISTANT
        for i, m in enumerate(req.messages):  # name the message that holds an unknown character
            known(m.text(), f"messages.{i}.content")
            known(m.name or "", f"messages.{i}.name")
        known(user + assistant, "speakers")
        try:
            prompt = play_script([Turn(m.role, m.text(), m.name) for m in req.messages], user, assistant)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        ids = [encode(prompt, "messages")]  # the layout's own characters (newline, colon) must be in it too
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = max_tokens_of(req.max_completion_tokens or req.max_tokens, limits.max_tokens, param)
        n = n_of(req.n, 1)
        job = submit(ids, n, req, max_tokens, [TURN_END, *req.stops()])
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name}  # fmt: skip

        if req.stream:
            head["object"] = "chat.completion.chunk"
            role = {"role": "assistant", "content": ""}
            first = [{**head, "choices": [{"index": i, "delta": role, "logprobs": None, "finish_reason": None}]}
                     for i in range(n)]  # fmt: skip

            def chunk(e: Event) -> dict[str, Any]:
                delta = {"content": e.text} if e.text else {}
                return {**head, "choices": [{"index": e.index, "delta": delta, "logprobs": None,
                                             "finish_reason": e.finish_reason}]}  # fmt: skip

            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return streamed(stream(request, job, first, chunk, include_usage, head))
        collected = await collect(request, job, n)
        if collected is None:
            return Response(status_code=499)
        failed(collected)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": "".join(t)}, "logprobs": None,
             "finish_reason": collected.finish_reasons[i]}
            for i, t in enumerate(collected.texts)
        ]  # fmt: skip
        return JSONResponse({**head, "choices": choices, "usage": usage(job.prompt_tokens, job.completion_tokens)})

    return Gate(app, engine, api_key)


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
