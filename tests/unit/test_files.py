"""lit_nanogpt.files: writes that are all or nothing, and the clean-up of what an interrupted one leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_nanogpt.files import atomic_open, clean_leftovers, replacing, sha256, target_of


def test_a_failed_write_leaves_the_old_file_and_no_leftover(tmp_path: Path) -> None:
    good = tmp_path / "best.ckpt"
    good.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_open(good) as f:
        f.write(b"half")
        raise RuntimeError("killed mid-write")
    assert good.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]
    with atomic_open(good) as f:
        f.write(b"new")
    assert good.read_bytes() == b"new"


def test_a_failed_folder_swap_leaves_the_old_folder(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "a").write_text("old")
    with pytest.raises(RuntimeError), replacing(export) as new:
        (new / "a").write_text("new")
        raise RuntimeError("export failed")
    assert (export / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with replacing(export) as new:
        (new / "b").write_text("new")
    assert sorted(p.name for p in export.iterdir()) == ["b"]
    assert sha256(export / "b") == "11507a0e2f5e69d5dfa40a62a1bd7b6ee57e6bcd85c67c9b8431b36fff21c437"  # sha256(b"new")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"), replacing(tmp_path / "file"):
        pass


def test_leftovers_are_named_by_their_target_and_only_they_are_cleaned(tmp_path: Path) -> None:
    leftovers = [".best.ckpt.k2j3.tmp", ".export.partial-x1y2", ".export.old-4242"]
    kept = ["best.ckpt", ".lit-nanogpt.lock", ".other.partial-x1", "notes.tmp"]
    for name in leftovers + kept:
        (tmp_path / name).mkdir() if "partial" in name or ".old-" in name else (tmp_path / name).write_text("")
    assert [target_of(tmp_path / n) for n in leftovers] == [tmp_path / "best.ckpt", *[tmp_path / "export"] * 2]
    assert target_of(tmp_path / "best.ckpt") is None and target_of(tmp_path / ".lit-nanogpt.lock") is None
    removed = clean_leftovers([tmp_path], folder_targets={"export"})
    assert sorted(p.name for p in removed) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)  # another folder's partial stays
