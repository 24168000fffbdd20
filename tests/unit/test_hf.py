"""transformers' GPT-2 format both ways (export --format hf, import-hf) and nanoGPT's format back, in-process.

transformers itself loads what the export writes; nanoGPT's own sample.py runs the nanoGPT export in
tests/e2e/test_nanogpt_sample.py.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Tokenizer

from lit_nanogpt.checkpoint import import_nanogpt, load_model, read_nanogpt_meta, torch_load, write_checkpoint
from lit_nanogpt.commands import main
from lit_nanogpt.hf import export_hf
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.text import SHIPPED_CORPUS, HFTokenizer, TiktokenTokenizer, Vocabulary
from tests.helpers import GPT2_RANKS, NANOGPT_BABY, TINY, cli, error_of, extend

EXPECTED = json.loads((NANOGPT_BABY / "expected.json").read_text())
# Shakespeare, then what a GPT-2 tokenizer must also get right: non-ASCII text and its end-of-text token.
GPT2_TEXT = SHIPPED_CORPUS.read_text()[:600] + " naïve café — 日本語 😀 e\u0301\n\n<|endoftext|>ROMEO:"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine it costs 10x (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baby_hf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """nanoGPT's baby checkpoint imported, and its ``export --format hf`` folder: (checkpoint, folder)."""
    tmp = tmp_path_factory.mktemp("baby_hf")
    ckpt = import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", tmp / "baby.ckpt")
    assert main(["export", "--format=hf", f"--checkpoint={ckpt}", f"--out={tmp / 'hf'}"]) == 0
    return ckpt, tmp / "hf"


@pytest.fixture(scope="module")
def gpt2() -> TiktokenTokenizer:
    return TiktokenTokenizer.load(GPT2_RANKS)


@pytest.fixture(scope="module")
def gpt2_hf(tmp_path_factory: pytest.TempPathFactory, gpt2: TiktokenTokenizer) -> tuple[Path, Path]:
    """A tiny model over GPT-2's tokenizer (tiktoken's, padded to 50304 as nanoGPT pads it) as a checkpoint, and
    its ``export --format hf`` folder: (checkpoint, folder)."""
    tmp = tmp_path_factory.mktemp("gpt2_hf")
    model = _tiny(5, vocab_size=50304)
    ckpt = write_checkpoint(model.config, model.state_dict(), gpt2, tmp / "gpt2.ckpt", "unused")
    assert main(["export", "--format=hf", f"--checkpoint={ckpt}", f"--out={tmp / 'hf'}"]) == 0
    return ckpt, tmp / "hf"


def _tiny(seed: int, **options: object) -> GPT:
    """A tiny model with every weight drawn at random (an untied head starts at zero otherwise)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, "vocab_size": 11, **options}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _checkpoint(model: GPT, out: Path) -> Path:
    """``model`` as a lit-nanogpt checkpoint over the characters a-k, written as the imports write one."""
    return write_checkpoint(model.config, model.state_dict(), Vocabulary("abcdefghijk"), out, "unused")


def test_transformers_runs_the_baby_export_as_ours(baby_hf: tuple[Path, Path]) -> None:
    ckpt, folder = baby_hf
    model, vocab = load_model(ckpt)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu"  # exact, not gelu_new
    assert (config["n_positions"], config["vocab_size"], config["tie_word_embeddings"]) == (64, 65, True)
    assert config["bos_token_id"] is None and config["eos_token_id"] is None
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["clean_up_tokenization_spaces"] is False
    weights = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in weights  # the tied head once, as the token embedding
    assert not weights["transformer.h.0.attn.c_attn.bias"].any()  # a model without biases: zero ones

    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    idx = torch.randint(65, (2, 64), generator=torch.Generator().manual_seed(1))  # (B, T): a full block
    with torch.no_grad():
        ours, _ = model(idx, idx)
        assert (theirs(idx).logits - ours).abs().max().item() < 1e-5

    # Greedy decoding up to block_size (transformers' GPT-2 does not slide past n_positions).
    prompt = tokenizer("ROMEO:", return_tensors="pt")["input_ids"]
    assert prompt.tolist() == [vocab.encode("ROMEO:").tolist()]
    new = 64 - prompt.shape[1]
    their_ids = theirs.generate(prompt, max_new_tokens=new, do_sample=False, attention_mask=torch.ones_like(prompt))
    our_ids = extend(model, prompt, new, top_k=1)
    assert their_ids.tolist() == our_ids.tolist()
    assert tokenizer.decode(their_ids[0]) == vocab.decode(our_ids[0]) == EXPECTED["greedy"][:64]


def test_the_char_tokenizer_round_trips_every_character(tmp_path: Path) -> None:
    vocab = Vocabulary.from_text("\t\n\r \u00a0e\u0301\u00e9\u2028\U0001f600[UNK]<unk>,'")
    model = GPT(GPTConfig(**TINY, vocab_size=len(vocab))).eval()
    export_hf(model, vocab, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "e\u0301 ,\t\r\n\n  \u00a0\U0001f600[UNK] ' <unk>"
    ids = tokenizer.encode(text)
    assert ids == vocab.encode(text).tolist()  # one id per character, none added
    assert tokenizer.decode(ids) == text  # spaces, newlines and a combining accent come back as they were
    with pytest.raises(Exception, match="UNK"):  # a character outside the vocabulary is refused, not mapped
        tokenizer.encode("x")


def test_untied_relu2_round_trips_through_transformers(tmp_path: Path) -> None:
    model = _tiny(0, mlp_activation="relu2", tie_weights=False)
    vocab = Vocabulary("abcdefghijk")
    export_hf(model, vocab, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["activation_function"], config["tie_word_embeddings"]) == ("relu2", False)
    assert "lm_head.weight" in load_file(tmp_path / "hf" / "model.safetensors")
    idx = torch.randint(11, (3, 16), generator=torch.Generator().manual_seed(2))  # (B, T)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert main(["import-hf", f"--model={tmp_path / 'hf'}", f"--out={tmp_path / 'back.ckpt'}"]) == 0
    back, back_vocab = load_model(tmp_path / "back.ckpt")
    assert back.config == model.config and back_vocab == vocab  # bias=False again: its biases were all zero
    with torch.no_grad():
        ours = model(idx, idx)[0]
        assert (theirs(idx).logits - ours).abs().max().item() < 1e-5
        assert torch.equal(back(idx, idx)[0], ours)


def test_import_hf_reads_biases_and_plain_pytorch_model_bin(tmp_path: Path) -> None:
    """A folder with real biases and its weights as pytorch_model.bin (loaded with weights_only) comes back exactly."""
    model = _tiny(3, bias=True)
    vocab = Vocabulary("abcdefghijk")
    export_hf(model, vocab, tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(weights, tmp_path / "hf" / "pytorch_model.bin")
    assert main(["import-hf", f"--model={tmp_path / 'hf'}", f"--out={tmp_path / 'back.ckpt'}"]) == 0
    back, _ = load_model(tmp_path / "back.ckpt")
    assert back.config == model.config
    for (name, ours), (back_name, theirs) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert name == back_name and torch.equal(ours, theirs), name


def test_import_hf_validates_to_nanogpts_loss_and_generates_its_text(
    baby_hf: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lit_nanogpt.cli import LitNanoGPTCLI

    ckpt, folder = baby_hf
    assert main(["import-hf", f"--model={folder}", f"--out={tmp_path / 'back.ckpt'}"]) == 0
    model, vocab = load_model(tmp_path / "back.ckpt")
    assert dataclasses.asdict(model.config) == torch_load(ckpt)["hyper_parameters"]["arch"]
    args = ["--prompt=ROMEO:", "--max_new_tokens=200", "--top_k=1", "--num_samples=1"]
    capsys.readouterr()
    assert main(["generate", f"--checkpoint={tmp_path / 'back.ckpt'}", *args]) == 0
    assert capsys.readouterr().out == EXPECTED["greedy"] + "\n---------------\n"  # past block_size: the sliding window
    cli = LitNanoGPTCLI(
        args=["validate", f"--ckpt_path={tmp_path / 'back.ckpt'}", "--trainer.enable_progress_bar=false"]
    )
    assert cli.trainer.callback_metrics["val_loss"].item() == pytest.approx(EXPECTED["val_loss"], abs=1e-5)


def test_nanogpt_export_is_nanogpts_format(baby_hf: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """ckpt.pt of plain types with config.dataset set, and a meta.pkl that reads back as the vocabulary;
    the line printed says where meta.pkl goes. (nanoGPT's own sample.py runs it in tests/e2e.)"""
    ckpt, _ = baby_hf
    out = tmp_path / "nano"
    assert main(["export", "--format=nanogpt", f"--checkpoint={ckpt}", f"--out={out}", "--dataset=baby"]) == 0
    assert "mkdir -p data/baby && cp " in capsys.readouterr().err
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    assert saved["config"] == {"dataset": "baby"}
    assert saved["model_args"] == EXPECTED["model_args"]
    original = torch.load(NANOGPT_BABY / "ckpt.pt", weights_only=True)["model"]
    assert saved["model"].keys() == original.keys()
    assert all(torch.equal(saved["model"][k], original[k]) for k in original)
    with (out / "meta.pkl").open("rb") as f:
        assert pickle.load(f) == pickle.loads((NANOGPT_BABY / "meta.pkl").read_bytes())
    assert read_nanogpt_meta(out / "meta.pkl") == load_model(ckpt)[1].chars


def test_what_a_format_cannot_hold_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    for name, options in {"rotary": {"rotary": True}, "qk_norm": {"qk_norm": True}}.items():
        ckpt = _checkpoint(_tiny(0, **options), tmp_path / f"{name}.ckpt")
        line = error_of(capsys, "export", "--format=hf", f"--checkpoint={ckpt}", f"--out={tmp_path / name}")
        assert f"transformers' GPT-2 has no {name}=True" in line
        assert not (tmp_path / name).exists()
    for name, options in {"mlp_activation": {"mlp_activation": "relu2"}, "tie_weights": {"tie_weights": False}}.items():
        ckpt = _checkpoint(_tiny(0, **options), tmp_path / f"{name}.ckpt")
        line = error_of(capsys, "export", "--format=nanogpt", f"--checkpoint={ckpt}", f"--out={tmp_path / name}")
        assert f"nanoGPT's model has no {name}=" in line
    line = error_of(capsys, "export", "--format=hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'x'}", "--opset=13")
    assert line.endswith("--opset is not an option of --format hf, which takes --checkpoint, --format, --out")


def test_bad_hf_folders_give_one_clear_error(baby_hf: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, good = baby_hf

    def folder(name: str, config: dict | None = None, tokenizer: dict | None = None, drop: str = "") -> Path:
        path = tmp_path / name
        path.mkdir()
        for f in good.iterdir():
            if f.name != drop:
                (path / f.name).write_bytes(f.read_bytes())
        if config is not None:
            (path / "config.json").write_text(json.dumps({**json.loads((good / "config.json").read_text()), **config}))
        if tokenizer is not None:
            (path / "tokenizer.json").write_text(json.dumps(tokenizer))
        return path

    def error(path: Path) -> str:
        return error_of(capsys, "import-hf", f"--model={path}", f"--out={tmp_path / 'out.ckpt'}")

    assert "model_type='llama'" in error(folder("llama", {"model_type": "llama"}))
    assert "activation_function='gelu_new'" in error(folder("tanh", {"activation_function": "gelu_new"}))
    tokenizer = json.loads((good / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {c: i for c, i in tokenizer["model"]["vocab"].items() if i < 64}
    assert "lists 64 characters but the weights have 65 token ids" in error(folder("short", tokenizer=tokenizer))
    bpe = {"model": {"type": "BPE", "vocab": {"ab": 0}, "merges": [["a", "b"]]}}  # merges tokens it lacks
    assert "tokenizer.json: not a tokenizers tokenizer.json (Token `a` out of vocabulary" in error(
        folder("bpe", tokenizer=bpe)
    )
    assert "tokenizer.json does not exist" in error(folder("no_tokenizer", drop="tokenizer.json"))
    assert "has no model.safetensors or pytorch_model.bin" in error(folder("no_weights", drop="model.safetensors"))
    assert "config.json does not exist" in error(tmp_path / "nowhere")
    pickled = folder("pickled", drop="model.safetensors")
    weights = load_file(good / "model.safetensors")
    torch.save({**weights, "where": PurePosixPath("x")}, pickled / "pytorch_model.bin")  # a class to import
    assert "is not plain data" in error(pickled)
    assert not (tmp_path / "out.ckpt").exists()
    partial = folder("partial", drop="model.safetensors")
    save_file({"transformer.wte.weight": torch.zeros(65, 128)}, str(partial / "model.safetensors"))
    assert "weights do not fit its config.json" in error(partial)


def test_a_failed_hf_export_leaves_the_previous_folder_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is swapped in only once transformers agreed with it; the check can fail (a tolerance below 0)."""
    ckpt = _checkpoint(_tiny(4), tmp_path / "tiny.ckpt")
    out = tmp_path / "hf"
    assert main(["export", "--format=hf", f"--checkpoint={ckpt}", f"--out={out}"]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    monkeypatch.setattr("lit_nanogpt.hf.TOLERANCE", -1.0)
    line = error_of(capsys, "export", "--format=hf", f"--checkpoint={ckpt}", f"--out={out}")
    assert "transformers' logits differ from PyTorch's by up to 0" in line and "not written" in line
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "tiny.ckpt"]  # no half-written folder beside it


def test_without_the_hf_extra_the_commands_say_which_to_install(
    baby_hf: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, folder = baby_hf
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if not installed: importing it raises
    line = error_of(capsys, "import-hf", f"--model={folder}", f"--out={tmp_path / 'x.ckpt'}")
    assert line.endswith("the Hugging Face format needs safetensors: pip install 'lit-nanogpt[hf]'")
    monkeypatch.setitem(sys.modules, "transformers", None)
    line = error_of(capsys, "export", "--format=hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'hf'}")
    assert "needs transformers: pip install 'lit-nanogpt[hf]'" in line
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "hf").exists()


def test_a_bpe_model_exports_with_its_own_tokenizer(tmp_path: Path) -> None:
    from lit_nanogpt.text import train_bpe

    text = SHIPPED_CORPUS.read_text()[:20_000]
    bpe = train_bpe(iter([text]), vocab_size=300)
    model = _tiny(3, vocab_size=304)  # padded past the tokenizer's 300, as nanoGPT pads GPT-2's
    diff = export_hf(model, bpe, tmp_path / "hf")
    assert diff < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sample = "ROMEO:\nWhat light, through yonder window breaks?"
    assert tokenizer.encode(sample, add_special_tokens=False) == bpe.encode(sample).tolist()
    assert tokenizer.decode(bpe.encode(sample).tolist()) == sample
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([bpe.encode(sample).tolist()[: TINY["block_size"]]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids, ids)[0], atol=1e-5, rtol=0)


def test_a_gpt2_model_exports_with_gpt2s_own_tokenizer_files(
    gpt2_hf: tuple[Path, Path], gpt2: TiktokenTokenizer
) -> None:
    """tiktoken's ranks become GPT-2's vocab.json, merges.txt and tokenizer.json: both of transformers' ways in
    give tiktoken's ids and text (the end-of-text token as GPT-2's special 50256), and its model our tokens."""
    ckpt, folder = gpt2_hf
    model, _ = load_model(ckpt)
    config = json.loads((folder / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (50304, 50256, 50256)
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[:4] == ["#version: 0.2", "Ġ t", "Ġ a", "h e"] and len(merges) == 1 + 50_000  # GPT-2's merges
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 50257 and (vocab["Ġthe"], vocab["<|endoftext|>"]) == (262, 50256)

    want = gpt2.encoding.encode(GPT2_TEXT, allowed_special={"<|endoftext|>"})
    assert want[-4:] == [50256, *gpt2.encode("ROMEO:").tolist()]
    for tokenizer in (AutoTokenizer.from_pretrained(folder), GPT2Tokenizer.from_pretrained(folder)):
        assert tokenizer.encode(GPT2_TEXT, add_special_tokens=False, verbose=False) == want
        assert tokenizer.decode(want) == gpt2.decode(want) == GPT2_TEXT
        assert tokenizer.bos_token_id == tokenizer.eos_token_id == 50256

    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    idx = torch.tensor([want[: TINY["block_size"]]])  # (1, T)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, model(idx, idx)[0], atol=1e-5, rtol=0)
    prompt = torch.tensor([gpt2.encode("ROMEO:").tolist()])  # (1, T)
    new = TINY["block_size"] - prompt.shape[1]
    their_ids = theirs.generate(prompt, max_new_tokens=new, do_sample=False, attention_mask=torch.ones_like(prompt))
    our_ids = extend(model, prompt, new, top_k=1)
    assert their_ids.tolist() == our_ids.tolist()
    assert tokenizer.decode(their_ids[0]) == gpt2.decode(our_ids[0])


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json+merges.txt"])
def test_import_hf_brings_a_gpt2_folder_back(
    files: str, gpt2_hf: tuple[Path, Path], gpt2: TiktokenTokenizer, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The folder comes back with its tokenizer.json, or from GPT-2's older vocab.json and merges.txt alone (which
    transformers' GPT2Tokenizer also reads), as a tokenizers tokenizer that generates the original's text."""
    ckpt, exported = gpt2_hf
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    if files != "tokenizer.json":
        (folder / "tokenizer.json").unlink()
        tokenizer = GPT2Tokenizer.from_pretrained(folder)
        want = gpt2.encoding.encode(GPT2_TEXT, allowed_special={"<|endoftext|>"})
        assert tokenizer.encode(GPT2_TEXT, add_special_tokens=False, verbose=False) == want
    assert cli(capfd, "import-hf", f"--model={folder}", f"--out={tmp_path / 'back.ckpt'}").returncode == 0
    model, _ = load_model(ckpt)
    back, tokenizer = load_model(tmp_path / "back.ckpt")
    assert isinstance(tokenizer, HFTokenizer) and len(tokenizer) == 50257 and back.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values(), strict=True))
    assert tokenizer.encode(GPT2_TEXT).tolist() == gpt2.encoding.encode(GPT2_TEXT, allowed_special="all")
    args = ["--prompt=ROMEO: naïve", "--max_new_tokens=24", "--top_k=1", "--num_samples=1"]  # past the block
    ours = cli(capfd, "generate", f"--checkpoint={ckpt}", *args)
    theirs = cli(capfd, "generate", f"--checkpoint={tmp_path / 'back.ckpt'}", *args)
    assert theirs.returncode == ours.returncode == 0 and theirs.stdout == ours.stdout
    assert ours.stdout.startswith("ROMEO: naïve") and len(ours.stdout) > len("ROMEO: naïve") + 24
    if files == "tokenizer.json":  # validate encodes a corpus with the carried tokenizer: tiktoken's ids
        import numpy as np

        from lit_nanogpt.cli import LitNanoGPTCLI
        from lit_nanogpt.data import EncodedCorpus, default_cache_dir, split_text

        corpus = tmp_path / "excerpt.txt"
        corpus.write_text(SHIPPED_CORPUS.read_text()[:4000])
        args = ["validate", f"--ckpt_path={tmp_path / 'back.ckpt'}", f"--data.data_path={corpus}"]
        loss = LitNanoGPTCLI(args=[*args, "--trainer.enable_progress_bar=false"]).trainer.callback_metrics["val_loss"]
        assert 9 < loss.item() < 13  # a random head over 50304 ids: about ln(50304) = 10.8
        encoded = EncodedCorpus(corpus, default_cache_dir(), given=tokenizer)  # the cache validate wrote
        val = np.fromfile(encoded.folder / "val.bin", dtype=encoded.dtype)
        assert val.tolist() == gpt2.encode(split_text(corpus.read_text(), 0.1)[1]).tolist() and len(val) > 100


def test_a_tokenizer_larger_than_the_weights_is_refused_in_one_line(
    baby_hf: tuple[Path, Path], gpt2_hf: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPT-2's tokenizer (50257 ids) beside the baby model's 65-row embedding, from either of its files."""
    _, baby = baby_hf
    _, gpt2_folder = gpt2_hf
    for files in (("tokenizer.json",), ("vocab.json", "merges.txt")):
        folder = tmp_path / files[0]
        shutil.copytree(baby, folder)
        (folder / "tokenizer.json").unlink()
        for name in files:
            shutil.copy(gpt2_folder / name, folder / name)
        line = error_of(capsys, "import-hf", f"--model={folder}", f"--out={tmp_path / 'out.ckpt'}")
        assert line.endswith(
            "its tokenizer, tokenizer.json (50257 tokens), has more ids than the weights' 65 token ids: "
            "pass the tokenizer the model was trained with"
        )
    assert not (tmp_path / "out.ckpt").exists()
