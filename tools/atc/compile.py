#!/usr/bin/env python
"""Compile an export folder's ``full.onnx`` to an Ascend ``.om`` with CANN's ``atc``, and record it in the manifest.

    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend310P3
    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend910B --print_only true

The ``.om`` and atc's log land beside ``full.onnx``; ``lit-nanogpt generate --onnx DIR`` then runs the
``.om`` through ais_bench where it is installed. See tools/atc/README.md.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from jsonargparse import auto_cli

from lit_nanogpt.export.manifest import Manifest, replacing
from lit_nanogpt.npu.atc import AtcOptions, atc_command, run_atc


def compile_om(
    folder: str,
    soc_version: str = "Ascend310P3",
    precision_mode: str = "allow_fp32_to_fp16",
    log: str = "error",
    atc: str | None = None,
    print_only: bool = False,
) -> None:
    """Run atc on ``folder/full.onnx`` (or only print the command).

    Args:
        folder: An export folder written by ``lit-nanogpt export`` or the fit-end export.
        soc_version: Target chip: Ascend310, Ascend310P3, Ascend310B1, Ascend910B, ...
        precision_mode: atc's ``--precision_mode``.
        log: atc's ``--log`` level.
        atc: Path of the ``atc`` executable; default the one on PATH.
        print_only: Print the command instead of running it.
    """
    path = Path(folder)
    manifest = Manifest.read(path)
    options = AtcOptions(soc_version=soc_version, precision_mode=precision_mode, log=log, atc=atc)
    if print_only:
        print(shlex.join(atc_command(path.resolve(), manifest, options)))
        return
    if options.executable() is None:
        raise FileNotFoundError("atc is not on PATH: source CANN's set_env.sh (see tools/atc/README.md) or pass --atc")
    # Compiled in a copy that replaces the folder only when atc succeeded, so a failed or interrupted
    # compile leaves the export (graphs, manifest, any earlier .om) exactly as it was.
    with replacing(path, copy=True) as staging:
        manifest.atc = run_atc(staging, path, manifest, options)
        manifest.write(staging)
    print(f"Wrote {path / manifest.atc.om} (log: {path / manifest.atc.log})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        auto_cli(compile_om, args=argv, as_positional=True, prog="tools/atc/compile.py")
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("LIT_NANOGPT_DEBUG"):
            raise
        print(f"compile.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
