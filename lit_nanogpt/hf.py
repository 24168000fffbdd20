"""Hugging Face transformers' GPT-2 format, both ways: ``export --format hf`` and ``import-hf``.

nanoGPT kept GPT-2's parameter names, so the weights map one to one: ``transformer.*`` and
``lm_head.weight`` keep their names, and the four projections GPT-2 holds as ``Conv1D`` (``attn.c_attn``,
``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) are stored transposed, (in, out), where ``nn.Linear``
keeps (out, in). GPT-2 always has biases: a model without them is written with zero biases, exactly
the same function, and one whose biases are all zero comes back without them.

The character vocabulary travels as a ``tokenizers`` word-level tokenizer: each character is one
word (a ``Split`` on the empty pattern isolates every code point), ids are the vocabulary's, and the
``Fuse`` decoder joins them back with nothing between, so every character, spaces and newlines
included, round-trips. It has no unknown token, as the model has no id for one: text with a
character outside the vocabulary is refused (tokenizers raises), as lit-nanogpt's ``generate`` and
nanoGPT's ``sample.py`` refuse it.

GPT-2's own tokenizer (``--data.tokenizer gpt2``, tiktoken's ranks) travels as GPT-2's files: ``vocab.json`` and
``merges.txt`` derived from the ranks (``gpt2_vocab_merges``), which transformers' ``GPT2Tokenizer`` reads, and the
``tokenizer.json`` that tokenizers builds from them, with ``<|endoftext|>`` as special token 50256 (bos and eos).
Coming back, a folder's ``tokenizer.json`` (of any tokenizers model), or else GPT-2's ``vocab.json`` and
``merges.txt`` as transformers reads them, is carried as an ``HFTokenizer``; the character tokenizer above comes
back as the ``Vocabulary`` it was.

transformers, tokenizers and safetensors are the ``hf`` extra; only the functions that need them
import them, and only the commands that use this module import it.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from lit_nanogpt.checkpoint import refuse_options, torch_load, write_checkpoint
from lit_nanogpt.files import replacing
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.text import GPT2_PATTERN, HFTokenizer, TiktokenTokenizer, Tokenizer, Vocabulary

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Our mlp_activation -> transformers' activation_function (ACT2FN): "gelu" is the exact GELU, not
# GPT-2's default "gelu_new" (the tanh approximation); "relu2" is transformers' ReLUSquaredActivation.
ACTIVATIONS = {"gelu": "gelu", "relu2": "relu2"}
TOKENIZER_CONFIG = {
    # Named, so that AutoTokenizer reads tokenizer.json and does not build GPT-2's own BPE for model_type gpt2.
    "tokenizer_class": "PreTrainedTokenizerFast",
    "clean_up_tokenization_spaces": False,  # " ," stays " ,": the characters are the text
}
# GPT-2's tokenizer as its own files say it (openai-community/gpt2's tokenizer_config.json and special tokens).
GPT2_TOKENIZER_CONFIG = {"tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": False,
                         "add_prefix_space": False}  # fmt: skip
ENDOFTEXT = "<|endoftext|>"  # GPT-2's one special token: its bos, eos and unk
GPT2_MERGES_HEADER = "#version: 0.2"  # merges.txt's first line, as GPT-2's vocab.bpe has it
# A BPE's round trip in the export's check, beside the tokenizer's first ids and the default prompt: runs of spaces,
# newlines and a tab, punctuation, composed and combining accents, CJK and a 4-byte emoji.
PROBES = ("ROMEO:\nBut, soft!", "  what light\n\n\tthrough", " naïve café, e\u0301", " 日本語 😀 ", "end.\n")
# transformers' fp32 logits may differ from ours by float rounding only (attention kernels, Conv1D's addmm).
TOLERANCE = 1e-4


def hf_module(name: str) -> ModuleType:
    """``transformers``, ``tokenizers`` or ``safetensors.torch``, or one line saying which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"the Hugging Face format needs {name.split('.')[0]}: pip install 'lit-nanogpt[hf]'") from None


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights under GPT-2's names and layouts: Conv1D weights transposed, zero biases where the model
    has none, a tied head once (as ``transformer.wte.weight``; safetensors refuses tensors sharing memory)."""
    config = model.config
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    if config.tie_weights:
        del state["lm_head.weight"]
    out = {}
    for name, value in state.items():
        out[name] = value.t() if name.endswith(CONV1D) else value
        if not config.bias and name.endswith((*CONV1D, "ln_1.weight", "ln_2.weight", "ln_f.weight")):
            out[name.removesuffix("weight") + "bias"] = torch.zeros(value.shape[0])  # (out_features,)
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(config: GPTConfig, eos_token_id: int | None = None) -> dict[str, Any]:
    """GPT-2's ``config.json`` settings for ``config`` (rotary and QK-norm are refused: GPT-2 has neither);
    ``eos_token_id`` (GPT-2's 50256 with its own tokenizer) is also its bos."""
    refuse_options(config, ("mlp_activation", "tie_weights"), "transformers' GPT-2")
    return dict(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * config.n_embd,
        activation_function=ACTIVATIONS[config.mlp_activation],
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=config.tie_weights,
        bos_token_id=eos_token_id,  # None for characters: GPT-2's 50256 lies outside the vocabulary
        eos_token_id=eos_token_id,
        pad_token_id=None,
    )


def char_tokenizer(vocab: Vocabulary) -> Any:
    """``vocab`` as a ``tokenizers.Tokenizer``: one word per character, the vocabulary's ids, fused on decoding."""
    tk = hf_module("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=dict(vocab.stoi), unk_token=None))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer.decoder = tk.decoders.Fuse()
    return tokenizer


def gpt2_byte_chars() -> dict[int, str]:
    """The character each byte is written as in a byte-level BPE's vocab.json and merges.txt.

    GPT-2's table (openai/gpt-2's encoder.py, ``bytes_to_unicode``; tokenizers' ``ByteLevel`` has the same): the
    188 printable Latin-1 bytes stand for themselves, the other 68 (controls, the space, the soft hyphen) for
    U+0100 onwards in byte order, so that no token holds a space or a control character.
    """
    table = {b: chr(b) for b in (*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100))}
    rest = [b for b in range(256) if b not in table]
    return {**table, **{b: chr(0x100 + n) for n, b in enumerate(rest)}}


def gpt2_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's tokens and ids and merges.txt's pairs of the byte-level BPE whose tiktoken ranks are ``ranks``.

    tiktoken's GPT-2 ranks are GPT-2's merges renumbered: the 256 bytes, then the token of merge n as 256 + n (as
    tiktoken's ``data_gym_to_mergeable_bpe_ranks`` reads vocab.bpe). Going back, every longer token is one merge,
    taken in rank order, and its pair is what BPE makes of the token's bytes with the lower ranks alone: the
    recovery tiktoken's maintainers give in openai/tiktoken#60. For GPT-2 that is its 50,000 merges. (transformers'
    ``TikTokenConverter.extract_vocab_merges_from_model`` lists every two-token split of every token instead,
    108,299 pairs for GPT-2, and reads the ranks from a file that tiktoken then copies into its cache.)
    """
    chars = str.maketrans({chr(b): c for b, c in gpt2_byte_chars().items()})

    def text(token: bytes) -> str:
        return token.decode("latin-1").translate(chars)

    if missing := [b for b in range(256) if bytes([b]) not in ranks]:
        raise ValueError(f"the ranks lack {len(missing)} of the 256 bytes (byte {missing[0]}): not a byte-level BPE's")
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:  # BPE with the ranks below this token's: the lowest first, the leftmost of equals
            found = [(r, i) for i in range(len(parts) - 1) if (r := ranks.get(parts[i] + parts[i + 1], rank)) < rank]
            if not found:
                raise ValueError(f"token {token!r} (rank {rank}) is not two lower-ranked tokens: not a BPE's ranks")
            i = min(found)[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((text(parts[0]), text(parts[1])))
    return {text(token): rank for token, rank in ranks.items()}, merges


def write_gpt2_tokenizer(vocab: TiktokenTokenizer, folder: Path) -> None:
    """GPT-2's tokenizer files for tiktoken's ``vocab`` in ``folder``: vocab.json and merges.txt (what transformers'
    ``GPT2Tokenizer`` reads), and the tokenizer.json tokenizers builds from those two files, so one derivation
    stands behind all three: GPT-2's byte-level pre-tokenizer (its built-in regex is GPT-2's pattern), BPE, the
    byte-level decoder, and the special tokens (``<|endoftext|>``) under their own ids."""
    if vocab.pattern != GPT2_PATTERN:
        raise ValueError(
            f"export --format hf writes tiktoken's tokenizer with GPT-2's pattern only, not {vocab.pattern[:40]!r}: "
            "export it to ONNX"
        )
    tokens, merges = gpt2_vocab_merges(vocab.mergeable_ranks)
    tokens.update(vocab.special_tokens)
    (folder / "vocab.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    lines = [GPT2_MERGES_HEADER, *(f"{left} {right}" for left, right in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tk = hf_module("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in vocab.special_tokens])
    tokenizer.save(str(folder / "tokenizer.json"))


def export_hf(model: GPT, vocab: Tokenizer, out: str | Path) -> float:
    """Write ``model`` and its tokenizer as a transformers GPT-2 folder ``out``; returns the largest difference
    between transformers' logits and ours on one full block.

    Characters travel as ``char_tokenizer``; a ``tokenizers`` tokenizer (``--data.tokenizer bpe`` or a
    tokenizer.json) as its own tokenizer.json; tiktoken's gpt2 as GPT-2's files (``write_gpt2_tokenizer``). The
    folder is written beside ``out`` and swapped in only once transformers has loaded it (every weight present,
    none left over), its logits agree within ``TOLERANCE`` and its tokenizer gives our ids and text back.
    """
    eos = vocab.special_tokens.get(ENDOFTEXT) if isinstance(vocab, TiktokenTokenizer) else None
    settings = hf_config(model.config, eos)
    if not isinstance(vocab, Vocabulary | HFTokenizer | TiktokenTokenizer):
        raise ValueError(
            f"export --format hf takes characters, gpt2 or a tokenizers tokenizer (bpe, a tokenizer.json), not "
            f"the tokenizer {vocab.describe()}: export it to ONNX"
        )
    if len(vocab) > model.config.vocab_size or (isinstance(vocab, Vocabulary) and len(vocab) < model.config.vocab_size):
        raise ValueError(f"the tokenizer has {len(vocab)} ids but the model's vocab_size={model.config.vocab_size}")
    transformers = hf_module("transformers")
    safetensors_torch = hf_module("safetensors.torch")
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model stays where and as it was
    with replacing(Path(out)) as tmp:
        transformers.GPT2Config(**settings).save_pretrained(tmp)
        safetensors_torch.save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer_config: dict[str, Any] = {**TOKENIZER_CONFIG, "model_max_length": model.config.block_size}
        if isinstance(vocab, Vocabulary):
            char_tokenizer(vocab).save(str(tmp / "tokenizer.json"))
        elif isinstance(vocab, TiktokenTokenizer):
            write_gpt2_tokenizer(vocab, tmp)
            specials = dict.fromkeys(("bos_token", "eos_token", "unk_token"), ENDOFTEXT) if eos is not None else {}
            tokenizer_config = {**GPT2_TOKENIZER_CONFIG, **specials, "model_max_length": model.config.block_size}
        else:
            (tmp / "tokenizer.json").write_text(vocab.json_text, encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        return _check_folder(tmp, model, vocab)


def _check_folder(folder: Path, model: GPT, vocab: Tokenizer) -> float:
    transformers = hf_module("transformers")
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars for a few small tensors
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    if bad := {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}:
        raise AssertionError(f"transformers loaded the export with {bad}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    block = model.config.block_size  # in pieces: longer text draws transformers' warning that the model cannot take it
    if isinstance(vocab, Vocabulary):
        pieces = [vocab.chars[start : start + block] for start in range(0, len(vocab), block)]
    else:  # the tokenizer's own text of its first ids, the prompt sampling starts from, and what it encodes of PROBES
        pieces = [vocab.decode(list(range(min(len(vocab), 64)))), vocab.default_prompt]
        pieces += [probe for probe in PROBES if not vocab.unknown(probe)]
    for piece in pieces:
        ids = tokenizer.encode(piece, add_special_tokens=False, verbose=False)  # no "longer than the model" warning
        if ids != vocab.encode(piece).tolist() or tokenizer.decode(ids) != vocab.decode(ids):
            raise AssertionError(f"the exported tokenizer does not give lit-nanogpt's ids and text for {piece!r}")
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(model.config.vocab_size, (2, model.config.block_size), generator=generator)  # (B, T)
    with torch.no_grad():
        ours, _ = model(idx, idx)  # (B, T, V)
        diff = (theirs.eval()(idx).logits - ours).abs().max().item()
    if not diff <= TOLERANCE:
        raise ValueError(
            f"transformers' logits differ from PyTorch's by up to {diff:.3g} (> tolerance {TOLERANCE:g}); "
            "the export was not written"
        )
    return diff


def char_vocabulary(data: Any) -> Vocabulary | None:
    """The ``Vocabulary`` of a parsed tokenizer.json that is ``char_tokenizer``'s (a word-level model of single
    characters with their sorted order as ids, split into characters and fused back); None for any other."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordLevel" or data.get("normalizer") is not None:
        return None
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        return None
    kinds = [
        part.get("type") if isinstance(part, dict) else None
        for part in (data.get("pre_tokenizer"), data.get("decoder"))
    ]
    if kinds != ["Split", "Fuse"]:
        return None
    if not all(isinstance(t, str) and len(t) == 1 for t in vocab):
        return None
    chars = "".join(sorted(vocab, key=lambda c: vocab[c]))
    if not chars or sorted(vocab.values()) != list(range(len(vocab))) or chars != "".join(sorted(chars)):
        return None
    return Vocabulary(chars)


def read_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a transformers folder: its ``tokenizer.json`` (the character tokenizer ``export --format hf``
    writes comes back as that ``Vocabulary``, any other as an ``HFTokenizer``), else GPT-2's ``vocab.json`` and
    ``merges.txt`` (older GPT-2 folders), as transformers' ``GPT2Tokenizer`` reads them, as an ``HFTokenizer``."""
    path = folder / "tokenizer.json"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path} is not a tokenizer.json ({e}): pass the folder's own tokenizers file") from None
        if (vocab := char_vocabulary(data)) is not None:
            return vocab
        try:
            return HFTokenizer(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}; pass the folder's own tokenizers file") from None
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        transformers = hf_module("transformers")
        try:
            tokenizer = transformers.GPT2TokenizerFast.from_pretrained(folder)
        except Exception as e:  # transformers and tokenizers raise several types for unreadable files
            raise ValueError(
                f"{folder}: transformers' GPT2Tokenizer cannot read its vocab.json and merges.txt "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): pass GPT-2's own files"
            ) from None
        return HFTokenizer(tokenizer.backend_tokenizer.to_str())
    raise FileNotFoundError(
        f"{path} does not exist: import-hf needs the folder's tokenizer.json, or GPT-2's vocab.json and merges.txt"
    )


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors: ``model.safetensors`` (or its shards), else ``pytorch_model.bin`` as plain data."""
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file() or index.is_file():
        load_file = hf_module("safetensors.torch").load_file
        if (folder / "model.safetensors").is_file():
            return load_file(str(folder / "model.safetensors"))
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch_load(folder / "pytorch_model.bin", what="weights file")  # weights_only=True
    raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin: pass a transformers model folder")


def import_hf(folder: str | Path, out: str | Path) -> Path:
    """Write the lit-nanogpt checkpoint of a local transformers GPT-2 folder and its tokenizer (``read_tokenizer``)."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a folder that transformers' save_pretrained wrote")
    hf = json.loads(path.read_text(encoding="utf-8"))
    if hf.get("model_type") != "gpt2":
        raise ValueError(
            f"{folder} holds a model_type={hf.get('model_type')!r} model: import-hf takes GPT-2's architecture "
            "(model_type 'gpt2') only"
        )
    mine = {v: k for k, v in ACTIVATIONS.items()}
    activation = hf.get("activation_function", "gelu_new")
    if activation not in mine:
        raise ValueError(
            f"{path} has activation_function={activation!r}; lit-nanogpt's GPT has only {', '.join(mine)} "
            "(gelu_new, GPT-2's default, is the tanh approximation of gelu)"
        )
    settings = {"n_inner": 4 * hf.get("n_embd", 0), "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}  # fmt: skip
    for key, want in settings.items():
        if (value := hf.get(key, want)) != want and not (key == "n_inner" and value is None):
            raise ValueError(f"{path} has {key}={value!r}; lit-nanogpt's GPT has only {key}={want!r}")
    vocab = read_tokenizer(folder)

    state = {k.removeprefix("transformer."): v for k, v in _read_weights(folder).items()}
    # Older GPT-2 files also hold attention's mask buffers (attn.bias, attn.masked_bias): not weights.
    state = {k: v for k, v in state.items() if not (k.endswith((".attn.bias", ".attn.masked_bias")) and v.dim() != 1)}
    tied = bool(hf.get("tie_word_embeddings", True))
    head = state.pop("lm_head.weight", None)
    state = {(k if k == "lm_head.weight" else f"transformer.{k}"): v for k, v in state.items()}
    state = {k: v.t() if k.endswith(CONV1D) else v for k, v in state.items()}
    if "transformer.wte.weight" not in state:
        raise ValueError(f"{folder}: its weights have no wte.weight (the token embedding): not a GPT-2 model")
    rows = state["transformer.wte.weight"].shape[0]
    if isinstance(vocab, Vocabulary) and len(vocab) != rows:
        raise ValueError(
            f"{folder}/tokenizer.json lists {len(vocab)} characters but the weights have {rows} token ids: "
            "pass the tokenizer the model was trained with"
        )
    if len(vocab) > rows:  # fewer is a padded vocabulary (nanoGPT pads GPT-2's 50257 to 50304)
        raise ValueError(
            f"{folder}: its tokenizer, {vocab.describe()}, has more ids than the weights' {rows} token ids: "
            "pass the tokenizer the model was trained with"
        )
    biases = [k for k in state if k.endswith(".bias")]
    bias = any(bool(state[k].any()) for k in biases)  # all zero: the same function without them
    if not bias:
        state = {k: v for k, v in state.items() if k not in biases}
    if tied:
        head = state["transformer.wte.weight"]
    elif head is None:
        raise ValueError(f"{folder}: tie_word_embeddings is false but its weights have no lm_head.weight")
    state["lm_head.weight"] = head
    config = GPTConfig(
        block_size=hf.get("n_positions", 1024),
        vocab_size=rows,
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=float(hf.get("resid_pdrop", 0.0)),
        bias=bias,
        mlp_activation=mine[activation],
        tie_weights=tied,
    )
    misfit = f"{folder}: its weights do not fit its config.json"
    state = {k: v.float() for k, v in state.items()}
    return write_checkpoint(config, state, vocab, out, misfit, extra={"hf": {"source": str(folder)}})
