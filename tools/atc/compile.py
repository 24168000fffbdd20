#!/usr/bin/env python
"""Compile an export folder's ``full.onnx`` to an Ascend ``.om`` with CANN's ``atc``, and record it in the manifest.

    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend310P3
    python tools/atc/compile.py runs/shakespeare_char/export --soc_version Ascend910B --print_only true

The ``.om`` and atc's log land beside ``full.onnx``; ``lit-nanogpt generate --onnx DIR`` then runs the
``.om`` through ais_bench where it is installed. See tools/atc/README.md.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from jsonargparse import auto_cli

from lit_nanogpt.export import MANIFEST, AtcOptions, atc_command, run_atc, sha256
from lit_nanogpt.onnx_infer import read_manifest


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
    manifest = read_manifest(path)
    options = AtcOptions(soc_version=soc_version, precision_mode=precision_mode, log=log, atc=atc)
    if print_only:
        print(shlex.join(atc_command(path.resolve(), manifest, options)))
        return
    if options.executable() is None:
        raise FileNotFoundError("atc is not on PATH: source CANN's set_env.sh (see tools/atc/README.md) or pass --atc")
    # Compile in a copy beside the folder and swap it in only when atc succeeded, so a failed or
    # interrupted compile leaves the export (graphs, manifest, any earlier .om) exactly as it was.
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.atc."))
    try:
        shutil.copytree(path, staging, dirs_exist_ok=True)
        run_atc(staging, path, manifest, options)
        files = sorted(p for p in staging.iterdir() if p.is_file() and p.name != MANIFEST)
        manifest["files"] = {p.name: sha256(p) for p in files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        old = path.with_name(f".{path.name}.old")
        path.rename(old)
        staging.rename(path)
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"Wrote {path / manifest['atc']['om']} (log: {path / manifest['atc']['log']})", file=sys.stderr)


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
