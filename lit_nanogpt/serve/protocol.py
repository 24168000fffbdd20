"""OpenAI's request bodies and error shape, as its Python client sends and reads them.

Bodies are checked strictly (a number where a string belongs is a 400, not coerced); fields OpenAI
defines that change nothing here (``user``, ``model``, ``metadata``, ...) are accepted and ignored,
and those this server cannot honour (``logprobs``, ``suffix``, penalties, ``logit_bias``, tools) are
refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Stop = str | Annotated[list[str], Field(max_length=4)] | None


class APIError(Exception):
    """An error as OpenAI returns it: ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """What completions and chat share: sampling, stopping, streaming, and nanoGPT's ``top_k`` as an extension."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stop: Stop = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    # Refused unless left at OpenAI's default (``refused`` below).
    logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: Any = None
    best_of: Any = None


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class Speakers(BaseModel):
    """Who speaks each role's turns in the play script (an extension); a message's ``name`` overrides it."""

    model_config = ConfigDict(strict=True, extra="forbid")
    user: str | None = None
    assistant: str | None = None


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = None
    speakers: Speakers | None = None
    top_logprobs: Any = None
    tools: Any = None
    functions: Any = None


# OpenAI's defaults of the fields refused when set otherwise.
_REFUSED_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "tools": (None, []),
    "functions": (None, []),
}


def refused(request: BaseModel) -> None:
    """A 400 naming the first field this server cannot honour, when the request sets one."""
    for name, defaults in _REFUSED_DEFAULTS.items():
        value = getattr(request, name, None)
        if not any(value == d and type(value) is type(d) for d in defaults) and value is not None:
            raise APIError(400, f"{name}={value!r:.60} is not supported by this server; leave it unset", name)


_TYPE_TAGS = {"str", "int", "float", "bool", "none"}


def _param(loc: tuple[int | str, ...]) -> str:
    """``messages.1.content`` from pydantic's location, without the union members it names (``str``, ``list[str]``)."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif part not in _TYPE_TAGS and "[" not in part and not part[:1].isupper() and not part.startswith("function"):
            parts.append(part)
    return ".".join(parts)


def validation_error(e: ValidationError) -> APIError:
    """The 400 for a body that does not fit its schema: the first field's problem, named by its path.

    A union (``prompt``: a string or a list of strings) gives one error per member: the one that went
    deepest, or failed a constraint rather than the type, is the one that speaks of what was sent.
    """
    errors = e.errors()
    field = errors[0]["loc"][:1]
    first = max((x for x in errors if x["loc"][:1] == field), key=lambda x: (len(x["loc"]), "_type" not in x["type"]))
    param = _param(first["loc"]) or None
    if first["type"] == "missing":
        return APIError(400, f"missing required parameter {param!r}", param, "missing_required_parameter")
    if first["type"] in ("model_type", "model_attributes_type", "dict_type") and not param:
        return APIError(400, "the body must be a JSON object")
    if first["type"] == "extra_forbidden":
        return APIError(400, f"{param} is not a parameter here", param, "unknown_parameter")
    given = first.get("input")
    shown = f" (got {given!r:.60})" if isinstance(given, str | int | float | bool) or given is None else ""
    if isinstance(given, list | dict):
        shown = f" (got a {'list' if isinstance(given, list) else 'JSON object'})"
    return APIError(400, f"{param}: {first['msg']}{shown}", param, "invalid_type" if "type" in first["type"] else None)


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` as ``model``, or the 400 that names what is wrong with it."""
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None
    refused(request)
    return request


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
