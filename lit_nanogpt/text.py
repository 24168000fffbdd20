"""Tokenizers and text files: what turns text into token ids and back, and reading a corpus.

One concept, ``Tokenizer``, with four cases: ``Vocabulary`` (characters, nanoGPT's ``shakespeare_char``),
``TiktokenTokenizer`` (GPT-2's byte-level BPE as tiktoken has it, nanoGPT's ``shakespeare``) and
``HFTokenizer`` (a ``tokenizers`` library tokenizer: one trained here, ``bpe``, or a ``tokenizer.json``).
Each has a plain-data form (``to_plain``/``tokenizer_from_plain``: a str for characters, a dict of str, int and
lists otherwise) that a checkpoint (loaded with ``weights_only=True``) and an export's ``manifest.json`` carry.

Only numpy and torch at import (no Lightning, no tiktoken, no tokenizers): ``generate``, ``export`` and reading
a checkpoint start without them; tiktoken and tokenizers are imported when such a tokenizer is built.
``lit_nanogpt.data`` builds the datasets on top.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHIPPED_CORPUS = Path(__file__).parent / "assets" / "tinyshakespeare.txt"
SHIPPED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

TOKENIZERS = ("char", "gpt2", "bpe")
"""The names ``--data.tokenizer`` takes; anything else is a path to a ``tokenizer.json``."""

# GPT-2's encoding as tiktoken builds r50k_base (tiktoken_ext/openai_public.py), the same ranks, pattern and
# end-of-text token as its "gpt2" encoding, which reads them from GPT-2's vocab.bpe and encoder.json instead.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_ENDOFTEXT = {"<|endoftext|>": 50256}
GPT2_RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def _require(module: str, tokenizer: str) -> Any:
    """Import ``module`` for ``tokenizer``, or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"the {tokenizer} tokenizer needs the {module} package: pip install {module} "
            '(or pip install "lit-nanogpt[tokenizer]")'
        ) from None


def _ids_list(ids: list[int] | np.ndarray | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor | np.ndarray):
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


class Tokenizer:
    """Text to token ids and back. Subclasses: ``Vocabulary``, ``TiktokenTokenizer``, ``HFTokenizer``.

    ``decode`` maps an id the tokenizer lacks (a model's padded vocabulary: nanoGPT pads GPT-2's 50257 to 50304)
    to U+FFFD, so whatever a model samples prints.
    """

    name: str
    """``char``, ``gpt2``, ``bpe`` or ``tokenizer.json``: what ``--data.tokenizer`` named."""

    def __len__(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` (int64); a ``ValueError`` names what the tokenizer cannot encode."""
        raise NotImplementedError

    def decode(self, ids: list[int] | np.ndarray | torch.Tensor) -> str:
        raise NotImplementedError

    def unknown(self, text: str) -> list[str]:
        """The pieces of ``text`` this tokenizer cannot encode (none for a byte-level one)."""
        return []

    @property
    def default_prompt(self) -> str:
        """What sampling continues when no prompt is given: a newline, as nanoGPT's sample.py."""
        return "\n"

    def to_plain(self) -> str | dict[str, Any]:
        """Plain data (str, int, list, dict) that ``tokenizer_from_plain`` rebuilds this tokenizer from."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """A short hash of ``to_plain``: names a corpus cache encoded with this tokenizer."""
        return hashlib.sha256(json.dumps(self.to_plain(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The smallest unsigned integer type that holds every id (uint16 for GPT-2's 50257)."""
        for t in (np.uint8, np.uint16, np.uint32):
            if len(self) <= np.iinfo(t).max + 1:
                return t
        return np.uint64

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and other.to_plain() == self.to_plain()

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def describe(self) -> str:
        return f"{self.name} ({len(self)} tokens)"


class Vocabulary(Tokenizer):
    """Maps characters to ids and back; ids are positions in the sorted set of characters."""

    name = "char"

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

    def __hash__(self) -> int:
        return hash(self.chars)

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
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else "\ufffd" for i in _ids_list(ids))

    def to_plain(self) -> str:
        return self.chars  # a checkpoint's "vocab" as every lit-nanogpt checkpoint has it

    def describe(self) -> str:
        return f"char ({len(self)} characters)"


class TiktokenTokenizer(Tokenizer):
    """GPT-2's byte-level BPE through tiktoken, built from a ranks file's text (tiktoken's ``.tiktoken`` format:
    one ``base64-token rank`` per line) with GPT-2's pattern and end-of-text token, as tiktoken builds r50k_base.

    ``encode`` is tiktoken's ``encode_ordinary`` (nanoGPT's prepare.py): ``<|endoftext|>`` in a text is text.
    """

    name = "gpt2"

    def __init__(self, ranks: str, pattern: str = GPT2_PATTERN, special_tokens: dict[str, int] | None = None) -> None:
        tiktoken = _require("tiktoken", "gpt2")
        self.ranks, self.pattern = ranks, pattern
        self.special_tokens = dict(GPT2_ENDOFTEXT if special_tokens is None else special_tokens)
        mergeable = {}
        for n, line in enumerate(ranks.splitlines()):
            if not line:
                continue
            try:
                token, rank = line.split()
                mergeable[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise ValueError(f"line {n + 1} of the GPT-2 ranks is {line[:40]!r}, not 'BASE64 RANK'") from None
        self.mergeable_ranks: dict[bytes, int] = mergeable  # each token's bytes and id, the specials aside
        n_vocab = max([*mergeable.values(), *self.special_tokens.values()]) + 1
        self.encoding = tiktoken.Encoding(
            name="gpt2", pat_str=pattern, mergeable_ranks=mergeable, special_tokens=self.special_tokens,
            explicit_n_vocab=n_vocab,
        )  # fmt: skip
        self._bytes = self.encoding.token_byte_values()  # unused ids (none in GPT-2's) would be missing

    @classmethod
    def load(cls, path: str | Path | None = None) -> TiktokenTokenizer:
        """GPT-2's encoding from the ranks file ``path``; default tiktoken's cached (or downloaded) r50k_base file."""
        return cls(gpt2_ranks(path))

    def __len__(self) -> int:
        return int(self.encoding.n_vocab)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.encoding.encode_ordinary(text), dtype=np.int64)

    def token_bytes(self, ids: list[int]) -> bytes:
        n = len(self)
        return b"".join(self.encoding.decode_single_token_bytes(i) if 0 <= i < n else b"\xef\xbf\xbd" for i in ids)

    def decode(self, ids: list[int] | np.ndarray | torch.Tensor) -> str:
        return self.token_bytes(_ids_list(ids)).decode("utf-8", errors="replace")

    def to_plain(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "name": self.name, "ranks": self.ranks, "pattern": self.pattern,
                "special_tokens": self.special_tokens}  # fmt: skip


def gpt2_ranks(path: str | Path | None = None) -> str:
    """The text of GPT-2's ranks file: ``path``, else tiktoken's cache of r50k_base's (downloaded once if online)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"GPT-2 ranks file {path} does not exist: pass --data.tokenizer_path with tiktoken's "
                f"r50k_base.tiktoken (sha256 {GPT2_RANKS_SHA256[:12]}..., from {GPT2_RANKS_URL})"
            )
        return path.read_text(encoding="ascii")
    _require("tiktoken", "gpt2")
    from tiktoken.load import read_file_cached

    try:
        data = read_file_cached(GPT2_RANKS_URL, GPT2_RANKS_SHA256)
    except Exception as e:  # offline: requests' ConnectionError and its kin
        # Where tiktoken's read_file_cached looks, under the name it gives the download (load.py).
        default = os.path.join(tempfile.gettempdir(), "data-gym-cache")
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or default
        key = hashlib.sha1(GPT2_RANKS_URL.encode()).hexdigest()
        raise FileNotFoundError(
            f"GPT-2's ranks file r50k_base.tiktoken could not be fetched ({type(e).__name__}): download "
            f"{GPT2_RANKS_URL} and pass --data.tokenizer_path FILE, or put it at {os.path.join(cache, key)} "
            "(tiktoken's cache, $TIKTOKEN_CACHE_DIR)"
        ) from None
    return data.decode("ascii")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer, carried as its ``tokenizer.json`` text.

    ``bpe``: a byte-level BPE trained here on the training split (``train_bpe``); otherwise a ``tokenizer.json``.
    An id the tokenizer lacks decodes to U+FFFD; a text with pieces it maps to its unknown token is refused.
    """

    def __init__(self, json_text: str, name: str = "tokenizer.json") -> None:
        tokenizers = _require("tokenizers", name)
        self.json_text, self.name = json_text, name
        try:
            self.tokenizer = tokenizers.Tokenizer.from_str(json_text)
        except Exception as e:
            raise ValueError(f"not a tokenizers tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        self._size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        model = json.loads(json_text).get("model", {})
        unk = model.get("unk_token")
        self._unk_id = self.tokenizer.token_to_id(unk) if isinstance(unk, str) else None

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"--data.tokenizer {path} is none of {', '.join(TOKENIZERS)} and not a file: name one of them or "
                "pass a tokenizer.json"
            )
        try:
            return cls(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"--data.tokenizer {path}: {e}") from None

    def __len__(self) -> int:
        return int(self._size)

    def unknown(self, text: str) -> list[str]:
        if self._unk_id is None:
            return []
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return sorted({text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == self._unk_id})

    def encode(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if self._unk_id is not None and self._unk_id in enc.ids:
            missing = sorted({text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == self._unk_id})
            raise ValueError(
                f"text the {self.name} tokenizer cannot encode (it maps it to its unknown token): "
                f"{''.join(missing)[:80]!r}; remove it, or use a tokenizer that has it (gpt2 and bpe encode any text)"
            )
        return np.asarray(enc.ids, dtype=np.int64)

    def decode(self, ids: list[int] | np.ndarray | torch.Tensor) -> str:
        out, run = [], []
        for i in _ids_list(ids):  # ids it lacks as U+FFFD, the rest decoded in runs
            if 0 <= i < self._size:
                run.append(i)
                continue
            out.append(self.tokenizer.decode(run, skip_special_tokens=False) if run else "")
            out.append("\ufffd")
            run = []
        out.append(self.tokenizer.decode(run, skip_special_tokens=False) if run else "")
        return "".join(out)

    def to_plain(self) -> dict[str, Any]:
        return {"kind": "tokenizers", "name": self.name, "json": self.json_text}


def train_bpe(texts: Iterator[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE (GPT-2's pre-tokenization and byte alphabet) of ``vocab_size`` ids learned from ``texts``."""
    _require("tokenizers", "bpe")
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet):
        raise ValueError(
            f"data.bpe_vocab_size={vocab_size} is smaller than the {len(alphabet)} bytes a byte-level BPE starts "
            "from: use at least 256, e.g. 1024"
        )
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok.to_str(), name="bpe")


def tokenizer_from_plain(plain: Any) -> Tokenizer:
    """The tokenizer a checkpoint's or manifest's ``vocab`` describes: a str of characters (every checkpoint
    before other tokenizers), or a dict from ``Tokenizer.to_plain``."""
    if isinstance(plain, str):
        return Vocabulary(plain)
    if isinstance(plain, dict) and plain.get("kind") == "tiktoken":
        return TiktokenTokenizer(plain["ranks"], plain["pattern"], dict(plain["special_tokens"]))
    if isinstance(plain, dict) and plain.get("kind") == "tokenizers":
        return HFTokenizer(plain["json"], name=str(plain.get("name", "tokenizer.json")))
    what = f"a dict of kind {plain.get('kind')!r}" if isinstance(plain, dict) else f"a {type(plain).__name__}"
    raise ValueError(
        f"the tokenizer is {what}, not characters or a tiktoken or tokenizers one: a newer lit-nanogpt wrote it"
    )


def tokenizer_for_model(where: str | Path, plain: Any, vocab_size: int) -> Tokenizer:
    """The tokenizer a checkpoint or export folder ``where`` carries, checked to fit a model of ``vocab_size`` ids:
    the model's vocabulary may be larger than the tokenizer's (padded, as nanoGPT pads GPT-2's 50257 to 50304),
    never smaller."""
    try:
        tokenizer = tokenizer_from_plain(plain)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: its tokenizer is damaged ({type(e).__name__}: {e}); use a complete file") from None
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"{where}: its tokenizer, {tokenizer.describe()}, has more ids than the weights' vocab_size={vocab_size}: "
            "the tokenizer and the weights are from different models; use the files of one run"
        )
    return tokenizer


def load_tokenizer(name: str, path: str | None = None) -> Tokenizer | None:
    """The tokenizer ``--data.tokenizer name`` gives before seeing the corpus: ``gpt2`` or a tokenizer.json;
    ``None`` for ``char`` and ``bpe``, which are built from the corpus (``Vocabulary.from_text``, ``train_bpe``)."""
    if name in ("char", "bpe"):
        return None
    if name == "gpt2":
        return TiktokenTokenizer.load(path)
    return HFTokenizer.load(name)


# A piece boundary of GPT-2's pattern (and of tokenizers' ByteLevel one): after a newline that follows a
# non-space and precedes one, the newline is a piece of its own whether the text goes on or ends there.
_CHUNK_BOUNDARY = re.compile(r"\S\n(?=\S)")


def text_chunks(text: str, size: int = 1 << 20) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut where a BPE encodes the same as the whole text does."""
    start = 0
    while len(text) - start > size:
        m = _CHUNK_BOUNDARY.search(text, start + size)
        if m is None:
            break
        yield text[start : m.end()]
        start = m.end()
    yield text[start:]


class TextStream:
    """Decodes a row's tokens as they come and hands back only whole characters: a byte-level BPE token may end
    inside a UTF-8 character, whose bytes then wait for the token that completes them.

    The approach of Hugging Face's text-generation-inference: decode from a few tokens back (so a tokenizer that
    decodes a token differently at the start of a text agrees) and keep text that ends in U+FFFD for later.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids or [])
        self._prefix = max(len(self.ids) - 5, 0)
        self._read = len(self.ids)

    def push(self, tokens: list[int]) -> str:
        """The text that ``tokens`` complete ("" while a character is unfinished)."""
        self.ids.extend(tokens)
        if isinstance(self.tokenizer, Vocabulary):  # one token is one character
            self._prefix = self._read = len(self.ids)
            return self.tokenizer.decode(tokens)
        before = self.tokenizer.decode(self.ids[self._prefix : self._read])
        text = self.tokenizer.decode(self.ids[self._prefix :])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """What is left at the end (an unfinished character as U+FFFD)."""
        before = self.tokenizer.decode(self.ids[self._prefix : self._read])
        text = self.tokenizer.decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(before) :]


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
