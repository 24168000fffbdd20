"""Tokenizers other than characters (issue 20): GPT-2's BPE as nanoGPT's shakespeare dataset has it, a BPE trained
here, a tokenizer.json; each through fit, validate, generate (KV cache, sliding window), ONNX export, its runner
and the server's streaming, and nanoGPT's own prepare.py for the splits."""

from __future__ import annotations

import asyncio
import hashlib
import re
import runpy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lit_nanogpt import data as data_module
from lit_nanogpt.checkpoint import load_model, read_checkpoint
from lit_nanogpt.commands import main
from lit_nanogpt.data import CharDataModule, EncodedCorpus
from lit_nanogpt.decoding import Sampler, TorchBackend, generate, seeded
from lit_nanogpt.export.onnxrt import open_export
from lit_nanogpt.text import (
    GPT2_RANKS_URL,
    SHIPPED_CORPUS,
    HFTokenizer,
    TextStream,
    TiktokenTokenizer,
    Tokenizer,
    Vocabulary,
    tokenizer_for_model,
    tokenizer_from_plain,
)
from tests.helpers import GPT2_RANKS, SHARED, TINY

NANOGPT = SHARED / "reference" / "nanogpt"
# Text whose characters GPT-2's BPE splits across tokens (two- to four-byte UTF-8).
MULTIBYTE = "Thou art café-bound, naïve Jürgen — 你好, 🎉 fin.\n"


@pytest.fixture(scope="module")
def gpt2() -> TiktokenTokenizer:
    return TiktokenTokenizer.load(GPT2_RANKS)


# ---- nanoGPT's splits ----
def test_gpt2_splits_are_nanogpts_prepare_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """nanoGPT's data/shakespeare/prepare.py, run in a copy with tiktoken's own r50k_base (its constructor, pattern and
    hash check, from a cache that holds the shared ranks file under the name tiktoken gives its download) standing in
    for the "gpt2" encoding it downloads: its train.bin and val.bin are ours byte for byte, the encoding chunked."""
    import tiktoken
    import tiktoken.registry

    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    shutil.copy(GPT2_RANKS, cache / hashlib.sha1(GPT2_RANKS_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "gpt2", tiktoken.get_encoding("r50k_base"))
    prepare = tmp_path / "nanogpt" / "shakespeare"
    shutil.copytree(NANOGPT / "data" / "shakespeare", prepare)
    shutil.copy(SHIPPED_CORPUS, prepare / "input.txt")  # present, so it downloads nothing
    runpy.run_path(str(prepare / "prepare.py"), run_name="__main__")

    # Ours from tiktoken's cache (no --data.tokenizer_path), encoded 100k characters at a time.
    monkeypatch.setattr(data_module, "CHUNK_CHARS", 100_000)
    ours = EncodedCorpus(SHIPPED_CORPUS, tmp_path / "cache", tokenizer="gpt2")
    encoded = "lit-nanogpt: encoded tinyshakespeare.txt with gpt2 (50257 tokens): 301,966 train and 36,059 validation"
    assert encoded in capsys.readouterr().err
    assert (ours.n_train, ours.n_val) == (301_966, 36_059)  # nanoGPT's README
    assert ours.dtype == np.uint16
    for name in ("train.bin", "val.bin"):
        assert (ours.folder / name).read_bytes() == (prepare / name).read_bytes(), name
    text = SHIPPED_CORPUS.read_text(encoding="utf-8")
    assert ours.vocab.decode(ours.split("val")) == text[int(len(text) * 0.9) :]  # the text cut, then encoded


def test_char_splits_are_unchanged_and_old_caches_still_read(tmp_path: Path) -> None:
    new = EncodedCorpus(SHIPPED_CORPUS, tmp_path / "cache")
    assert new.folder.name == f"tinyshakespeare-{new.sha256[:16]}-val0.1" and new.dtype == np.uint8
    ids = new.split("train")
    # A cache written before other tokenizers: uint32 ids, no dtype in meta.json.
    import json

    meta = json.loads((new.folder / "meta.json").read_text(encoding="utf-8"))
    for name in ("train", "val"):
        data = new.split(name).numpy().astype(np.uint32).tobytes()
        (new.folder / f"{name}.bin").write_bytes(data)
        meta["files"][f"{name}.bin"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    del meta["dtype"]
    (new.folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    old = EncodedCorpus(SHIPPED_CORPUS, tmp_path / "cache")
    assert old.dtype == np.uint32 and torch.equal(old.split("train"), ids) and len(ids) == 1_003_854


# ---- streaming ----
@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_streamed_text_never_holds_half_a_character(kind: str, gpt2: TiktokenTokenizer) -> None:
    tokenizer: Tokenizer = gpt2 if kind == "gpt2" else bpe_tokenizer()
    ids = tokenizer.encode(MULTIBYTE * 2).tolist()
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token alone is half a character
    stream = TextStream(tokenizer, ids[:3])
    pieces = [stream.push([i]) for i in ids[3:]] + [stream.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert tokenizer.decode(ids[:3]) + "".join(pieces) == MULTIBYTE * 2


def bpe_tokenizer() -> HFTokenizer:
    from lit_nanogpt.text import text_chunks, train_bpe

    return train_bpe(text_chunks(SHIPPED_CORPUS.read_text(encoding="utf-8")[:200_000]), 300)


# ---- fit, validate, generate, export, serve: one tiny run per tokenizer ----
def fit_args(root: Path, tokenizer: str, *more: str) -> list[str]:
    config = root / "callbacks.yaml"  # checkpoints only: the export runs apart, once, without int8
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {filename: best, monitor: val_loss_est, save_last: true}\n",
        encoding="utf-8",
    )
    tiny = [f"--model.arch.{k}={v}" for k, v in TINY.items()]
    # val_est_windows=0: the fit's estimates take every window, as validate does, so the two losses compare.
    return ["fit", "--config", str(config), *tiny, "--data.tokenizer", tokenizer, "--data.cache_dir",
            str(root / "cache"), "--data.batch_size=4", "--data.val_batch_size=64", "--trainer.max_steps=6",
            "--trainer.val_check_interval=3", "--trainer.limit_val_batches=2", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.default_root_dir", str(root), "--model.warmup_iters=0",
            "--data.val_est_windows=0", *more]  # fmt: skip


RUNS = {
    "gpt2": ["--data.tokenizer_path", str(GPT2_RANKS), "--data.vocab_size=50304"],  # nanoGPT's padded GPT-2
    "bpe": ["--data.bpe_vocab_size=300"],
    "tokenizer.json": [],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tokenizer's checkpoint and export folder (the tokenizer.json one is the bpe run's tokenizer, saved)."""
    out = {}
    for kind, more in RUNS.items():
        root = tmp_path_factory.mktemp(kind.replace(".", "_"))
        name = kind
        if kind == "tokenizer.json":
            name = str(root / "tokenizer.json")
            bpe = read_checkpoint(out["bpe"] / "checkpoints" / "best.ckpt")["vocab"]
            Path(name).write_text(bpe["json"], encoding="utf-8")
        assert main(fit_args(root, name, *more)) == 0
        ckpt = root / "checkpoints" / "best.ckpt"
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(root / "export"), "--int8", "false"]) == 0
        out[kind] = root
    return out


def test_checkpoints_carry_the_tokenizer_as_plain_data(runs: dict[str, Path], gpt2: TiktokenTokenizer) -> None:
    vocabs = {kind: read_checkpoint(root / "checkpoints" / "best.ckpt")["vocab"] for kind, root in runs.items()}
    assert tokenizer_from_plain(vocabs["gpt2"]) == gpt2  # read with torch.load(weights_only=True)
    assert vocabs["bpe"]["kind"] == "tokenizers" and vocabs["bpe"]["name"] == "bpe"
    assert vocabs["tokenizer.json"]["json"] == vocabs["bpe"]["json"]  # the same tokenizer, by another way in
    model, tokenizer = load_model(runs["gpt2"] / "checkpoints" / "best.ckpt")
    assert (model.config.vocab_size, len(tokenizer), tokenizer.dtype) == (50304, 50257, np.uint16)
    assert tokenizer.decode([50300]) == "\ufffd"  # a padding id the model may sample prints as U+FFFD
    _, bpe = load_model(runs["bpe"] / "checkpoints" / "best.ckpt")
    assert isinstance(bpe, HFTokenizer) and len(bpe) == 300


@pytest.mark.parametrize("kind", list(RUNS))
def test_validate_gives_the_fits_loss(kind: str, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = runs[kind] / "checkpoints" / "best.ckpt"
    best = next(v for k, v in read_checkpoint(ckpt)["callbacks"].items() if "ModelCheckpoint" in k)
    capsys.readouterr()
    assert main(["validate", "--ckpt_path", str(ckpt), "--trainer.limit_val_batches=2"]) == 0
    shown = float(re.search(r"val_loss[\s│┃|]+([\d.]+)", capsys.readouterr().out)[1])  # type: ignore[index]
    assert shown == pytest.approx(float(best["best_model_score"]), abs=1e-5)


@pytest.mark.parametrize("kind", list(RUNS))
def test_checkpoint_and_export_generate_the_same_text(
    kind: str, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Greedy, 40 tokens from a 16-token block: prefill, the KV cache, then nanoGPT's sliding window (and the half
    window); the text printed token by token is the whole sequence decoded at once."""
    ckpt, folder = runs[kind] / "checkpoints" / "best.ckpt", runs[kind] / "export"
    prompt = "ROMEO: café"
    common = ["--prompt", prompt, "--max_new_tokens", "40", "--temperature", "0", "--num_samples", "1"]
    printed = []
    for source in (["--checkpoint", str(ckpt)], ["--checkpoint", str(ckpt), "--use_cache", "false"],
                   ["--onnx", str(folder)], ["--onnx", str(folder), "--cache", "static"]):  # fmt: skip
        capsys.readouterr()
        assert main(["generate", *source, *common]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] == printed[2] == printed[3]  # the static pair: the graphs atc compiles
    half = []
    for source in (["--checkpoint", str(ckpt)], ["--onnx", str(folder)]):
        assert main(["generate", *source, *common, "--window", "half"]) == 0
        half.append(capsys.readouterr().out)
    assert half[0] == half[1]
    model, tokenizer = load_model(ckpt)
    prompt_ids = tokenizer.encode(prompt).tolist()
    (ids,) = generate(TorchBackend(model), [prompt_ids], 40, Sampler(temperature=0.0))
    assert printed[0].startswith(prompt + tokenizer.decode(ids)[len(prompt) :])
    exported = open_export(folder)[0]
    assert exported.vocab == tokenizer
    assert generate(exported, [prompt_ids], 40, Sampler(temperature=0.0))[0] == ids


def test_the_server_streams_whole_characters(runs: dict[str, Path]) -> None:
    """The engine's events for a gpt2 model, sampled (an untrained head draws all sorts of tokens, words and byte
    pieces): their text joined is the tokens decoded at once, and a stop sequence inside a token's text cuts the
    text there."""
    from lit_nanogpt.serve.engine import Engine, Sampling

    model, tokenizer = load_model(runs["gpt2"] / "checkpoints" / "best.ckpt")
    prompt_ids = tokenizer.encode("ROMEO:").tolist()
    (ids,) = generate(TorchBackend(model), [prompt_ids], 24, Sampler(generator=seeded(7)))
    want = tokenizer.decode(ids[len(prompt_ids) :])

    async def complete(stop: list[str]) -> tuple[str, list[Any]]:
        engine = Engine(TorchBackend(model, max_batch=2), tokenizer)
        engine.start()
        try:
            job = engine.submit([prompt_ids], 1, Sampling(1.0, None, 1.0, 7), 24, stop)
            events = []
            while batch := await job.next_events():
                events += batch
        finally:
            engine.stop()
        return "".join(e.text for e in events), events

    text, events = asyncio.run(asyncio.wait_for(complete([]), 60))
    assert text == want and events[-1].finish_reason == "length"
    pieces = [tokenizer.decode([t]) for t in ids[len(prompt_ids) :]]
    long = next(i for i, p in enumerate(pieces) if len(p) >= 3 and "\ufffd" not in p)
    start = len(tokenizer.decode(ids[len(prompt_ids) : len(prompt_ids) + long])) + 1
    stop = want[start : start + 2]  # inside one token's text
    text, events = asyncio.run(asyncio.wait_for(complete([stop]), 60))
    assert text == want[: want.index(stop)] and events[-1].finish_reason == "stop"


# ---- bad input: one line each ----
def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    # The line that says a corpus was encoded may come first: it is progress, not part of the error.
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if "lit-nanogpt: encoded" not in line)
    assert err.startswith("lit-nanogpt: error: ") and err.count("\n") == 1, err
    return err


def test_bad_tokenizer_settings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "r50k_base.tiktoken"
    err = one_line_error(fit_args(tmp_path, "gpt2", "--data.tokenizer_path", str(missing)), capsys)
    assert f"GPT-2 ranks file {missing} does not exist: pass --data.tokenizer_path" in err
    assert "openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken" in err
    err = one_line_error(fit_args(tmp_path, "gpt2", "--data.tokenizer_path", str(GPT2_RANKS),
                                  "--data.vocab_size=50000"), capsys)  # fmt: skip
    assert "data.vocab_size=50000 (the model's vocab_size) is smaller than the gpt2 (50257 tokens) tokenizer" in err
    err = one_line_error(fit_args(tmp_path, str(tmp_path / "none.json")), capsys)
    assert "is none of char, gpt2, bpe and not a file" in err
    err = one_line_error(fit_args(tmp_path, "bpe", "--data.bpe_vocab_size=100"), capsys)
    assert "data.bpe_vocab_size=100 is smaller than the 256 bytes" in err


def test_gpt2_offline_without_its_ranks_says_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise requests.ConnectionError(f"no network for {url}")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=re.escape(
        "GPT-2's ranks file r50k_base.tiktoken could not be fetched (ConnectionError): download "
        f"{GPT2_RANKS_URL} and pass --data.tokenizer_path FILE, or put it at "
        f"{tmp_path / 'empty' / hashlib.sha1(GPT2_RANKS_URL.encode()).hexdigest()} (tiktoken's cache"
    )):  # fmt: skip
        CharDataModule(tokenizer="gpt2", cache_dir=str(tmp_path / "cache"))


def test_text_a_tokenizer_json_cannot_encode_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models, pre_tokenizers

    words = HFTok(models.WordLevel({"[UNK]": 0, "to": 1, "be": 2, "or": 3, "not": 4}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "words.json").write_text(words.to_str(), encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be " * 30 + "that is", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(
        f"corpus {corpus}: text the tokenizer.json tokenizer cannot encode (it maps it to its unknown token): 'isthat'"
    )):  # fmt: skip
        CharDataModule(data_path=str(corpus), tokenizer=str(tmp_path / "words.json"), block_size=4)


def test_a_tokenizer_larger_than_the_weights_is_refused(gpt2: TiktokenTokenizer) -> None:
    with pytest.raises(ValueError, match=re.escape(
        "model.ckpt: its tokenizer, gpt2 (50257 tokens), has more ids than the weights' vocab_size=65"
    )):  # fmt: skip
        tokenizer_for_model("model.ckpt", gpt2.to_plain(), 65)
    assert tokenizer_for_model("old.ckpt", "\n abc", 65) == Vocabulary("\n abc")  # a char checkpoint's vocab
