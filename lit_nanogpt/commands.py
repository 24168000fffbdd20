"""The top of the house: the ``lit-nanogpt`` command table, the overview ``--help``, the dispatch and the
one-line error handling. ``lit_nanogpt/__main__.py`` calls ``main``; nothing imports this module back.

Each command's module is imported only when that command runs: Lightning (with torch._dynamo and
torchmetrics behind it) takes longer to import than torch itself, so only ``fit``, ``validate``,
``test`` and ``predict`` (``lit_nanogpt.cli``) import it; ``generate``, ``import-nanogpt`` and
``export`` do not. transformers (the ``hf`` extra) is imported by ``export --format hf`` and
``import-hf`` alone.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROG = "lit-nanogpt"
EXTRA_COMMANDS = {
    "generate": "Sample text from a checkpoint (lit-nanogpt generate --help)",
    "import-nanogpt": "Convert nanoGPT's ckpt.pt and meta.pkl into a lit-nanogpt checkpoint",
    "export": "Export a checkpoint to ONNX (and an Ascend .om when atc is installed), transformers or nanoGPT",
    "import-hf": "Convert a transformers GPT-2 folder (export --format hf's) into a lit-nanogpt checkpoint",
    "serve": "Serve a checkpoint or an export over OpenAI's HTTP API (lit-nanogpt serve --help)",
}
HELP = f"""usage: {PROG} COMMAND [options]

Train, evaluate and sample nanoGPT with Lightning. {PROG} COMMAND --help lists a command's options.

Lightning's commands (any option can also go in a YAML file given with --config):
  fit             Train: {PROG} fit --config configs/shakespeare_char_cpu.yaml
  validate        Validation loss of a checkpoint: --ckpt_path CKPT
  test            The same, reported as test_loss
  predict         Sample through Lightning's predict loop: --ckpt_path CKPT --data.prompts '["ROMEO:"]'
Ours:
""" + "\n".join(f"  {name:<15} {text}" for name, text in EXTRA_COMMANDS.items())
# The module each command runs from, imported before the command starts (``command_module``).
COMMAND_MODULES = {
    **dict.fromkeys(("fit", "validate", "test", "predict"), "lit_nanogpt.cli"),
    "generate": "lit_nanogpt.generate",
    "serve": "lit_nanogpt.serve.command",
}
EXPORT_FORMATS = ("onnx", "hf", "nanogpt")
# The Lightning commands' --help description.
DESCRIPTION = "Train, evaluate and sample nanoGPT with Lightning. Also: " + "; ".join(
    f"{PROG} {name}: {text}" for name, text in EXTRA_COMMANDS.items()
)


def import_nanogpt_command(ckpt: str, meta: str, out: str) -> None:
    """Convert nanoGPT's checkpoint into a lit-nanogpt one that validate, predict and generate take alone.

    Args:
        ckpt: nanoGPT's ``ckpt.pt`` (with or without torch.compile's ``_orig_mod.`` prefix).
        meta: The ``meta.pkl`` of the dataset it was trained on (its ``itos`` is the vocabulary).
        out: Where to write the lit-nanogpt checkpoint.
    """
    from lit_nanogpt.checkpoint import import_nanogpt

    path = import_nanogpt(ckpt, meta, out)
    print(f"Wrote {path}", file=sys.stderr)


def import_hf_command(model: str, out: str) -> None:
    """Convert a local transformers GPT-2 folder into a lit-nanogpt checkpoint (docs/hf.md).

    validate, generate, export and serve take the checkpoint alone, as one import-nanogpt writes.

    Args:
        model: The folder: config.json (model_type gpt2), model.safetensors (or a pytorch_model.bin of
            plain tensors) and its tokenizer: a tokenizer.json (the character one export --format hf writes,
            or any tokenizers tokenizer), or GPT-2's vocab.json and merges.txt.
        out: Where to write the lit-nanogpt checkpoint.
    """
    from lit_nanogpt.hf import import_hf

    path = import_hf(model, out)
    print(f"Wrote {path}", file=sys.stderr)


def export_command(args: list[str]) -> None:
    """``lit-nanogpt export --checkpoint X.ckpt --out DIR [--format hf|nanogpt | --opset ... --atc.soc_version ...]``.

    The ONNX options are ``lit_nanogpt.export.ExportSettings``' fields, the same the fit-end callback
    ``lit_nanogpt.callbacks.OnnxExport`` takes as ``init_args.settings``: each is defined once.
    """
    from jsonargparse import ArgumentParser

    from lit_nanogpt.checkpoint import load_model
    from lit_nanogpt.export import ExportSettings
    from lit_nanogpt.export.atc import AtcOptions
    from lit_nanogpt.export.settings import add_arguments, from_options

    parser = ArgumentParser(prog=f"{PROG} export", description="Export a lit-nanogpt checkpoint to ONNX (and "
                            "atc's .om when atc is installed), a transformers folder or nanoGPT's format.")  # fmt: skip
    parser.add_argument("--checkpoint", required=True, help="A checkpoint written by fit, import-nanogpt or import-hf.")
    parser.add_argument(
        "--out", required=True, help="The export folder; replaced only once the new export is complete."
    )
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="onnx: ONNX graphs (docs/export.md); "
        "hf: a transformers GPT-2 folder with its tokenizer (docs/hf.md); nanogpt: ckpt.pt and "
        "meta.pkl for nanoGPT's sample.py. The other options are onnx's.",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="--format nanogpt: config.dataset, so that sample.py "
        "reads data/<dataset>/meta.pkl (default: the --out folder's name)",
    )
    # AtcOptions as a group of its own, so that --help lists each of its options (jsonargparse shows
    # ExportSettings.atc, an optional dataclass, as one --atc.help); atc=None is for Python callers.
    add_arguments(parser, ExportSettings, skip={"atc"})
    add_arguments(parser, AtcOptions, "atc")
    cfg = parser.parse_args(args).as_dict()
    out, fmt = Path(cfg["out"]), cfg["format"]
    defaults = parser.get_defaults().as_dict()
    common = {"checkpoint", "out", "format"}
    own = common | {"nanogpt": {"dataset"}, "hf": set()}.get(fmt, set(defaults) - common - {"dataset"})
    if other := [k for k, v in cfg.items() if k in defaults and k not in own and v != defaults[k]]:
        takes = ", ".join(f"--{k}" for k in sorted(own))
        raise ValueError(f"--{other[0]} is not an option of --format {fmt}, which takes {takes}")
    if fmt == "onnx":
        settings = from_options(ExportSettings, cfg, atc=from_options(AtcOptions, cfg["atc"]))
    model, vocab = load_model(cfg["checkpoint"])
    if fmt == "hf":
        from lit_nanogpt.hf import export_hf

        diff = export_hf(model, vocab, out)
        print(
            f"Wrote {out} (transformers vs PyTorch max abs logit difference {diff:.2g}): "
            "transformers' AutoModelForCausalLM and AutoTokenizer load it",
            file=sys.stderr,
        )
    elif fmt == "nanogpt":
        from lit_nanogpt.checkpoint import export_nanogpt

        meta = export_nanogpt(model, vocab, out, cfg["dataset"])
        where = shlex.quote(str(out.resolve()))
        print(
            f"Wrote {out}/ckpt.pt and {out}/meta.pkl. nanoGPT's sample.py reads the vocabulary from {meta} "
            f"under its working folder; in nanoGPT's folder: mkdir -p {meta.parent} && cp {where}/meta.pkl "
            f"{meta} && python sample.py --init_from=resume --out_dir={where}",
            file=sys.stderr,
        )
    else:
        from lit_nanogpt.export import export_model

        manifest = export_model(model, vocab, out, settings, source=str(cfg["checkpoint"]))
        worst = max(manifest.max_abs_diff.values())
        print(f"Wrote {out} (onnxruntime vs PyTorch max abs logit difference {worst:.2g})", file=sys.stderr)


def command_module(args: list[str]) -> str | None:
    """The module ``lit-nanogpt ARGS`` runs from (Lightning's CLI for fit and the other Trainer commands), for
    ``__main__`` to import with the garbage collector paused; None for the overview and the light commands."""
    return COMMAND_MODULES.get(args[0]) if args and args[0] not in ("-h", "--help") else None


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tips and warnings that say nothing about this project's runs."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )
    for message in (
        r".*treespec, LeafSpec.*",  # inside Lightning's own pytree helper
        r"Your `IterableDataset` has `__len__` defined.*",  # ours shard themselves per rank
        r"The '\w+_dataloader' does not have many workers.*",  # batches are one indexing op each
        r"Starting from v1.9.0, `tensorboardX` has been removed.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def _storage_error(e: OSError) -> str | None:
    """The one line for a full disk or a folder that cannot be written; None for other ``OSError``s.

    Nothing good is lost: checkpoints, caches and exports are written beside their target and renamed.
    """
    from lit_nanogpt.files import target_of

    where = str(e.filename or "a file")
    if (target := target_of(Path(where))) is not None:  # a temporary file or folder: name what it was for
        where = str(target)
    fix = "pass another --trainer.default_root_dir (export: --out) or --data.cache_dir"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device holding {where}: free some space, or {fix}"
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        return f"cannot write {where} ({e.strerror}): make it writable, or {fix}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``lit-nanogpt ARGS`` (``argv`` or the command line); returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    _quiet_lightning()
    try:
        if args in ([], ["-h"], ["--help"]):
            print(HELP)
            return 0 if args else 2
        elif args[:1] == ["export"]:
            export_command(args[1:])
        elif args[:1] and args[0] in ("generate", "import-nanogpt", "import-hf", "serve"):
            from jsonargparse import auto_cli

            if args[0] == "generate":
                from lit_nanogpt.generate import generate

                command: Callable[..., Any] = generate
            elif args[0] == "serve":
                from lit_nanogpt.serve.command import serve

                command = serve
            elif args[0] == "import-hf":
                command = import_hf_command
            else:
                command = import_nanogpt_command
            auto_cli(command, args=args[1:], as_positional=False, prog=f"{PROG} {args[0]}")
        else:
            from lit_nanogpt.cli import run_lightning_cli  # Lightning, only for its commands

            run_lightning_cli(argv, prog=PROG, description=DESCRIPTION)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("LIT_NANOGPT_DEBUG"):
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lit-nanogpt generate ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if (line := _storage_error(e)) is None or os.environ.get("LIT_NANOGPT_DEBUG"):
            raise
        print(f"{PROG}: error: {line}", file=sys.stderr)
        return 1
    return 0
