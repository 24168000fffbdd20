"""File safety, in one place: files and folders written all or nothing, hashing, and the leftovers an
interrupted write can leave (and their clean-up).

Every write of a checkpoint, corpus cache, export folder or text file goes through ``atomic_open`` or
``replacing``: the new content is built beside its target under a leftover name and renamed into place
only once complete, so a crash, a full disk or a kill never leaves a half-written file where a good
one was. Only the standard library here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"
"""``atomic_open``'s temporary file: ``.NAME.<random>.tmp`` beside ``NAME``."""
PARTIAL = ".partial-"
"""``replacing``'s new folder: ``.NAME.partial-<random>`` beside ``NAME``."""
OLD = ".old-"
"""``replacing``'s previous folder while the new one is renamed in: ``.NAME.old-<pid>``."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def target_of(leftover: Path) -> Path | None:
    """The file or folder an interrupted write's leftover was for (``.export.partial-x1`` -> ``export``)."""
    name = leftover.name
    if not name.startswith("."):
        return None
    for marker in (PARTIAL, OLD):
        if marker in name:
            return leftover.with_name(name[1:].rsplit(marker, 1)[0])
    if name.endswith(TMP_SUFFIX) and name.count(".") >= 3:
        return leftover.with_name(name[1:].rsplit(".", 2)[0])
    return None


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` sets it, racing threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once the ``with`` block completes: all or nothing.

    The temporary file lives beside ``path``, so the final ``os.replace`` is a rename on one filesystem.
    It gets the permissions a plain ``open`` would (``mkstemp`` makes it 0600, unreadable to a team).
    An ``OSError`` without a file name (a full disk while writing) is raised again naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise _naming(e, path.parent) from e
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        # torch.save's zip writer turns a failed write into a RuntimeError while closing; the OSError is its context.
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None and isinstance(e, Exception):
            raise _naming(cause, path) from e
        raise


def _naming(error: OSError, path: Path) -> OSError:
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror or str(error), str(path))


@contextmanager
def replacing(target: Path, copy: bool = False) -> Iterator[Path]:
    """A fresh folder beside ``target`` (a copy of it with ``copy=True``) that replaces it when the block succeeds.

    If the block raises, the new folder is removed and ``target`` is left exactly as it was; the old
    ``target`` is removed only once the new one is in its place.
    """
    if target.is_file():
        raise ValueError(f"{target} is a file, not a folder: pass a folder path")
    target.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{PARTIAL}"))
    new.chmod(0o777 & ~umask())  # mkdtemp makes it 0700; the export should be as readable as any new folder
    try:
        if copy:
            shutil.copytree(target, new, dirs_exist_ok=True)
        yield new
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}{OLD}{os.getpid()}")
            target.rename(old)
        try:
            new.rename(target)
        except BaseException:
            if old is not None:
                old.rename(target)
            raise
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_leftovers(folders: Iterable[Path], folder_targets: Iterable[str] = ()) -> list[Path]:
    """Remove what interrupted writes left in ``folders``: every ``atomic_open`` temporary file, and the
    ``replacing`` folders of the targets named in ``folder_targets``. Returns what was removed.

    Only call it where no writer is active (a fit holds its run folder's lock while it calls this).
    """
    targets = set(folder_targets)
    removed = []
    for folder in sorted(set(folders)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            target = target_of(path)
            if target is None:
                continue
            if path.is_dir() and target.name in targets and (PARTIAL in path.name or OLD in path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            elif path.is_file() and path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
