"""OpenAI's request bodies as the server reads them, and chat messages laid out as the play script."""

from __future__ import annotations

import re

import pytest

from lit_nanogpt.serve.chat import Turn, play_script
from lit_nanogpt.serve.protocol import APIError, ChatRequest, CompletionRequest, parse


def test_chat_turns_are_laid_out_as_the_play_script() -> None:
    turns = [
        Turn("system", "Verona. A public place.\n"),
        Turn("user", "Good morrow, cousin."),
        Turn("assistant", "Is the day so young?"),
        Turn("user", "But new struck nine.", name="BENVOLIO"),
    ]
    assert play_script(turns) == (
        "Verona. A public place.\n\n"
        "ROMEO:\nGood morrow, cousin.\n\n"
        "JULIET:\nIs the day so young?\n\n"
        "BENVOLIO:\nBut new struck nine.\n\n"
        "JULIET:\n"
    )
    assert play_script([Turn("user", "Peace!")], user="SAMPSON", assistant="GREGORY") == (
        "SAMPSON:\nPeace!\n\nGREGORY:\n"
    )


@pytest.mark.parametrize(
    ("turns", "speakers", "match"),
    [
        ([], {}, "messages is empty"),
        ([Turn("user", "hi")], {"assistant": "A:B"}, "speakers.assistant='A:B'"),
        ([Turn("user", "hi", name="TWO\nLINES")], {}, r"messages\[0\].name"),
        ([Turn("user", "hi")], {"user": " "}, "speakers.user"),
    ],
)
def test_speakers_must_read_back_as_turns(turns: list[Turn], speakers: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        play_script(turns, **speakers)


def _error(model: type, body: object) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(model, body)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        ({}, "prompt", "missing required parameter 'prompt'"),
        ([1, 2], None, "the body must be a JSON object"),
        ({"prompt": 5}, "prompt", "prompt: Input should be a valid"),
        ({"prompt": ["a", 3]}, "prompt.1", "valid string"),
        ({"prompt": "a", "max_tokens": "5"}, "max_tokens", r"valid integer \(got '5'\)"),
        ({"prompt": "a", "max_tokens": 2.5}, "max_tokens", "valid integer"),
        ({"prompt": "a", "temperature": "hot"}, "temperature", "valid number"),
        ({"prompt": "a", "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"prompt": "a", "top_p": 0}, "top_p", "greater than 0"),
        ({"prompt": "a", "top_k": 0}, "top_k", "greater than or equal to 1"),
        ({"prompt": "a", "n": 0}, "n", "greater than or equal to 1"),
        ({"prompt": "a", "stream": "yes"}, "stream", "valid boolean"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"prompt": "a", "logprobs": 3}, "logprobs", "logprobs=3 is not supported"),
        ({"prompt": "a", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"prompt": "a", "best_of": 3}, "best_of", "not supported"),
    ],
)
def test_bad_completion_bodies_name_the_parameter(body: object, param: str | None, match: str) -> None:
    error = _error(CompletionRequest, body)
    assert error.param == param
    assert re.search(match, error.message), error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x"}], "speakers": {"narrator": "X"}}, "speakers.narrator"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_bad_chat_bodies_name_the_parameter(body: object, param: str) -> None:
    assert _error(ChatRequest, body).param == param


def test_good_bodies_keep_openai_defaults_and_ignore_what_changes_nothing() -> None:
    request = parse(CompletionRequest, {"prompt": ["a", "b"], "model": "x", "user": "me", "logprobs": None, "stop": ""})
    assert request.temperature is None and request.top_p is None and request.top_k is None and request.n is None
    assert request.stops() == []
    chat = parse(ChatRequest, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]}]})  # fmt: skip
    assert chat.messages[0].text() == "ab"
