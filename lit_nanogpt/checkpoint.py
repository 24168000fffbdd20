"""Reading lit-nanogpt checkpoints, and nanoGPT's own ``ckpt.pt`` and ``meta.pkl`` both ways."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lit_nanogpt.files import atomic_open, replacing
from lit_nanogpt.model import GPT, GPTConfig
from lit_nanogpt.text import Tokenizer, Vocabulary, tokenizer_for_model

# The fields that build the network; the rest of LitGPT's hyperparameters are for training.
ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))
# Options added after the first checkpoints (the speed-run options): one written before them lacks them
# and is nanoGPT's architecture, which is what their defaults build.
LATER_ARCH_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(GPTConfig)
    if f.name in ("rotary", "qk_norm", "mlp_activation", "tie_weights")
}
_ORIG_MOD = "_orig_mod."  # what torch.compile leaves in front of every key
# nanoGPT's optimizer settings that LitGPT takes under the same names.
NANOGPT_TRAINING = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "beta1", "beta2")


def refused_unpickling(what: str, path: str | Path, error: Exception) -> ValueError | None:
    """The one-line error for a file that ``torch.load(weights_only=True)`` refused to unpickle, else None."""
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    name = re.search(r"GLOBAL (\S+)", text)
    holds = f"it names {name[1].rstrip('.,')}, which" if name else "it holds pickle instructions that"
    return ValueError(
        f"{what} {path} is not plain data: {holds} lit-nanogpt never runs (it loads with torch.load(weights_only=True))"
        "; use a checkpoint of tensors and plain values, as lit-nanogpt and nanoGPT write"
    )


def torch_load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load`` a file on CPU as data only (``weights_only=True``: no class in it is imported or called),
    with a one-line error for missing, damaged or code-carrying files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        if refused := refused_unpickling(what, path, e):
            raise refused from None
        raise ValueError(
            f"{what} {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "it is truncated or not a PyTorch checkpoint: use a complete file"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A lit-nanogpt checkpoint, checked to carry weights, hyperparameters and vocabulary."""
    ckpt = torch_load(path)
    if "model_args" in ckpt and "model" in ckpt:
        raise ValueError(
            f"{path} is a nanoGPT checkpoint: convert it first with "
            f"lit-nanogpt import-nanogpt --ckpt {path} --meta meta.pkl --out runs/model.ckpt"
        )
    missing = [k for k in ("state_dict", "hyper_parameters", "vocab") if k not in ckpt]
    if not missing:
        ckpt["hyper_parameters"] = nest_arch(ckpt["hyper_parameters"])
        arch = ckpt["hyper_parameters"].get("arch")
        if isinstance(arch, dict):  # filled in here, so a resumed fit compares them with what it is asked for
            arch = ckpt["hyper_parameters"]["arch"] = {**LATER_ARCH_DEFAULTS, **arch}
        missing += [f"hyper_parameters.arch.{k}" for k in ARCH_FIELDS if not isinstance(arch, dict) or k not in arch]
    if missing:
        raise ValueError(
            f"{path} is not a lit-nanogpt checkpoint (no {', '.join(missing)}): "
            "use one written by lit-nanogpt fit or import-nanogpt"
        )
    return ckpt


def nest_arch(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters with the architecture under ``arch``, as LitGPT saves them; checkpoints written
    before it had one kept its fields at the top level."""
    if "arch" in hparams or not any(k in hparams for k in ARCH_FIELDS):
        return hparams
    rest = {k: v for k, v in hparams.items() if k not in ARCH_FIELDS}
    return {**rest, "arch": {k: hparams[k] for k in ARCH_FIELDS if k in hparams}}


def load_model(path: str | Path) -> tuple[GPT, Tokenizer]:
    """The network in eval mode and its tokenizer, from a lit-nanogpt checkpoint alone."""
    ckpt = read_checkpoint(path)
    try:
        config = GPTConfig(**ckpt["hyper_parameters"]["arch"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its architecture is not a valid GPTConfig ({e})") from None
    model = GPT(config)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit its own hyperparameters ({str(e).splitlines()[0]})") from None
    return model.eval(), tokenizer_for_model(path, ckpt["vocab"], config.vocab_size)


class _Refused(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and numbers only; the first class or function the pickle names is refused.

    Every opcode that yields a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, and EXT* past copyreg's extension
    cache, which nothing in lit-nanogpt's process fills) goes through ``find_class``, so with it refused,
    REDUCE, NEWOBJ and BUILD have nothing to call.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"it names {module}.{name}, which lit-nanogpt never imports")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"it holds persistent id {str(pid)[:80]!r}, which lit-nanogpt never resolves")


def read_nanogpt_meta(path: str | Path) -> str:
    """The characters of nanoGPT's char-level ``meta.pkl`` in id order, read as data: no code in it runs.

    nanoGPT's ``data/shakespeare_char/prepare.py`` pickles ``{"vocab_size": int, "itos": {int: str},
    "stoi": {str: int}}``; anything else is refused with one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"meta file {path} does not exist: pass the meta.pkl beside nanoGPT's data")
    fix = "pass the meta.pkl that nanoGPT's prepare.py writes (a dict of vocab_size, itos and stoi)"
    try:
        with path.open("rb") as f:
            meta = _PlainUnpickler(f).load()
    except _Refused as e:
        raise ValueError(f"{path} is not a plain nanoGPT meta.pkl: {e}; {fix}") from None
    except Exception as e:  # truncated, or not a pickle at all
        detail = (str(e).splitlines() or [""])[0][:120]
        raise ValueError(f"{path} is not a nanoGPT meta.pkl ({type(e).__name__}: {detail}); {fix}") from None

    def wrong(what: str) -> ValueError:
        return ValueError(f"{path} is not a plain nanoGPT meta.pkl: {what}; {fix}")

    if not isinstance(meta, dict) or not {"vocab_size", "itos", "stoi"} <= meta.keys():
        keys = sorted(map(str, meta)) if isinstance(meta, dict) else None
        raise wrong(f"it holds a dict with keys {keys}" if keys is not None else f"it holds a {type(meta).__name__}")
    itos, stoi, vocab_size = meta["itos"], meta["stoi"], meta["vocab_size"]
    if not isinstance(itos, dict) or any(type(i) is not int for i in itos) or set(itos) != set(range(len(itos))):
        raise wrong("its itos is not a dict of the ids 0..N-1")
    for i, c in itos.items():
        if not (isinstance(c, str) and len(c) == 1):
            raise wrong(f"its itos[{i}] is {c!r:.40}, not one character")
    if type(vocab_size) is not int or vocab_size != len(itos):
        raise wrong(f"its vocab_size={vocab_size!r:.40} but its itos lists {len(itos)} characters")
    inverse = {c: i for i, c in itos.items()}
    if not isinstance(stoi, dict) or any(type(i) is not int for i in stoi.values()) or stoi != inverse:
        raise wrong("its stoi is not the inverse of its itos")
    return "".join(itos[i] for i in range(len(itos)))


def import_nanogpt(ckpt_path: str | Path, meta_path: str | Path, out: str | Path) -> Path:
    """Write a lit-nanogpt checkpoint from nanoGPT's ``ckpt.pt`` and ``meta.pkl``."""
    src = torch_load(ckpt_path, what="nanoGPT checkpoint")
    if "model_args" not in src or "model" not in src:
        raise ValueError(
            f"{ckpt_path} is not a nanoGPT checkpoint (no 'model_args' and 'model'): "
            "pass the ckpt.pt that nanoGPT's train.py writes"
        )
    chars = read_nanogpt_meta(meta_path)
    args = src["model_args"]
    if args.get("vocab_size") != len(chars):
        raise ValueError(
            f"{ckpt_path} has vocab_size={args.get('vocab_size')} but {meta_path} lists {len(chars)} characters: "
            "pass the meta.pkl of the dataset the model was trained on"
        )
    vocab = Vocabulary(chars)
    if vocab.chars != "".join(sorted(chars)):
        raise ValueError(f"{meta_path}: its characters are not in sorted order, so it is not a char-level meta.pkl")
    # Older nanoGPT checkpoints lack some keys (e.g. dropout, bias): nanoGPT's own defaults apply.
    args = {k: args.get(k, getattr(GPTConfig, k)) for k in ARCH_FIELDS}
    if "bias" not in src["model_args"]:
        args["bias"] = any(k.endswith("ln_f.bias") for k in src["model"])
    config = GPTConfig(**args)
    state = {k.removeprefix(_ORIG_MOD): v for k, v in src["model"].items()}
    # nanoGPT without flash attention keeps its causal mask as a buffer named attn.bias: not a weight.
    state = {k: v for k, v in state.items() if not (k.endswith(".attn.bias") and v.dim() == 4)}
    cfg = src.get("config", {})
    training = {k: cfg[k] for k in NANOGPT_TRAINING if k in cfg}
    step = int(src.get("iter_num", 0))
    origin = {"nanogpt": {"iter_num": step, "best_val_loss": float(src.get("best_val_loss", "nan"))}}
    misfit = f"{ckpt_path}: weights do not fit its model_args"
    return write_checkpoint(config, state, vocab, out, misfit, training=training, step=step, extra=origin)


def write_checkpoint(
    config: GPTConfig,
    state: dict[str, torch.Tensor],
    vocab: Tokenizer,
    out: str | Path,
    misfit: str,
    training: dict[str, Any] | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the lit-nanogpt checkpoint of a network brought from elsewhere (nanoGPT, transformers).

    Args:
        config: Its architecture.
        state: Its weights under lit-nanogpt's (nanoGPT's) names; they must fit ``config`` exactly.
        vocab: Its tokenizer, stored as its plain form (``Tokenizer.to_plain``; characters as a str).
        out: Where to write; replaced only once the new file is complete.
        misfit: The error's start when the weights do not fit ``config`` (names the source).
        training: Optimizer settings it was trained with (LitGPT's argument names); the rest keep LitGPT's defaults.
        step: The training step it reached.
        extra: More top-level entries recording where it came from.
    """
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{misfit} ({str(e).splitlines()[0]})") from None

    import lightning as L

    from lit_nanogpt.module import LitGPT

    # LitGPT's defaults, then the architecture and the optimizer settings it was trained with.
    signature = inspect.signature(LitGPT.__init__).parameters.items()
    hparams = {k: p.default for k, p in signature if p.default is not inspect.Parameter.empty}
    hparams["arch"] = dataclasses.asdict(config)
    hparams.update(training or {})
    out = Path(out)
    checkpoint = {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": hparams,
        "vocab": vocab.to_plain(),
        **(extra or {}),
    }
    if config.vocab_size > len(vocab):  # padded: validate and test would otherwise take the tokenizer's size
        checkpoint["datamodule_hyper_parameters"] = {"vocab_size": config.vocab_size}
    with atomic_open(out) as f:  # as AtomicCheckpointIO saves
        torch.save(checkpoint, f)
    return out


# nanoGPT's GPTConfig: what its sample.py and train.py build a model from.
NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def refuse_options(config: GPTConfig, allowed: tuple[str, ...], target: str) -> None:
    """One line naming the first of the speed-run options ``config`` sets that ``target`` has no way to express."""
    for name, default in LATER_ARCH_DEFAULTS.items():
        value = getattr(config, name)
        if name not in allowed and value != default:
            raise ValueError(
                f"{target} has no {name}={value!r} (lit-nanogpt's {name} option): export a model trained "
                f"without it ({name}={default!r}), or use --format onnx"
            )


def export_nanogpt(model: GPT, vocab: Tokenizer, out: str | Path, dataset: str | None = None) -> Path:
    """Write ``ckpt.pt`` and ``meta.pkl`` into the folder ``out``, as nanoGPT's train.py and prepare.py do.

    ``ckpt.pt`` holds plain types only (nanoGPT's ``sample.py`` loads it with ``torch.load``, whose
    default is ``weights_only=True`` since torch 2.6): ``model_args``, ``model`` and ``config`` with
    ``config["dataset"]`` = ``dataset`` (the folder's name by default): sample.py reads the vocabulary
    from ``data/<dataset>/meta.pkl`` under its working folder. Returns the path meta.pkl must take there.
    """
    config = model.config
    refuse_options(config, (), "nanoGPT's model")
    if not isinstance(vocab, Vocabulary):
        raise ValueError(
            "export --format nanogpt writes a character vocabulary (meta.pkl), and this model uses the tokenizer "
            f"{vocab.describe()}: export it to ONNX or --format hf"
        )
    if len(vocab) != config.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocab)} characters but the model's vocab_size={config.vocab_size}")
    out = Path(out)
    dataset = dataset or out.resolve().name
    if not dataset or "/" in dataset or dataset in (".", ".."):
        raise ValueError(f"dataset={dataset!r} must be a plain folder name (sample.py reads data/<dataset>/meta.pkl)")
    args = dataclasses.asdict(config)
    checkpoint = {
        "model_args": {k: args[k] for k in NANOGPT_ARGS},
        "model": {k: v.detach().cpu().float() for k, v in model.state_dict().items()},  # the tied head stays shared
        "config": {"dataset": dataset},
    }
    meta = {"vocab_size": len(vocab), "itos": dict(enumerate(vocab.chars)), "stoi": dict(vocab.stoi)}
    with replacing(out) as tmp:
        torch.save(checkpoint, tmp / "ckpt.pt")
        with (tmp / "meta.pkl").open("wb") as f:
            pickle.dump(meta, f)
    return Path("data") / dataset / "meta.pkl"
