"""A corpus, its tokenizer and the LightningDataModule that serves them.

nanoGPT's rules: the first 90% of the text's characters is train and the rest validation, each encoded on its
own (``data/shakespeare/prepare.py``; for characters the same as encoding and then splitting the ids, as
``shakespeare_char`` does). Encoded splits are cached on disk beside the tokenizer, in a folder named after the
corpus's sha256 (and the tokenizer, for other tokenizers than characters), so an edited corpus is encoded afresh.
Ids are stored in the smallest unsigned type that holds the vocabulary (uint16 for GPT-2's, as nanoGPT's
``train.bin``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_nanogpt.files import atomic_open
from lit_nanogpt.sampling import SamplingSettings
from lit_nanogpt.text import (
    SHIPPED_CORPUS,
    SHIPPED_SHA256,
    Tokenizer,
    Vocabulary,
    load_tokenizer,
    read_corpus,
    text_chunks,
    tokenizer_from_plain,
    train_bpe,
)

__all__ = [
    "SHIPPED_CORPUS",
    "SHIPPED_SHA256",
    "CharDataModule",
    "EncodedCorpus",
    "Tokenizer",
    "Vocabulary",
    "read_corpus",
]

CHUNK_CHARS = 1 << 22
"""Characters encoded at a time: memory stays bounded by a chunk's ids, whatever the corpus's size."""


def default_cache_dir() -> Path:
    """``$LIT_NANOGPT_CACHE``, else ``$XDG_CACHE_HOME/lit_nanogpt``, else ``~/.cache/lit_nanogpt``."""
    if "LIT_NANOGPT_CACHE" in os.environ:
        return Path(os.environ["LIT_NANOGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lit_nanogpt"


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The train and validation text: nanoGPT's cut at ``int(n * 0.9)`` characters for ``val_fraction=0.1``."""
    n = int(len(text) * (1.0 - val_fraction))
    return text[:n], text[n:]


class EncodedCorpus:
    """A corpus's tokenizer and its encoded train and validation splits, cached on disk.

    Args:
        path: The UTF-8 text.
        cache_dir: Where the encoded splits are kept.
        val_fraction: Share of the text, taken from its end, held out for validation.
        tokenizer: ``char`` (the sorted characters of the text), ``gpt2``, ``bpe`` (trained on the train split)
            or a tokenizer.json path; see ``CharDataModule``.
        tokenizer_path: ``gpt2`` only: GPT-2's ranks file.
        bpe_vocab_size: ``bpe`` only: the ids it learns.
        given: A tokenizer to encode with instead (a checkpoint's): ``tokenizer`` is then not built.
    """

    def __init__(
        self,
        path: Path,
        cache_dir: Path,
        val_fraction: float = 0.1,
        tokenizer: str = "char",
        tokenizer_path: str | None = None,
        bpe_vocab_size: int = 1024,
        given: Tokenizer | None = None,
    ) -> None:
        text, sha = read_corpus(path)
        self.path, self.sha256 = path, sha
        if isinstance(given, Vocabulary):  # characters come from the text; the data module compares them
            given, tokenizer = None, "char"
        known = given if given is not None else load_tokenizer(tokenizer, tokenizer_path)
        if known is not None:
            tag = f"-{known.name.replace('.', '_')}-{known.fingerprint}"
        else:
            tag = f"-bpe{bpe_vocab_size}" if tokenizer == "bpe" else ""
        # Characters keep the folder name they always had, so an existing cache is reused.
        self.folder = cache_dir / f"{path.stem}-{sha[:16]}-val{val_fraction:g}{tag}"
        meta_file = self.folder / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta.get("sha256") == sha:
                if (damage := self._damage(meta)) is None:
                    self.vocab = known if known is not None else tokenizer_from_plain(meta["vocab"])
                    self.dtype = np.dtype(meta.get("dtype", "uint32"))  # before other tokenizers: uint32
                    self.n_train = meta["n_train"]
                    self.n_val = meta["n_val"]
                    return
                print(f"lit-nanogpt: corpus cache {self.folder}: {damage}; rebuilding it", file=sys.stderr)
        train_text, val_text = split_text(text, val_fraction)
        if known is not None:
            self.vocab = known
        elif tokenizer == "bpe":
            self.vocab = train_bpe(text_chunks(train_text, CHUNK_CHARS), bpe_vocab_size)
        else:
            self.vocab = Vocabulary.from_text(text)
        self.dtype = np.dtype(self.vocab.dtype)
        self.folder.mkdir(parents=True, exist_ok=True)
        files, counts = {}, {}
        progress = _Progress(path, self.vocab, len(text))
        for name, part in (("train.bin", train_text), ("val.bin", val_text)):
            counts[name], files[name] = self._encode_to(self.folder / name, part, progress)
        progress.done(counts["train.bin"], counts["val.bin"])
        self.n_train, self.n_val = counts["train.bin"], counts["val.bin"]
        meta = {"source": str(path), "sha256": sha, "vocab": self.vocab.to_plain(), "dtype": self.dtype.name,
                "n_train": self.n_train, "n_val": self.n_val, "files": files}  # fmt: skip
        _atomic_write(meta_file, json.dumps(meta, ensure_ascii=False).encode("utf-8"))

    def _encode_to(self, path: Path, text: str, progress: _Progress) -> tuple[int, dict[str, Any]]:
        """Encode ``text`` chunk by chunk into ``path``; the number of ids and the file's size and sha256."""
        digest, count, size = hashlib.sha256(), 0, 0
        with atomic_open(path) as f:
            for chunk in text_chunks(text, CHUNK_CHARS):
                try:  # a tokenizer.json with an unknown token refuses text it lacks, naming it
                    data = self.vocab.encode(chunk).astype(self.dtype).tobytes()
                except ValueError as e:
                    raise ValueError(f"corpus {self.path}: {e}") from None
                f.write(data)
                digest.update(data)
                count, size = count + len(data) // self.dtype.itemsize, size + len(data)
                progress.advance(len(chunk), count)
        return count, {"bytes": size, "sha256": digest.hexdigest()}

    def _damage(self, meta: dict[str, Any]) -> str | None:
        """What is wrong with the cached splits, checked against the sizes and checksums meta.json recorded; None if
        nothing. A cache is read whole anyway (``split``), so hashing it costs one more pass over memory."""
        if not isinstance(meta.get("files"), dict):
            return "meta.json records no sizes and checksums (an older lit-nanogpt wrote it)"
        for name, want in meta["files"].items():
            path = self.folder / name
            if not path.is_file():
                return f"{name} is missing"
            if (size := path.stat().st_size) != want["bytes"]:
                return f"{name} has {size} bytes, meta.json says {want['bytes']}"
            if hashlib.sha256(path.read_bytes()).hexdigest() != want["sha256"]:
                return f"{name} does not match its sha256 in meta.json"
        return None

    def split(self, name: str) -> torch.Tensor:
        """The ``train`` or ``val`` ids as an int64 tensor, ready to index embeddings."""
        ids = np.fromfile(self.folder / f"{name}.bin", dtype=self.dtype)
        return torch.from_numpy(ids.astype(np.int64))


class _Progress:
    """One stderr line per few seconds while a corpus of more than one chunk is encoded, and one at the end (unless
    it was a single chunk of characters)."""

    def __init__(self, path: Path, tokenizer: Tokenizer, total: int) -> None:
        self.path, self.tokenizer, self.total = path, tokenizer, total
        self.start = self.last = time.perf_counter()
        self.chars = 0

    def advance(self, chars: int, ids: int) -> None:
        self.chars += chars
        now = time.perf_counter()
        if self.total > CHUNK_CHARS and now - self.last >= 2.0:
            self.last = now
            done = f"{100 * self.chars / self.total:.0f}% of {self.total:,} characters"
            where = f"lit-nanogpt: encoding {self.path.name} with {self.tokenizer.name}"
            print(f"{where}: {done}", file=sys.stderr, flush=True)

    def done(self, n_train: int, n_val: int) -> None:
        if isinstance(self.tokenizer, Vocabulary) and self.total <= CHUNK_CHARS:
            return  # encoded in a blink, as it always was: nothing to report
        took = time.perf_counter() - self.start
        print(f"lit-nanogpt: encoded {self.path.name} with {self.tokenizer.describe()}: {n_train:,} train and "
              f"{n_val:,} validation tokens in {took:.1f} s", file=sys.stderr, flush=True)  # fmt: skip


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RandomWindows(IterableDataset):
    """Endless batches of random windows, as nanoGPT's ``get_batch``, gathered in one indexing op.

    A resumable stream: ``state_dict`` holds the seed and how many batches training has taken
    (``consumed``, advanced by ``CharDataModule.on_before_batch_transfer``, not by drawing: Lightning
    draws one batch ahead), and a stream loaded with it continues with the batch that would have
    come next. Each rank draws from its own generator (the run's seed plus an offset for the rank, added
    when drawing) and all ranks take the same number of batches, so the state holds nothing of a rank:
    rank 0's, the one Lightning writes, resumes every rank on its own windows (tests/e2e/test_longruns.py,
    two-process DDP). That needs the run's seed on every rank, which ``seed_everything`` gives; with
    ``seed_everything: false`` a resumed rank 1 draws from rank 0's seed, not the one it started with.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int) -> None:
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.consumed = 0
        self.seed: int | None = None  # fixed at the first iter(): the global seed (seed_everything) then

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, _ = _rank_and_world()
        if self.seed is None:
            self.seed = torch.initial_seed()
        # Seeded from the global seed so runs repeat; each rank draws its own windows.
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * rank)
        offsets = torch.arange(self.block_size + 1)
        high = len(self.data) - self.block_size
        for _ in range(self.consumed):  # replaying the draws is cheap next to the steps they fed
            torch.randint(high, (self.batch_size,), generator=g)
        while True:
            ix = torch.randint(high, (self.batch_size,), generator=g)
            chunk = self.data[ix[:, None] + offsets]  # (B, T + 1)
            yield chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "consumed": self.consumed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.consumed = state["seed"], int(state["consumed"])


class StreamLoader(DataLoader):
    """A ``DataLoader`` whose dataset's ``state_dict`` Lightning saves in every checkpoint and restores on resume
    (Lightning asks the loaders, not their datasets: fit_loop.py ``on_save_checkpoint``)."""

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)  # type: ignore[attr-defined]


class SequentialWindows(IterableDataset):
    """The consecutive, non-overlapping ``block_size`` windows from 0, split across ranks, no padding: every one,
    or ``limit`` of them evenly spaced over the text (the same ones every time)."""

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, limit: int = 0) -> None:
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.num_windows = (len(data) - 1) // block_size
        if 0 < limit < self.num_windows:
            self.windows = torch.arange(limit) * self.num_windows // limit  # steps of at least 1: no repeats
        else:
            self.windows = torch.arange(self.num_windows)

    def _my_windows(self) -> torch.Tensor:
        rank, world = _rank_and_world()
        return self.windows[rank::world]

    def __len__(self) -> int:
        return -(-len(self._my_windows()) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offsets = torch.arange(self.block_size + 1)
        for w in self._my_windows().split(self.batch_size):
            chunk = self.data[w[:, None] * self.block_size + offsets]  # (B, T + 1)
            yield chunk[:, :-1], chunk[:, 1:]


class CharDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_path: str | None = None,
        block_size: int = 256,
        batch_size: int = 64,
        val_batch_size: int = 128,
        val_fraction: float = 0.1,
        val_est_windows: int = 240,
        cache_dir: str | None = None,
        prompts: list[str] | None = None,
        tokenizer: str = "char",
        tokenizer_path: str | None = None,
        bpe_vocab_size: int = 1024,
        vocab_size: int | None = None,
        vocab: str | dict[str, str | dict[str, int]] | None = None,
        **sampling: Any,
    ) -> None:
        """Serve a corpus, encoded by characters or a BPE, for training, validation and sampling.

        Args:
            data_path: A UTF-8 text file; ``None`` is the shipped Tiny Shakespeare.
            block_size: Window length in tokens; linked from ``model.block_size`` by the CLI.
            batch_size: Random training windows per step (per device).
            val_batch_size: Validation windows per forward pass; changes speed, not the result.
            val_fraction: Share of the text's characters, taken from its end, held out for validation.
            val_est_windows: ``fit`` only: validate during training on this many windows, evenly spaced over
                the validation split and the same at every validation, logged as ``val_loss_est`` (the best
                checkpoint is chosen on it); ``0``: on every window. The default, 240, is nanoGPT's CPU
                recipe's estimate (``eval_iters`` 20 x ``batch_size`` 12). ``validate``, ``test`` and the fit's
                final pass over its best checkpoint (``val_loss``) always take every window.
            cache_dir: Where encoded splits are kept; default ``$LIT_NANOGPT_CACHE`` or ``~/.cache/lit_nanogpt``.
            prompts: ``predict`` only: the texts to continue; default a newline, or the vocabulary's first
                character when it has none.
            tokenizer: ``char`` (the sorted characters of the corpus, nanoGPT's ``shakespeare_char``), ``gpt2``
                (tiktoken's GPT-2 BPE, nanoGPT's ``shakespeare``; needs ``pip install tiktoken``), ``bpe`` (a
                byte-level BPE of ``bpe_vocab_size`` ids trained on the train split; needs ``tokenizers``), or the
                path of a ``tokenizer.json`` (``tokenizers``).
            tokenizer_path: ``gpt2`` only: GPT-2's ranks file (tiktoken's ``r50k_base.tiktoken``); default
                tiktoken's cache, which tiktoken fills from the network once.
            bpe_vocab_size: ``bpe`` only: the ids the BPE learns (at least 256, its byte alphabet).
            vocab_size: The model's vocabulary, linked to ``model.arch.vocab_size``; default the tokenizer's size.
                May be larger, never smaller (nanoGPT pads GPT-2's 50257 to 50304 for speed).
            vocab: The tokenizer, when a checkpoint gives it (``--ckpt_path`` sets it): characters as a string,
                others as their plain form. ``predict`` then reads no corpus, and ``validate``/``test`` encode
                the corpus with it (and refuse a corpus with other characters).
            sampling: ``predict`` only: ``SamplingSettings``' fields (``max_new_tokens``, ``temperature``,
                ``top_k``, ``num_samples``), given flat: ``--data.max_new_tokens``.
        """
        super().__init__()
        self.save_hyperparameters()
        self.sampling = SamplingSettings(**sampling)
        for name, value in (("block_size", block_size), ("batch_size", batch_size),
                            ("val_batch_size", val_batch_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"data.{name}={value} must be a positive integer")
        if val_est_windows < 0:
            raise ValueError(f"data.val_est_windows={val_est_windows} must be 0 (every window) or a positive count")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must be between 0 and 1, e.g. 0.1")
        self.corpus_path = Path(data_path) if data_path else SHIPPED_CORPUS
        self._vocab = tokenizer_from_plain(vocab) if vocab else None
        self._corpus: EncodedCorpus | None = None
        if self._vocab is None:
            self.corpus  # noqa: B018  read now: a bad corpus fails before anything else starts
        if vocab_size is not None and vocab_size < len(self.vocab):
            raise ValueError(
                f"data.vocab_size={vocab_size} (the model's vocab_size) is smaller than the {self.vocab.describe()} "
                f"tokenizer: use at least {len(self.vocab)}, or leave it unset"
            )
        self.train_data: torch.Tensor | None = None
        self.train_stream: RandomWindows | None = None
        self.val_data: torch.Tensor | None = None
        self._val_limit = 0  # windows per validation: val_est_windows while fitting, else every one

    @property
    def _hp(self) -> Any:
        """The saved arguments: Lightning's AttributeDict, typed as a plain mapping."""
        return self.hparams

    @property
    def corpus(self) -> EncodedCorpus:
        """The corpus, read (and encoded, once) on first use: ``predict`` from a checkpoint never reads it."""
        if self._corpus is None:
            hp = self._hp
            cache = Path(hp.cache_dir) if hp.cache_dir else default_cache_dir()
            self._corpus = EncodedCorpus(self.corpus_path, cache, hp.val_fraction, hp.tokenizer, hp.tokenizer_path,
                                         hp.bpe_vocab_size, given=self._vocab)  # fmt: skip
            if self._vocab is not None and self._corpus.vocab != self._vocab:
                raise ValueError(
                    f"corpus {self.corpus_path} has {len(self._corpus.vocab)} characters, not the checkpoint's "
                    f"{len(self._vocab)}: pass --data.data_path with the text the model was trained on"
                )
        return self._corpus

    @property
    def vocab(self) -> Tokenizer:
        """The tokenizer (``Vocabulary`` for characters)."""
        return self._vocab if self._vocab is not None else self.corpus.vocab

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: ``data.vocab_size`` if set, else the tokenizer's size."""
        return self._hp.vocab_size or len(self.vocab)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records of the corpus, so that ``validate`` can say which text it needs."""
        return {"corpus": str(self.corpus.path), "sha256": self.corpus.sha256} if self._corpus else {}

    def setup(self, stage: str) -> None:
        if stage == "predict":
            return  # the prompts and the model's vocabulary are all predict needs
        need = self._hp.block_size + 1
        unit = "characters" if isinstance(self.corpus.vocab, Vocabulary) else "tokens"
        for name, n in (("train", self.corpus.n_train), ("val", self.corpus.n_val)):
            if n < need:
                raise ValueError(
                    f"corpus {self.corpus.path}: its {name} split has {n} {unit}, fewer than "
                    f"block_size + 1 = {need}: use a longer text or a smaller --model.block_size"
                )
        if stage == "fit" and self.train_data is None:
            self.train_data = self.corpus.split("train")
        if stage in ("fit", "validate", "test") and self.val_data is None:
            self.val_data = self.corpus.split("val")
        self._val_limit = self._hp.val_est_windows if stage == "fit" else 0

    def train_dataloader(self) -> DataLoader:
        assert self.train_data is not None
        self.train_stream = RandomWindows(self.train_data, self._hp.block_size, self._hp.batch_size)
        return StreamLoader(self.train_stream, batch_size=None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called for each batch a step takes, never for the one Lightning fetched ahead: the stream's position.
        if self.trainer is not None and self.trainer.training and self.train_stream is not None:
            self.train_stream.consumed += 1
        return batch

    def val_dataloader(self) -> DataLoader:
        assert self.val_data is not None
        ds = SequentialWindows(self.val_data, self._hp.block_size, self._hp.val_batch_size, self._val_limit)
        return DataLoader(ds, batch_size=None)

    # Tiny Shakespeare has no separate test split; `test` reports on the held-out validation text.
    test_dataloader = val_dataloader

    def predict_dataloader(self) -> DataLoader:
        prompts = self._hp.prompts or [self.vocab.default_prompt]
        requests: list[dict[str, Any]] = [
            {"prompt": p, "sample": i, "sampling": self.sampling}
            for p in prompts
            for i in range(self.sampling.num_samples)
        ]
        return DataLoader(requests, batch_size=None)  # type: ignore[arg-type]  # a list is a map-style dataset
