"""Corpus, vocabulary, cache and the windows the data module serves."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lit_nanogpt.data import SHIPPED_CORPUS, CharDataModule, EncodedCorpus, RandomWindows, SequentialWindows
from tests.helpers import NANOGPT_BABY


def test_vocabulary_matches_nanogpts_meta_and_round_trips() -> None:
    dm = CharDataModule(block_size=64)
    with open(NANOGPT_BABY / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert dm.vocab_size == meta["vocab_size"] == 65
    assert dm.vocab.stoi == meta["stoi"]
    text = SHIPPED_CORPUS.read_text(encoding="utf-8")[:5000]
    ids = dm.vocab.encode(text)
    assert ids.tolist() == [meta["stoi"][c] for c in text]
    assert dm.vocab.decode(ids) == text


def test_splits_are_nanogpts_90_10() -> None:
    dm = CharDataModule(block_size=64)
    dm.setup("fit")
    assert len(dm.train_data) == 1_003_854 and len(dm.val_data) == 111_540  # nanoGPT's prepare.py figures
    text = SHIPPED_CORPUS.read_text(encoding="utf-8")
    assert dm.vocab.decode(dm.val_data[:100]) == text[1_003_854:1_003_954]


def test_validation_windows_are_consecutive_and_cover_the_split() -> None:
    data = torch.arange(1000)
    ds = SequentialWindows(data, block_size=64, batch_size=4)
    batches = list(ds)
    assert len(batches) == len(ds) == 4  # 15 windows, (1000 - 1) // 64
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (15, 64)
    assert torch.equal(x.flatten(), torch.arange(15 * 64))  # from 0, no overlap, no gap
    assert torch.equal(y, x + 1)


def test_shipped_validation_has_nanogpts_window_count() -> None:
    dm = CharDataModule(block_size=64)
    dm.setup("validate")
    assert dm.val_dataloader().dataset.num_windows == 1742  # expected.json's "windows"


def test_estimate_windows_are_fixed_evenly_spaced_and_split_across_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    data = torch.arange(1000)  # 15 windows of 64
    ds = SequentialWindows(data, block_size=64, batch_size=2, limit=4)
    assert ds.windows.tolist() == [0, 3, 7, 11]  # 15 * i // 4: spread over the text, none repeated
    x = torch.cat([b[0] for b in ds])
    assert len(ds) == 2 and x.shape == (4, 64) and torch.equal(x[:, 0], torch.tensor([0, 3, 7, 11]) * 64)
    assert torch.equal(torch.cat([b[0] for b in ds]), x)  # the same windows at every validation
    assert SequentialWindows(data, 64, 2, limit=15).windows.tolist() == list(range(15))  # all: every window
    assert SequentialWindows(data, 64, 2, limit=0).windows.tolist() == list(range(15))
    monkeypatch.setattr("lit_nanogpt.data._rank_and_world", lambda: (1, 2))
    assert torch.equal(torch.cat([b[0] for b in ds])[:, 0], torch.tensor([3, 11]) * 64)  # rank 1 of 2


def test_fit_estimates_on_val_est_windows_and_validate_takes_every_window() -> None:
    dm = CharDataModule(block_size=64, val_batch_size=64)
    dm.setup("fit")
    fit = dm.val_dataloader().dataset
    assert len(fit.windows) == 240 and fit.windows[-1] == 239 * 1742 // 240  # the default: nanoGPT's 20 x 12
    dm.setup("validate")
    assert len(dm.val_dataloader().dataset.windows) == 1742
    dm = CharDataModule(block_size=64, val_est_windows=0)
    dm.setup("fit")
    assert len(dm.val_dataloader().dataset.windows) == 1742
    with pytest.raises(ValueError, match=r"data.val_est_windows=-1 must be 0 \(every window\) or a positive count"):
        CharDataModule(block_size=64, val_est_windows=-1)


def test_training_windows_are_random_contiguous_and_seeded() -> None:
    data = torch.arange(10_000)
    torch.manual_seed(3)
    it = iter(RandomWindows(data, block_size=8, batch_size=4))
    x, y = next(it)
    x2, _ = next(it)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.long))  # contiguous windows
    assert torch.equal(y, x + 1)
    assert not torch.equal(x, x2)
    torch.manual_seed(3)
    assert torch.equal(next(iter(RandomWindows(data, 8, 4)))[0], x)  # same seed, same batches


def test_encoded_splits_are_cached_and_rebuilt_when_the_corpus_changes(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabc" * 50, encoding="utf-8")
    first = EncodedCorpus(corpus, tmp_path / "cache")
    assert (first.folder / "train.bin").is_file() and (first.folder / "meta.json").is_file()
    mtime = (first.folder / "train.bin").stat().st_mtime_ns
    again = EncodedCorpus(corpus, tmp_path / "cache")
    assert again.folder == first.folder and (again.folder / "train.bin").stat().st_mtime_ns == mtime  # reused
    corpus.write_text("xyzxyz" * 80, encoding="utf-8")
    changed = EncodedCorpus(corpus, tmp_path / "cache")
    assert changed.folder != first.folder
    assert changed.vocab.chars == "xyz"
    assert changed.vocab.decode(changed.split("train")[:6]) == "xyzxyz"


def test_any_utf8_file_is_accepted(tmp_path: Path) -> None:
    corpus = tmp_path / "poem.txt"
    corpus.write_text("Ünïcödé — 你好, world!\n" * 40, encoding="utf-8")
    dm = CharDataModule(data_path=str(corpus), block_size=8)
    dm.setup("fit")
    assert "你" in dm.vocab.chars
    assert dm.vocab.chars == "".join(sorted(dm.vocab.chars))


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"caf\xe9 latin-1 text" * 20, "not UTF-8"),
    ],
)
def test_bad_corpus_gets_a_clear_error(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        CharDataModule(data_path=str(path))


def test_corpus_shorter_than_a_window_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be " * 5, encoding="utf-8")  # 95 chars: val split has 10
    dm = CharDataModule(data_path=str(path), block_size=16)
    with pytest.raises(ValueError, match=r"val split has 10 characters, fewer than block_size \+ 1 = 17"):
        dm.setup("fit")


def test_unknown_prompt_characters_are_named() -> None:
    vocab = CharDataModule(block_size=64).vocab
    with pytest.raises(ValueError, match=r"'#@'"):
        vocab.encode("ROMEO@#")
