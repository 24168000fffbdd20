"""Ascend's graph compiler ``atc``: the ops it reads, its options, its command lines, and running it.

``atc`` turns the export's ``full.onnx`` into an offline model ``full_<soc>.om`` that the Ascend
runtime loads, and each graph of the static KV-cache pair (``prefill_static.onnx``,
``decode_static.onnx``) into ``<graph>_<soc>.om`` (see tools/atc/README.md). Nothing here imports
onnx or ``torch_npu``.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lit_nanogpt.export.manifest import AtcRecord, AtcStatic

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


@dataclass(frozen=True)
class CannOnnxParser:
    """The ONNX opsets one CANN generation's atc parses: it looks each node up as
    ``ai.onnx::<the model's opset>::<Op>`` among its registered plugins, so an op registered for
    opsets 9-13 does not parse in an opset-15 model."""

    cann: str
    """The first CANN release of the generation."""
    opsets: tuple[int, int]
    """First and last opset registered for every op of ``ATC_ONNX_OPS``, except those in ``ops``."""
    ops: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Ops registered for a narrower range."""

    def reads(self, op: str, opset: int) -> bool:
        first, last = self.ops.get(op, self.opsets)
        return op in ATC_ONNX_OPS and first <= opset <= last


# Oldest first. CANN 5.0.x: the ONNX plugins (ops/built-in/framework/onnx_plugin/*_plugin.cc of
# canndev, e.g. reduce_mean_plugin.cc: OriginOpType "ai.onnx::9::ReduceMean" ... "ai.onnx::13::ReduceMean")
# register opsets 9 (some 8) to 13, the range of the CANN 5.0.4 operator list. CANN 7.0 and later (7.x,
# 8.x): the plugins register most ops for opsets 8 to 18, and the ONNX operator list documents
# ReduceMean up to opset 16. Not checked against a real atc (none was available to this project).
CANN_ONNX_PARSERS = (
    CannOnnxParser("5.0", (9, 13)),
    CannOnnxParser("7.0", (8, 18), {"ReduceMean": (8, 16)}),
)


def oldest_cann(ops: list[str], opset: int) -> str | None:
    """The first CANN release whose atc parses every op of ``ops`` at ``opset``, or ``None``."""
    for parser in CANN_ONNX_PARSERS:
        if all(parser.reads(op, opset) for op in ops):
            return parser.cann
    return None


def unreadable(ops: list[str], opset: int) -> str:
    """Why no supported CANN parses ``ops`` at ``opset``: each op's failure on the newest parser."""
    parser = CANN_ONNX_PARSERS[-1]
    bad = [op for op in ops if not parser.reads(op, opset)]
    lacking = [op for op in bad if op not in ATC_ONNX_OPS]
    ranged = [f"{op} ({'-'.join(map(str, parser.ops.get(op, parser.opsets)))})" for op in bad if op not in lacking]
    parts = ([f"ops that atc lacks: {', '.join(lacking)}"] if lacking else []) + (
        [f"ops atc of CANN {parser.cann}+ reads only at other opsets: {', '.join(ranged)}"] if ranged else []
    )
    return "; ".join(parts)


# Chip names atc takes as --soc_version: "Ascend" + the Name column of `npu-smi info` (CANN 8.x ATC
# guide, --soc_version). Atlas A2 (910B) boards are Ascend910B1..B4, Atlas A3 Ascend910_93xx. Written
# from the docs, not checked against every CANN release, so a name outside it is passed on to atc
# (which knows its own list); only names known to be wrong are refused.
SOC_VERSIONS = (
    "Ascend310", "Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4",
    "Ascend310P1", "Ascend310P3", "Ascend310P5", "Ascend310P7",
    "Ascend910A", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA",
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4", "Ascend910B4-1",
    "Ascend910_9391", "Ascend910_9392", "Ascend910_9381", "Ascend910_9382", "Ascend910_9372", "Ascend910_9362",
)  # fmt: skip
PRECISION_MODES = ("force_fp32", "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision")


@dataclass
class AtcOptions:
    """How ``atc`` compiles ``full.onnx`` to an ``.om`` (see tools/atc/README.md).

    When atc is not found the export still succeeds: the command is written to ``atc_command.sh``.
    """

    soc_version: str = "Ascend310P3"
    """Target chip: "Ascend" + the Name column of ``npu-smi info``: Ascend310, Ascend310P3, Ascend310B1,
    Ascend910B3 (Atlas A2 boards are Ascend910B1..B4), ..."""
    precision_mode: str = "allow_fp32_to_fp16"
    """atc's ``--precision_mode``: ``allow_fp32_to_fp16`` (fp16 where a kernel has no fp32), ``force_fp16``
    (atc's own default; can overflow LayerNorm's Pow), ``must_keep_origin_dtype`` (not on Ascend310), ..."""
    log: str = "error"
    """atc's ``--log`` level: ``debug``, ``info``, ``warning``, ``error`` or ``null``."""
    atc: str | None = None
    """Path to the ``atc`` executable; default the one on ``PATH``."""
    enabled: bool = True
    """Run atc when it is found; ``false`` only writes the command to ``atc_command.sh``."""

    def __post_init__(self) -> None:
        if self.soc_version == "Ascend910B" or not self.soc_version.startswith("Ascend"):
            hint = (
                'Atlas A2 (910B) chips are Ascend910B1..Ascend910B4, "Ascend" + the Name column of npu-smi info'
                if self.soc_version == "Ascend910B"
                else '"Ascend" + the Name column of npu-smi info'
            )
            raise ValueError(
                f"soc_version={self.soc_version!r} is not a chip atc knows ({hint}); e.g. {', '.join(SOC_VERSIONS)}"
            )
        if self.precision_mode not in PRECISION_MODES:
            raise ValueError(f"precision_mode={self.precision_mode!r} is not one of {', '.join(PRECISION_MODES)}")
        if self.precision_mode == "must_keep_origin_dtype" and self.soc_version == "Ascend310":
            raise ValueError(
                "precision_mode=must_keep_origin_dtype cannot compile for Ascend310: it has no fp32 MatMul; "
                "use allow_fp32_to_fp16"
            )

    def executable(self) -> str | None:
        """The atc to run: ``atc`` when given (it must exist), else the one on ``PATH``, else ``None``."""
        if self.atc:
            if not Path(self.atc).is_file():
                raise FileNotFoundError(
                    f"atc {self.atc} does not exist: pass the path of CANN's atc, or leave it unset"
                )
            return self.atc
        return shutil.which("atc")


def om_stem(soc_version: str, graph: str = "full") -> str:
    """The name, without ``.om``, of the model atc compiles from ``graph`` for ``soc_version``."""
    return f"{graph}_{soc_version}"


def atc_command(
    folder: Path, manifest: Manifest, options: AtcOptions, executable: str = "atc", graph: str = "full"
) -> list[str]:
    """The ``atc`` command line that compiles ``folder/<graph>.onnx`` to ``folder/<graph>_<soc>.om``.

    The full graph takes ``--dynamic_dims`` when the manifest has them; the static pair has every
    input's shape fixed in ``--input_shape`` (``idx:1,1;pos:1;past_key_0:1,4,64,32;...``).
    """
    inputs = manifest.graphs[graph].inputs
    dims = manifest.dynamic_dims if graph == "full" else None
    if graph == "full":
        batch, length = inputs[0].shape
        shape = f"idx:{batch},{-1 if dims else length}"
    else:
        shape = ";".join(f"{t.name}:{','.join(str(d) for d in t.shape)}" for t in inputs)
    cmd = [
        executable,
        "--framework=5",
        f"--model={folder / f'{graph}.onnx'}",
        f"--output={folder / om_stem(options.soc_version, graph)}",
        f"--soc_version={options.soc_version}",
        f"--input_shape={shape}",
        "--input_format=ND",
        f"--precision_mode={options.precision_mode}",
        f"--log={options.log}",
    ]
    if dims:
        cmd.append(f"--dynamic_dims={';'.join(str(d) for d in dims)}")
    return cmd


def _compile(folder: Path, final: Path, manifest: Manifest, options: AtcOptions, executable: str, graph: str) -> str:
    """Run atc on one graph; returns the log's name, or raises with the log kept beside ``final``."""
    stem = om_stem(options.soc_version, graph)
    log_name = f"{stem}.atc.log"
    with (folder / log_name).open("w", encoding="utf-8") as f:
        cmd = atc_command(folder, manifest, options, executable, graph)
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    om = folder / f"{stem}.om"
    if result.returncode != 0 or not om.is_file():
        kept = final.parent / f"{final.name}.{log_name}"
        shutil.copyfile(folder / log_name, kept)
        tail = (folder / log_name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise ValueError(
            f"atc failed (exit code {result.returncode}{', no .om written' if result.returncode == 0 else ''}) "
            f"on {graph}.onnx for {options.soc_version}: {tail[0][:200]!r}; its log is {kept}; "
            "the previous export was kept"
        )
    log.info(f"atc compiled {om.name} for {options.soc_version}")
    return log_name


def run_atc(folder: Path, final: Path, manifest: Manifest, options: AtcOptions) -> AtcRecord:
    """Compile in ``folder`` (the export being built) and return what the manifest should record.

    ``final`` is where the folder will end up: the recorded commands name it, so they can be run later.
    Without atc (or with ``enabled=False``) the commands go to ``atc_command.sh`` (the full graph's
    first, then the static pair's, one a line) and one plain line on stderr says so.
    """
    graphs = manifest.static_graphs
    later = {g: shlex.join(atc_command(final.resolve(), manifest, options, graph=g)) for g in ["full", *graphs]}
    record = AtcRecord(options.soc_version, later["full"], static={g: AtcStatic(later[g]) for g in graphs})
    executable = options.executable() if options.enabled else None
    if executable is None:
        (folder / "atc_command.sh").write_text("".join(f"{c}\n" for c in later.values()), encoding="utf-8")
        reason = "atc is disabled" if not options.enabled else "atc is not on PATH"
        # Expected on any host without CANN: said once, plainly, not as a warning.
        print(f"{reason}: compile for {options.soc_version} later with {final / 'atc_command.sh'}", file=sys.stderr)
        return record
    record.log = _compile(folder, final, manifest, options, executable, "full")
    record.om = f"{om_stem(options.soc_version)}.om"
    for g in graphs:
        log_name = _compile(folder, final, manifest, options, executable, g)
        record.static[g] = AtcStatic(later[g], f"{om_stem(options.soc_version, g)}.om", log_name)
    return record
