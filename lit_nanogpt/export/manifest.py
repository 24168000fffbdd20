"""``manifest.json``, which makes an export folder self-contained, and the atomic swap that writes the folder.

One ``Manifest`` writes, reads and verifies it: the sha256 of every file, each graph's inputs,
outputs and ops, the vocabulary, ``block_size``, the model's shape, the opset and the atc record.

``format_version`` 3 (this one): the decode graphs take a position per row (``pos`` (B,)) and
``decode.onnx`` returns the new token's keys and values alone, so rows at different positions share
a step. Version 2 had the same keys with one position for all rows (a decode graph without ``pos``,
returning the whole cache); version 1 (before the typed manifest) left ``atc`` out when atc was not
asked for. Both read unchanged, and generate one row at a time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lit_nanogpt.files import sha256
from lit_nanogpt.model import GPTConfig

FORMAT = "lit-nanogpt-onnx"
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
GRAPHS = ("full", "prefill", "decode", "prefill_static", "decode_static")
"""The graphs of an export folder, each also as ``<name>_int8`` when int8 copies are written."""
STATIC_GRAPHS = ("prefill_static", "decode_static")
"""The fixed-shape KV-cache pair that atc and the CANN provider compile."""


def past_names(n_layer: int, prefix: str) -> list[str]:
    """The cache inputs (``prefix`` ``past``) or outputs (``present``) of the KV-cache graphs, per layer."""
    return [f"{prefix}_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


@dataclass
class AtcStatic:
    """What the manifest keeps of compiling one graph of the static pair."""

    command: str
    """The command line, with the export folder's final path."""
    om: str | None = None
    """The compiled file's name, ``None`` when atc did not run."""
    log: str | None = None
    """atc's log file's name, ``None`` when atc did not run."""


@dataclass
class AtcRecord:
    """What the manifest keeps of the atc step."""

    soc_version: str
    command: str
    """The full graph's command line, with the export folder's final path, to compile it later by hand."""
    om: str | None = None
    """The full graph's compiled file's name, ``None`` when atc did not run."""
    log: str | None = None
    """atc's log file's name, ``None`` when atc did not run."""
    static: dict[str, AtcStatic] = field(default_factory=dict)
    """Per graph of the static pair (``prefill_static``, ``decode_static``), its command, .om and log;
    empty for an export without the pair."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AtcRecord:
        static = {name: AtcStatic(**r) for name, r in d.get("static", {}).items()}
        return cls(**{**d, "static": static})


@dataclass
class TensorSpec:
    """One input or output of a graph."""

    name: str
    shape: list[int | str]
    """Sizes, or the names of dynamic axes (``"batch"``, ``"seq"``, ...)."""
    dtype: str
    """numpy's name for it: ``int64``, ``float32``."""


@dataclass
class Graph:
    """One ``.onnx`` file of the folder."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: list[str]
    """Its op types, sorted."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graph:
        return cls(
            file=d["file"],
            inputs=[TensorSpec(**t) for t in d["inputs"]],
            outputs=[TensorSpec(**t) for t in d["outputs"]],
            ops=list(d["ops"]),
        )


@dataclass
class Manifest:
    """What an export folder holds; ``write`` and ``read`` are the only way in and out of ``manifest.json``."""

    vocab: str | dict[str, Any]
    """The tokenizer's plain form (``lit_nanogpt.text.Tokenizer.to_plain``): characters in id order as a string,
    other tokenizers as a dict."""
    batch_size: int
    """Batch of the full-context graph and of the static pair (rows held at once on Ascend)."""
    dynamic_dims: list[int] | None
    """The lengths atc compiles the full graph for; ``None``: the full graph has a fixed length."""
    model: GPTConfig
    """The network the graphs were exported from (``block_size`` is the graphs' longest context)."""
    opset: int
    exporter: str
    source: str | None
    """Where the weights came from."""
    max_abs_diff: dict[str, float]
    """Per graph, the max abs difference of onnxruntime's fp32 logits from PyTorch's."""
    graphs: dict[str, Graph]
    """``full``, ``prefill``, ``decode``, and with int8 ``full_int8``, ... ."""
    atc: AtcRecord | None = None
    """The atc step's outcome; ``None`` when atc was left out."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of every other file of the folder, filled in by ``write``."""

    @property
    def block_size(self) -> int:
        return self.model.block_size

    @property
    def static_graphs(self) -> list[str]:
        """The static pair's graphs this folder holds (none for an export from before them)."""
        return [g for g in STATIC_GRAPHS if g in self.graphs]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """Format versions 1 to 3; raises ``KeyError``/``TypeError``/``ValueError`` on anything else."""
        atc = d.get("atc")  # version 1 leaves it out when atc was not asked for
        model = dict(d["model"])
        if d.get("format_version", 1) == 1:  # the shape fields only, block_size beside them
            model.update(block_size=int(d["block_size"]), dropout=0.0)
        manifest = cls(
            vocab=d["vocab"],
            batch_size=int(d["batch_size"]),
            dynamic_dims=None if d["dynamic_dims"] is None else [int(x) for x in d["dynamic_dims"]],
            model=GPTConfig(**model),
            opset=int(d["opset"]),
            exporter=d["exporter"],
            source=d["source"],
            max_abs_diff={k: float(v) for k, v in d["max_abs_diff"].items()},
            graphs={name: Graph.from_dict(g) for name, g in d["graphs"].items()},
            atc=None if atc is None else AtcRecord.from_dict(atc),
            files=dict(d["files"]),
        )
        if not isinstance(manifest.vocab, str | dict):
            raise TypeError("vocab must be a string or a tokenizer's dict")
        return manifest

    def write(self, folder: Path) -> None:
        """Hash every file of ``folder`` into ``files``, then write ``folder/manifest.json``."""
        self.files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"
        (folder / MANIFEST).write_text(text, encoding="utf-8")

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest of an export folder, checked against the files beside it."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"export folder {folder} does not exist: pass a folder written by lit-nanogpt export"
            )
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {MANIFEST}: it is not a complete lit-nanogpt export; export again"
            )

        def damaged(e: Exception) -> ValueError:
            return ValueError(
                f"{path} is damaged or not a lit-nanogpt manifest ({type(e).__name__}: {e}); export again"
            )

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        except Exception as e:
            raise damaged(e) from None
        version = data.get("format_version", 1)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {version}: upgrade lit-nanogpt to read it")
        try:
            if version not in (1, 2, FORMAT_VERSION):
                raise ValueError(f"format_version {version!r} is not 1, 2 or {FORMAT_VERSION}")
            manifest = cls.from_dict(data)
        except Exception as e:
            raise damaged(e) from None
        manifest.verify(folder)
        return manifest

    def verify(self, folder: Path) -> None:
        """Every listed file is there with its sha256, and every graph is a listed file."""
        for name, digest in self.files.items():
            file = folder / name
            if not file.is_file():
                raise ValueError(f"{folder}: the manifest lists {name} but it is missing; export again")
            if sha256(file) != digest:
                raise ValueError(
                    f"{folder}: {name} does not match the manifest's sha256 (changed or damaged); export again"
                )
        for graph in self.graphs.values():
            if graph.file not in self.files:
                raise ValueError(f"{folder}: graph {graph.file} is not listed in the manifest's files; export again")
