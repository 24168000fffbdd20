"""Character-level corpus, vocabulary and the LightningDataModule that serves them.

nanoGPT's ``shakespeare_char`` rules: the vocabulary is the sorted set of characters, the first 90%
of the text is train and the rest validation. Encoded splits are cached on disk beside the
vocabulary, in a folder named after the corpus's sha256, so an edited corpus is encoded afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_nanogpt.files import atomic_open
from lit_nanogpt.sampling import SamplingSettings
from lit_nanogpt.text import SHIPPED_CORPUS, SHIPPED_SHA256, Vocabulary, read_corpus

__all__ = [
    "SHIPPED_CORPUS",
    "SHIPPED_SHA256",
    "CharDataModule",
    "EncodedCorpus",
    "Vocabulary",
    "read_corpus",
]


def default_cache_dir() -> Path:
    """``$LIT_NANOGPT_CACHE``, else ``$XDG_CACHE_HOME/lit_nanogpt``, else ``~/.cache/lit_nanogpt``."""
    if "LIT_NANOGPT_CACHE" in os.environ:
        return Path(os.environ["LIT_NANOGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lit_nanogpt"


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


class EncodedCorpus:
    """A corpus's vocabulary and its encoded train and validation splits, cached on disk."""

    def __init__(self, path: Path, cache_dir: Path, val_fraction: float = 0.1) -> None:
        text, sha = read_corpus(path)
        self.path, self.sha256 = path, sha
        self.folder = cache_dir / f"{path.stem}-{sha[:16]}-val{val_fraction:g}"
        meta_file = self.folder / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta.get("sha256") == sha:
                if (damage := self._damage(meta)) is None:
                    self.vocab = Vocabulary(meta["vocab"])
                    self.n_train = meta["n_train"]
                    self.n_val = meta["n_val"]
                    return
                print(f"lit-nanogpt: corpus cache {self.folder}: {damage}; rebuilding it", file=sys.stderr)
        self.vocab = Vocabulary.from_text(text)
        ids = self.vocab.encode(text).astype(np.uint32)
        n = int(len(ids) * (1.0 - val_fraction))
        self.n_train, self.n_val = n, len(ids) - n
        self.folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, part in (("train.bin", ids[:n]), ("val.bin", ids[n:])):
            data = part.tobytes()
            _atomic_write(self.folder / name, data)
            files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        meta = {"source": str(path), "sha256": sha, "vocab": self.vocab.chars, "n_train": self.n_train,
                "n_val": self.n_val, "files": files}  # fmt: skip
        _atomic_write(meta_file, json.dumps(meta, ensure_ascii=False).encode("utf-8"))

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
        ids = np.fromfile(self.folder / f"{name}.bin", dtype=np.uint32)
        return torch.from_numpy(ids.astype(np.int64))


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
        vocab: str | None = None,
        **sampling: Any,
    ) -> None:
        """Serve a character-level corpus for training, validation and sampling.

        Args:
            data_path: A UTF-8 text file; ``None`` is the shipped Tiny Shakespeare.
            block_size: Window length; linked from ``model.block_size`` by the CLI.
            batch_size: Random training windows per step (per device).
            val_batch_size: Validation windows per forward pass; changes speed, not the result.
            val_fraction: Share of the text, taken from its end, held out for validation.
            val_est_windows: ``fit`` only: validate during training on this many windows, evenly spaced over
                the validation split and the same at every validation, logged as ``val_loss_est`` (the best
                checkpoint is chosen on it); ``0``: on every window. The default, 240, is nanoGPT's CPU
                recipe's estimate (``eval_iters`` 20 x ``batch_size`` 12). ``validate``, ``test`` and the fit's
                final pass over its best checkpoint (``val_loss``) always take every window.
            cache_dir: Where encoded splits are kept; default ``$LIT_NANOGPT_CACHE`` or ``~/.cache/lit_nanogpt``.
            prompts: ``predict`` only: the texts to continue; default a newline, or the vocabulary's first
                character when it has none.
            vocab: The characters, when a checkpoint gives them (``--ckpt_path`` sets it): ``predict`` then
                reads no corpus, and ``validate``/``test`` refuse a corpus with other characters.
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
        self._vocab = Vocabulary(vocab) if vocab else None
        self._corpus: EncodedCorpus | None = None
        if self._vocab is None:
            self.corpus  # noqa: B018  read now: a bad corpus fails before anything else starts
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
            cache = Path(self._hp.cache_dir) if self._hp.cache_dir else default_cache_dir()
            self._corpus = EncodedCorpus(self.corpus_path, cache, self._hp.val_fraction)
            if self._vocab is not None and self._corpus.vocab != self._vocab:
                raise ValueError(
                    f"corpus {self.corpus_path} has {len(self._corpus.vocab)} characters, not the checkpoint's "
                    f"{len(self._vocab)}: pass --data.data_path with the text the model was trained on"
                )
        return self._corpus

    @property
    def vocab(self) -> Vocabulary:
        return self._vocab if self._vocab is not None else self.corpus.vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records of the corpus, so that ``validate`` can say which text it needs."""
        return {"corpus": str(self.corpus.path), "sha256": self.corpus.sha256} if self._corpus else {}

    def setup(self, stage: str) -> None:
        if stage == "predict":
            return  # the prompts and the model's vocabulary are all predict needs
        need = self._hp.block_size + 1
        for name, n in (("train", self.corpus.n_train), ("val", self.corpus.n_val)):
            if n < need:
                raise ValueError(
                    f"corpus {self.corpus.path}: its {name} split has {n} characters, fewer than "
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
