"""Chat messages laid out as the play script the model was trained on.

Each turn is a speaker's name, a colon, a newline and the speech, then a blank line, as in Tiny
Shakespeare::

    ROMEO:
    What light through yonder window breaks?

    JULIET:
    <the reply>

A user's turn is spoken by ``user`` (default ``ROMEO``), an assistant's by ``assistant`` (``JULIET``),
and a message's own ``name`` overrides either. A system (or developer) message is a paragraph of its
own with no speaker, like a stage direction. The prompt ends with the assistant's name, a colon and a
newline; the reply stops at the blank line that would begin the next speaker's turn (``TURN_END``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TURN_END = "\n\n"
DEFAULT_USER = "ROMEO"
DEFAULT_ASSISTANT = "JULIET"


@dataclass(frozen=True)
class Turn:
    role: str
    """``user``, ``assistant``, ``system`` or ``developer``."""
    content: str
    name: str | None = None


def check_speaker(name: str, what: str) -> None:
    """A speaker's name must be one line with no colon, or the script would not read back as turns."""
    if not name.strip() or "\n" in name or ":" in name:
        raise ValueError(f"{what}={name!r} is not a speaker's name: give one line of text without a colon")


def play_script(turns: Sequence[Turn], user: str = DEFAULT_USER, assistant: str = DEFAULT_ASSISTANT) -> str:
    """The prompt for ``turns``: each turn as the script lays it out, then the assistant's name to speak next."""
    if not turns:
        raise ValueError("messages is empty: give at least one message")
    check_speaker(user, "speakers.user")
    check_speaker(assistant, "speakers.assistant")
    parts = []
    for i, turn in enumerate(turns):
        speech = turn.content.strip("\n")
        if turn.role in ("system", "developer"):
            parts.append(speech + TURN_END)
            continue
        speaker = turn.name if turn.name is not None else user if turn.role == "user" else assistant
        check_speaker(speaker, f"messages[{i}].name")
        parts.append(f"{speaker}:\n{speech}{TURN_END}")
    return "".join(parts) + f"{assistant}:\n"
