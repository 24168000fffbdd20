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
from lit_nanogpt.text import HFTokenizer, Tokenizer, Vocabulary

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Our mlp_activation -> transformers' activation_function (ACT2FN): "gelu" is the exact GELU, not
# GPT-2's default "gelu_new" (the tanh approximation); "relu2" is transformers' ReLUSquaredActivation.
ACTIVATIONS = {"gelu": "gelu", "relu2": "relu2"}
TOKENIZER_CONFIG = {
    # Named, so that AutoTokenizer reads tokenizer.json and does not build GPT-2's own BPE for model_type gpt2.
    "tokenizer_class": "PreTrainedTokenizerFast",
    "clean_up_tokenization_spaces": False,  # " ," stays " ,": the characters are the text
}
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


def hf_config(config: GPTConfig) -> dict[str, Any]:
    """GPT-2's ``config.json`` settings for ``config`` (rotary and QK-norm are refused: GPT-2 has neither)."""
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
        bos_token_id=None,  # GPT-2's 50256 lies outside a character vocabulary; it has no such token
        eos_token_id=None,
        pad_token_id=None,
    )


def char_tokenizer(vocab: Vocabulary) -> Any:
    """``vocab`` as a ``tokenizers.Tokenizer``: one word per character, the vocabulary's ids, fused on decoding."""
    tk = hf_module("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=dict(vocab.stoi), unk_token=None))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer.decoder = tk.decoders.Fuse()
    return tokenizer


def export_hf(model: GPT, vocab: Tokenizer, out: str | Path) -> float:
    """Write ``model`` and its tokenizer as a transformers GPT-2 folder ``out``; returns the largest difference
    between transformers' logits and ours on one full block.

    Characters travel as ``char_tokenizer``; a ``tokenizers`` tokenizer (``--data.tokenizer bpe`` or a
    tokenizer.json) as its own tokenizer.json; tiktoken's gpt2 is refused (transformers' GPT-2 tokenizer needs
    vocab.json and merges.txt, which this export does not derive from the ranks yet). The folder is written
    beside ``out`` and swapped in only once transformers has loaded it (every weight present, none left over),
    its logits agree within ``TOLERANCE`` and its tokenizer gives our ids and text back.
    """
    settings = hf_config(model.config)
    if not isinstance(vocab, Vocabulary | HFTokenizer):
        raise ValueError(
            f"export --format hf takes characters or a tokenizers tokenizer (bpe, a tokenizer.json), not "
            f"the tokenizer {vocab.describe()}: export it to ONNX, or train with --data.tokenizer bpe"
        )
    if len(vocab) > model.config.vocab_size or (isinstance(vocab, Vocabulary) and len(vocab) < model.config.vocab_size):
        raise ValueError(f"the tokenizer has {len(vocab)} ids but the model's vocab_size={model.config.vocab_size}")
    transformers = hf_module("transformers")
    safetensors_torch = hf_module("safetensors.torch")
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model stays where and as it was
    with replacing(Path(out)) as tmp:
        transformers.GPT2Config(**settings).save_pretrained(tmp)
        safetensors_torch.save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if isinstance(vocab, Vocabulary):
            char_tokenizer(vocab).save(str(tmp / "tokenizer.json"))
        else:
            (tmp / "tokenizer.json").write_text(vocab.json_text, encoding="utf-8")
        tokenizer_config = {**TOKENIZER_CONFIG, "model_max_length": model.config.block_size}
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
    else:  # the tokenizer's own text of its first ids, and the prompt sampling starts from
        pieces = [vocab.decode(list(range(min(len(vocab), 64)))), vocab.default_prompt]
    for piece in pieces:
        ids = tokenizer.encode(piece, add_special_tokens=False)
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


def read_char_tokenizer(path: Path) -> Vocabulary:
    """The character vocabulary of a ``tokenizer.json`` that ``export --format hf`` wrote, read as JSON."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: import-hf needs the folder's tokenizer.json (its character vocabulary)"
        )
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model") or {}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path} is not a tokenizer.json ({e}): use the one export --format hf writes") from None
    kind, vocab = model.get("type"), model.get("vocab")
    if kind != "WordLevel" or not isinstance(vocab, dict) or not all(isinstance(t, str) and len(t) == 1 for t in vocab):
        raise ValueError(
            f"{path} is a {kind} tokenizer, not a character vocabulary: import-hf takes the character tokenizer "
            "that lit-nanogpt export --format hf writes; BPE tokenizers come with --data.tokenizer"
        )
    chars = "".join(sorted(vocab, key=lambda c: vocab[c]))
    if sorted(vocab.values()) != list(range(len(vocab))) or chars != "".join(sorted(chars)):
        raise ValueError(f"{path}: its ids are not the characters' sorted order 0..{len(vocab) - 1}, as lit-nanogpt's")
    return Vocabulary(chars)


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
    """Write the lit-nanogpt checkpoint of a local transformers GPT-2 folder and its character tokenizer."""
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
    vocab = read_char_tokenizer(folder / "tokenizer.json")

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
    if len(vocab) != rows:
        raise ValueError(
            f"{folder}/tokenizer.json lists {len(vocab)} characters but the weights have {rows} token ids: "
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
