"""Ascend's graph compiler ``atc``: the ops it reads, its options, its command line, and running it.

``atc`` turns the export's ``full.onnx`` into an offline model ``full_<soc>.om`` that the Ascend
runtime loads (see tools/atc/README.md). Nothing here imports onnx or ``torch_npu``.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lit_nanogpt.export.manifest import Manifest

log = logging.getLogger(__name__)

# Ops of CANN's "supported ONNX operators" list (CANN 5.0.4 reference, operatorlist_0071) that an
# exported GPT can contain; anything else is refused at export time rather than failing in atc.
ATC_ONNX_OPS = frozenset(
    "Abs Add And ArgMax Cast Concat Constant ConstantOfShape Div Equal Erf Exp Expand Flatten Gather Gemm "
    "Greater Identity Less LessOrEqual Log MatMul Max Min Mul Neg Not Pow Range Reciprocal ReduceMax ReduceMean "
    "ReduceSum Relu Reshape Shape Sigmoid Slice Softmax Split Sqrt Squeeze Sub Tanh Tile Transpose Unsqueeze "
    "Where".split()
)


@dataclass
class AtcOptions:
    """How ``atc`` compiles ``full.onnx`` to an ``.om`` (see tools/atc/README.md).

    When atc is not found the export still succeeds: the command is written to ``atc_command.sh``.
    """

    soc_version: str = "Ascend310P3"
    """Target chip, as ``npu-smi info`` names it: Ascend310, Ascend310P3, Ascend310B1, Ascend910B, ..."""
    precision_mode: str = "allow_fp32_to_fp16"
    """atc's ``--precision_mode``: ``force_fp16``, ``allow_fp32_to_fp16``, ``must_keep_origin_dtype``, ..."""
    log: str = "error"
    """atc's ``--log`` level: ``debug``, ``info``, ``warning``, ``error`` or ``null``."""
    atc: str | None = None
    """Path to the ``atc`` executable; default the one on ``PATH``."""
    enabled: bool = True
    """Run atc when it is found; ``false`` only writes the command to ``atc_command.sh``."""

    def executable(self) -> str | None:
        """The atc to run: ``atc`` when given (it must exist), else the one on ``PATH``, else ``None``."""
        if self.atc:
            if not Path(self.atc).is_file():
                raise FileNotFoundError(
                    f"atc {self.atc} does not exist: pass the path of CANN's atc, or leave it unset"
                )
            return self.atc
        return shutil.which("atc")


@dataclass
class AtcRecord:
    """What the manifest keeps of the atc step."""

    soc_version: str
    command: str
    """The command line, with the export folder's final path, to compile it later by hand."""
    om: str | None = None
    """The compiled file's name, ``None`` when atc did not run."""
    log: str | None = None
    """atc's log file's name, ``None`` when atc did not run."""


def om_stem(soc_version: str) -> str:
    """The name, without ``.om``, of the model atc compiles for ``soc_version``."""
    return f"full_{soc_version}"


def atc_command(folder: Path, manifest: Manifest, options: AtcOptions, executable: str = "atc") -> list[str]:
    """The ``atc`` command line that compiles ``folder/full.onnx`` to ``folder/full_<soc>.om``."""
    batch, length = manifest.graphs["full"].inputs[0].shape
    dims = manifest.dynamic_dims
    cmd = [
        executable,
        "--framework=5",
        f"--model={folder / 'full.onnx'}",
        f"--output={folder / om_stem(options.soc_version)}",
        f"--soc_version={options.soc_version}",
        f"--input_shape=idx:{batch},{-1 if dims else length}",
        "--input_format=ND",
        f"--precision_mode={options.precision_mode}",
        f"--log={options.log}",
    ]
    if dims:
        cmd.append(f"--dynamic_dims={';'.join(str(d) for d in dims)}")
    return cmd


def run_atc(folder: Path, final: Path, manifest: Manifest, options: AtcOptions) -> AtcRecord:
    """Compile in ``folder`` (the export being built) and return what the manifest should record.

    ``final`` is where the folder will end up: the recorded command names it, so it can be run later.
    Without atc (or with ``enabled=False``) the command goes to ``atc_command.sh`` and a warning is logged.
    """
    later = shlex.join(atc_command(final.resolve(), manifest, options))
    record = AtcRecord(soc_version=options.soc_version, command=later)
    executable = options.executable() if options.enabled else None
    if executable is None:
        (folder / "atc_command.sh").write_text(f"{later}\n", encoding="utf-8")
        reason = "atc is disabled" if not options.enabled else "atc is not on PATH"
        # Expected on any host without CANN: said once, plainly, not as a warning.
        print(f"{reason}: compile for {options.soc_version} later with {final / 'atc_command.sh'}", file=sys.stderr)
        return record
    log_name = f"{om_stem(options.soc_version)}.atc.log"
    with (folder / log_name).open("w", encoding="utf-8") as f:
        result = subprocess.run(atc_command(folder, manifest, options, executable), stdout=f, stderr=subprocess.STDOUT)
    om = folder / f"{om_stem(options.soc_version)}.om"
    if result.returncode != 0 or not om.is_file():
        kept = final.parent / f"{final.name}.{log_name}"
        shutil.copyfile(folder / log_name, kept)
        tail = (folder / log_name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise ValueError(
            f"atc failed (exit code {result.returncode}{', no .om written' if result.returncode == 0 else ''}) "
            f"for {options.soc_version}: {tail[0][:200]!r}; its log is {kept}; the previous export was kept"
        )
    log.info(f"atc compiled {om.name} for {options.soc_version}")
    return AtcRecord(soc_version=options.soc_version, command=later, om=om.name, log=log_name)
