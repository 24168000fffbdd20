#!/usr/bin/env python
"""Compile an export folder's graphs to Ascend ``.om`` files with CANN's ``atc``, and record them in the manifest.

    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend310P3
    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend910B3 --print_only true

Compiles ``full.onnx`` and, where the export has them, the static KV-cache pair ``prefill_static.onnx``
and ``decode_static.onnx`` (each its own ``.om`` with fixed ``--input_shape``). The ``.om`` files and
atc's logs land beside the graphs; ``lit-nanogpt generate --onnx DIR`` then runs them through ais_bench
where it is installed. The options are ``lit_nanogpt.export.atc.AtcOptions``' fields, as ``--atc.*`` of
``lit-nanogpt export`` are. See tools/atc/README.md.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from lit_nanogpt.export.atc import AtcOptions, atc_command, run_atc
from lit_nanogpt.export.manifest import Manifest
from lit_nanogpt.export.settings import add_arguments, from_options
from lit_nanogpt.files import replacing


def compile_om(folder: Path, options: AtcOptions, print_only: bool = False) -> None:
    """Run atc on ``folder``'s graphs and record the ``.om`` files in its manifest, or only print the commands."""
    manifest = Manifest.read(folder)
    if print_only:
        for graph in ["full", *manifest.static_graphs]:
            print(shlex.join(atc_command(folder.resolve(), manifest, options, graph=graph)))
        return
    if options.executable() is None:
        raise FileNotFoundError("atc is not on PATH: source CANN's set_env.sh (see tools/atc/README.md) or pass --atc")
    # Compiled in a copy that replaces the folder only when atc succeeded, so a failed or interrupted
    # compile leaves the export (graphs, manifest, any earlier .om) exactly as it was.
    with replacing(folder, copy=True) as staging:
        manifest.atc = run_atc(staging, folder, manifest, options)
        manifest.write(staging)
    record = manifest.atc
    for om, log in [(record.om, record.log), *((r.om, r.log) for r in record.static.values())]:
        assert om is not None and log is not None, "run_atc returns only after atc wrote every .om and log"
        print(f"Wrote {folder / om} (log: {folder / log})", file=sys.stderr)


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
