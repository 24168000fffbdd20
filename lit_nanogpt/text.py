"""Characters and text files: the vocabulary and reading a corpus.

Only numpy and torch here (no Lightning), so that ``generate``, ``export`` and reading a checkpoint
start without importing Lightning; ``lit_nanogpt.data`` builds the datasets on top.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

SHIPPED_CORPUS = Path(__file__).parent / "assets" / "tinyshakespeare.txt"
SHIPPED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class Vocabulary:
    """Maps characters to ids and back; ids are positions in the sorted set of characters."""

    def __init__(self, chars: str) -> None:
        if not chars:
            raise ValueError("the vocabulary is empty: build it from a non-empty text")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        # Sorted code points let numpy encode a whole corpus with one searchsorted.
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.chars == self.chars

    @property
    def default_prompt(self) -> str:
        """What sampling continues when no prompt is given: a newline (nanoGPT's), else the first character."""
        return "\n" if "\n" in self.stoi else self.chars[0]

    def unknown(self, text: str) -> list[str]:
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text``; a ``ValueError`` names every character the vocabulary lacks."""
        if missing := self.unknown(text):
            raise ValueError(
                f"characters not in the model's vocabulary: {''.join(missing)!r}; "
                "remove them or train on a corpus that has them"
            )
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.searchsorted(self._codes, codes).astype(np.int64)

    def decode(self, ids: list[int] | np.ndarray | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)


def read_corpus(path: Path, what: str = "corpus") -> tuple[str, str]:
    """Text and sha256 of a UTF-8 text file, with one clear error for each way it can be unusable."""
    if not path.is_file():
        hint = "pass --data.data_path with a UTF-8 text file" if what == "corpus" else "check the path"
        raise FileNotFoundError(f"{what} {path} does not exist or is not a file: {hint}")
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"{what} {path} is empty: pass a UTF-8 text file with some text in it")
    sha = hashlib.sha256(raw).hexdigest()
    if path.resolve() == SHIPPED_CORPUS.resolve() and sha != SHIPPED_SHA256:
        raise ValueError(f"shipped corpus {path} has sha256 {sha}, not {SHIPPED_SHA256}: reinstall lit_nanogpt")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {path} is not UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}): convert it, "
            f"e.g. iconv -f LATIN1 -t UTF-8"
        ) from None
    return text, sha
