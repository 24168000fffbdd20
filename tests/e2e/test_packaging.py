"""What an install puts into site-packages: ``lit_nanogpt`` alone, the callbacks inside it."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, run, run_python

IMPORTS = "from lit_nanogpt.callbacks import OnnxExport; print(OnnxExport.__module__)"


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python("-c", code, cwd=cwd, env=env, inherit_env=not env)


def test_installed_callbacks_live_in_the_project_namespace(tmp_path: Path) -> None:
    """The environment's install (editable in CI): no top-level ``callbacks`` from outside the checkout."""
    assert _python(IMPORTS, tmp_path).stdout.strip() == "lit_nanogpt.callbacks.export"
    failed = _python("import callbacks", tmp_path)
    assert failed.returncode != 0 and "No module named 'callbacks'" in failed.stderr


@pytest.mark.slow
def test_wheel_holds_only_lit_nanogpt(tmp_path: Path) -> None:
    """``pip install .`` builds this wheel: one top-level package, the callbacks folder inside it."""
    # Built from a copy of the tracked files, so setuptools' build/ folder never lands in the checkout.
    src = tmp_path / "src"
    tracked = run(["git", "ls-files"], cwd=ROOT, check=True).stdout
    for name in tracked.split():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    run_python("-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src), check=True)
    (wheel,) = tmp_path.glob("lit_nanogpt-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["lit_nanogpt"]
    assert "lit_nanogpt/callbacks/export.py" in names
    packages = {f"lit_nanogpt/{p.parent.relative_to(ROOT / 'lit_nanogpt')}/__init__.py".replace("/./", "/")
                for p in (ROOT / "lit_nanogpt").rglob("__init__.py")}  # fmt: skip
    assert packages <= set(names), packages - set(names)  # pyproject's package list misses none
    assert "lit_nanogpt/fit_defaults.yaml" in names
    assert {n.split("/")[0] for n in names if not n.endswith(".dist-info/" + n.rsplit("/", 1)[-1])} == {"lit_nanogpt"}
    # Installed from the wheel alone, away from the checkout.
    site = tmp_path / "site"
    run_python("-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel), check=True)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    code = f"import lit_nanogpt; assert lit_nanogpt.__file__.startswith({str(site)!r}); " + IMPORTS
    done = _python(code, tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lit_nanogpt.callbacks.export"
    assert _python("import callbacks", tmp_path, **env).returncode != 0
