"""nanoGPT's own sample.py runs lit-nanogpt's ``export --format nanogpt``, set up as the export's message says."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from lit_nanogpt.checkpoint import import_nanogpt
from lit_nanogpt.commands import main
from tests.helpers import NANOGPT_BABY, ROOT, run

NANOGPT = ROOT.parent / "shared" / "reference" / "nanogpt"


@pytest.mark.skipif(not (NANOGPT / "sample.py").is_file(), reason=f"needs nanoGPT's code in {NANOGPT}")
def test_nanogpts_sample_py_prints_the_greedy_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((NANOGPT_BABY / "expected.json").read_text())
    ckpt = import_nanogpt(NANOGPT_BABY / "ckpt.pt", NANOGPT_BABY / "meta.pkl", tmp_path / "baby.ckpt")
    assert main(["export", "--format=nanogpt", f"--checkpoint={ckpt}", f"--out={tmp_path / 'out-baby'}"]) == 0
    message = capsys.readouterr().err
    nanogpt = shutil.copytree(NANOGPT, tmp_path / "nanogpt")  # sample.py reads data/ from its working folder
    for path in [nanogpt, *nanogpt.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    # The message's own commands, with this interpreter; top_k 1 makes sample.py's draw greedy.
    steps = message.split("in nanoGPT's folder: ", 1)[1].strip()
    assert "data/out-baby/meta.pkl" in steps
    steps = steps.replace("python sample.py", f"{shlex.quote(sys.executable)} sample.py")
    options = "--device=cpu --dtype=float32 --num_samples=1 --max_new_tokens=200 --top_k=1 --start=ROMEO:"
    # One thread: OpenMP's spinning threads slow this small model tenfold on a busy 2-core machine.
    done = run(["bash", "-c", f"{steps} {options}"], cwd=nanogpt, env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading meta from data/out-baby/meta.pkl" in done.stdout
    sample = done.stdout.split("Loading meta from data/out-baby/meta.pkl...\n", 1)[1]
    assert sample == expected["greedy"] + "\n---------------\n"
