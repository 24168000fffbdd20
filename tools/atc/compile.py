#!/usr/bin/env python
"""Compile an export folder's ``full.onnx`` to an Ascend ``.om`` with CANN's ``atc``, and record it in the manifest.

    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend310P3
    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend910B --print_only true

The ``.om`` and atc's log land beside ``full.onnx``; ``lit-nanogpt generate --onnx DIR`` then runs the
``.om`` through ais_bench where it is installed. The options are ``lit_nanogpt.npu.atc.AtcOptions``'
fields, as ``--atc.*`` of ``lit-nanogpt export`` are. See tools/atc/README.md.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from lit_nanogpt.export.manifest import Manifest, replacing
from lit_nanogpt.export.settings import add_arguments, from_options
from lit_nanogpt.npu.atc import AtcOptions, atc_command, run_atc


def compile_om(folder: Path, options: AtcOptions, print_only: bool = False) -> None:
    """Run atc on ``folder/full.onnx`` and record the ``.om`` in its manifest, or only print the command."""
    manifest = Manifest.read(folder)
    if print_only:
        print(shlex.join(atc_command(folder.resolve(), manifest, options)))
        return
    if options.executable() is None:
        raise FileNotFoundError("atc is not on PATH: source CANN's set_env.sh (see tools/atc/README.md) or pass --atc")
    # Compiled in a copy that replaces the folder only when atc succeeded, so a failed or interrupted
    # compile leaves the export (graphs, manifest, any earlier .om) exactly as it was.
    with replacing(folder, copy=True) as staging:
        manifest.atc = run_atc(staging, folder, manifest, options)
        manifest.write(staging)
    print(f"Wrote {folder / manifest.atc.om} (log: {folder / manifest.atc.log})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tools/atc/compile.py", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="An export folder written by lit-nanogpt export or the fit-end export.")
    add_arguments(parser, AtcOptions, skip={"enabled"})  # this tool is the running of atc
    parser.add_argument("--print_only", type=bool, default=False, help="Print the command instead of running it.")
    try:
        cfg = parser.parse_args(argv).as_dict()
        compile_om(Path(cfg["folder"]), from_options(AtcOptions, cfg), cfg["print_only"])
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("LIT_NANOGPT_DEBUG"):
            raise
        print(f"compile.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
