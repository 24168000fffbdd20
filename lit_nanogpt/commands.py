"""The ``lit-nanogpt`` entry point, and the commands that need no Lightning: ``generate``,
``import-nanogpt``, ``export`` and the overview ``--help``.

Lightning (with torch._dynamo and torchmetrics behind it) takes longer to import than torch itself, so
it is imported only for ``fit``, ``validate``, ``test`` and ``predict`` (``lit_nanogpt.cli``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from jsonargparse import auto_cli

from lit_nanogpt.checkpoint import import_nanogpt, load_model
from lit_nanogpt.sampling import SEPARATOR, SamplingSettings
from lit_nanogpt.text import read_corpus

PROG = "lit-nanogpt"
EXTRA_COMMANDS = {
    "generate": "Sample text from a checkpoint (lit-nanogpt generate --help)",
    "import-nanogpt": "Convert nanoGPT's ckpt.pt and meta.pkl into a lit-nanogpt checkpoint",
    "export": "Export a checkpoint to ONNX (and an Ascend .om when atc is installed)",
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


def torch_device(name: str) -> torch.device:
    """``name`` as a device this process can use, or a ``ValueError`` saying what is missing."""
    if name.startswith("npu"):
        from lit_nanogpt.npu.runtime import npu_module

        npu_module(f"--device {name}")  # imports torch_npu, which makes "npu" a device type
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda, cuda:1, npu or npu:1") from None
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and not (module is not None and module.is_available()):
        raise ValueError(f"--device {name}: no {device.type} device is available here; use --device cpu")
    return device


def generate(
    checkpoint: str | None = None,
    onnx: str | None = None,
    prompt: str | None = None,
    seed: int = 1337,
    device: str = "cpu",
    use_cache: bool = True,
    int8: bool = False,
    window: Literal["exact", "half"] = "exact",
    backend: Literal["auto", "cpu", "cann", "om"] = "auto",
    cache: Literal["auto", "dynamic", "static"] = "auto",
    **sampling: Any,
) -> None:
    """Sample from a lit-nanogpt checkpoint or export folder and print each sample as nanoGPT's sample.py does.

    Args:
        checkpoint: A checkpoint written by ``fit`` or ``import-nanogpt``; nothing else is needed.
        onnx: Instead of ``checkpoint``: an export folder (``lit-nanogpt export`` or the fit-end export),
            run with onnxruntime (or on Ascend, its .om through ais_bench or onnxruntime's CANN provider).
        prompt: Text to continue; prefix with ``FILE:`` to read it from a file. Default a newline (nanoGPT's),
            or the vocabulary's first character when it has no newline.
        seed: Seed of the sampling, as ``torch.manual_seed`` in nanoGPT's sample.py.
        device: Where to run, e.g. ``cpu`` or ``cuda``.
        use_cache: Keep keys and values while the text fits in block_size (same tokens, faster).
        int8: With ``onnx``: run the int8-weight graphs (faster on CPU; see docs/export.md for the cost).
            CPU only: refused with ``--backend cann`` or ``om``.
        window: With ``onnx``, past block_size: ``exact`` (nanoGPT's sliding window, a full window per
            token) or ``half`` (re-read the last block_size/2 tokens when the cache is full: faster, not identical).
        backend: With ``onnx``: ``auto``, ``cpu`` (onnxruntime), ``cann`` (onnxruntime's CANN provider)
            or ``om`` (the atc-compiled .om files through ais_bench).
        cache: With ``onnx``: ``dynamic`` (prefill/decode graphs, a cache that grows), ``static`` (the
            fixed-shape prefill_static/decode_static pair that atc and the CANN provider compile once)
            or ``auto`` (static on Ascend, dynamic on CPU). Same tokens either way.
        sampling: ``SamplingSettings``' fields, given flat: ``--max_new_tokens``, ``--temperature``,
            ``--top_k``, ``--num_samples``.
    """
    settings = SamplingSettings(**sampling)
    if (checkpoint is None) == (onnx is None):
        raise ValueError("pass exactly one of --checkpoint CKPT (PyTorch) and --onnx EXPORT_DIR (onnxruntime)")
    if onnx is None and (int8 or window != "exact" or backend != "auto" or cache != "auto"):
        raise ValueError("--int8, --window, --backend and --cache apply to --onnx EXPORT_DIR only")
    if prompt is not None and prompt.startswith("FILE:"):
        prompt, _ = read_corpus(Path(prompt[5:]), what="prompt file")
    start = time.perf_counter()
    if onnx is not None:
        from lit_nanogpt.export import open_export

        exported, _ = open_export(onnx, int8=int8, backend=backend, cache=cache)
        vocab, block_size = exported.vocab, exported.block_size
        run: Callable[..., torch.Tensor] = exported.generate
        target = torch.device("cpu")

        def slide(window: torch.Tensor) -> None:  # what a token past block_size runs (--window exact)
            ids = window.numpy()
            exported.prefill_static(ids) if exported.cache == "static" else exported.full(ids)
    else:
        assert checkpoint is not None  # exactly one of the two, checked above
        model, vocab = load_model(checkpoint)
        target = torch_device(device)
        model.to(target)
        block_size, run = model.config.block_size, model.generate

        def slide(window: torch.Tensor) -> None:
            with torch.no_grad():
                model(window)

    if prompt is None:
        prompt = vocab.default_prompt
    if missing := vocab.unknown(prompt):
        raise ValueError(f"prompt has characters not in the model's vocabulary: {''.join(missing)!r}; remove them")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character, e.g. a newline")
    if len(prompt) > block_size:
        print(f"prompt has {len(prompt)} characters, more than block_size={block_size}: "
              f"the model sees only the last {block_size}", file=sys.stderr)  # fmt: skip
    idx = torch.from_numpy(vocab.encode(prompt))[None].to(target)  # (1, T)
    options: dict[str, Any] = {"temperature": settings.temperature, "top_k": settings.top_k, "use_cache": use_cache}
    if onnx is not None:
        options["window"] = window
    # Warm-up, before the timer: one short run through every graph generation will use (onnxruntime
    # builds its sessions on first use; PyTorch allocates on a shape's first run), so that the tokens/s
    # line times generation alone. It draws before torch.manual_seed: a seeded sample is unchanged.
    run(idx, min(2, settings.max_new_tokens), **options)  # prefill and one decode step (or the full graph)
    if len(prompt) + settings.max_new_tokens - 1 > block_size:  # some token will see a full, sliding window
        slide(torch.zeros(1, block_size, dtype=torch.long, device=target))  # at the shape the timed tokens use
    print(f"Loaded {onnx or checkpoint} in {time.perf_counter() - start:.2f} s", file=sys.stderr)

    def show(token: torch.Tensor) -> None:  # each character as it is drawn, as a terminal shows typing
        sys.stdout.write(vocab.decode(token[0]))
        sys.stdout.flush()

    torch.manual_seed(seed)
    new_tokens, seconds = 0, 0.0
    for _ in range(settings.num_samples):
        sys.stdout.write(prompt)  # nanoGPT's layout: prompt and continuation, a newline, the separator line
        sys.stdout.flush()
        start = time.perf_counter()
        run(idx, settings.max_new_tokens, **options, on_token=show)
        seconds += time.perf_counter() - start
        new_tokens += settings.max_new_tokens
        print()
        print(SEPARATOR, flush=True)
    print(f"{new_tokens} tokens in {seconds:.2f} s ({new_tokens / seconds:.1f} tokens/s)", file=sys.stderr)


def import_nanogpt_command(ckpt: str, meta: str, out: str) -> None:
    """Convert nanoGPT's checkpoint into a lit-nanogpt one that validate, predict and generate take alone.

    Args:
        ckpt: nanoGPT's ``ckpt.pt`` (with or without torch.compile's ``_orig_mod.`` prefix).
        meta: The ``meta.pkl`` of the dataset it was trained on (its ``itos`` is the vocabulary).
        out: Where to write the lit-nanogpt checkpoint.
    """
    path = import_nanogpt(ckpt, meta, out)
    print(f"Wrote {path}", file=sys.stderr)


def export_command(args: list[str]) -> None:
    """``lit-nanogpt export --checkpoint X.ckpt --out DIR [--opset ... --atc.soc_version ...]``.

    The options are ``lit_nanogpt.export.ExportSettings``' fields, the same the fit-end callback
    ``lit_nanogpt.callbacks.OnnxExport`` takes as ``init_args.settings``: each is defined once.
    """
    from jsonargparse import ArgumentParser

    from lit_nanogpt.export import ExportSettings, export_model
    from lit_nanogpt.export.settings import add_arguments, from_options
    from lit_nanogpt.npu.atc import AtcOptions

    parser = ArgumentParser(prog=f"{PROG} export", description="Export a lit-nanogpt checkpoint to an ONNX folder, "
                            "and compile it with atc when atc is installed.")  # fmt: skip
    parser.add_argument("--checkpoint", required=True, help="A checkpoint written by fit or import-nanogpt.")
    parser.add_argument(
        "--out", required=True, help="The export folder; replaced only once the new export is complete."
    )
    # AtcOptions as a group of its own, so that --help lists each of its options (jsonargparse shows
    # ExportSettings.atc, an optional dataclass, as one --atc.help); atc=None is for Python callers.
    add_arguments(parser, ExportSettings, skip={"atc"})
    add_arguments(parser, AtcOptions, "atc")
    cfg = parser.parse_args(args).as_dict()
    settings = from_options(ExportSettings, cfg, atc=from_options(AtcOptions, cfg["atc"]))
    model, vocab = load_model(cfg["checkpoint"])
    manifest = export_model(model, vocab, cfg["out"], settings, source=str(cfg["checkpoint"]))
    worst = max(manifest.max_abs_diff.values())
    print(f"Wrote {cfg['out']} (onnxruntime vs PyTorch max abs logit difference {worst:.2g})", file=sys.stderr)


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
    where = str(e.filename or "a file")
    if partial := re.fullmatch(r"\.(.+)\.partial-\w+", Path(where).name):  # an export's temporary folder
        where = str(Path(where).with_name(partial[1]))
    fix = "pass another --trainer.default_root_dir (export: --out) or --data.cache_dir"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device holding {where}: free some space, or {fix}"
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        return f"cannot write {where} ({e.strerror}): make it writable, or {fix}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _quiet_lightning()
    own = {"generate": generate, "import-nanogpt": import_nanogpt_command}
    try:
        if args in ([], ["-h"], ["--help"]):
            print(HELP)
            return 0 if args else 2
        elif args[:1] == ["export"]:
            export_command(args[1:])
        elif args[:1] and args[0] in own:
            command = cast(Callable[..., Any], own[args[0]])
            auto_cli(command, args=args[1:], as_positional=False, prog=f"{PROG} {args[0]}")
        else:
            from lit_nanogpt.cli import run_lightning_cli  # Lightning, only for its commands

            run_lightning_cli(argv)
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


if __name__ == "__main__":
    sys.exit(main())
