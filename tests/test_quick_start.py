"""Every command of the README's quick start, at smoke size, from a fresh clone of the repository.

The clone (``git clone`` of this checkout: what is committed) runs with this test's interpreter and virtual
environment (its console scripts, ``make`` with ``VENV`` pointing at it and the install stamp taken as done);
``PYTHONPATH`` makes the clone's own ``dasslab`` and ``conf/`` the ones imported. Each line of the quick start
is run as written plus what makes it tiny (``debug=smoke``, a small digits cache), with the placeholders
``RUN`` (the run folder an earlier line printed) and the own pair ``mypair`` filled in.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
DIGITS = ["dataset.generate.n_train=120", "dataset.generate.n_val=40"]
SMOKE = ["debug=smoke", "data.limit_val=8"]


def quick_start() -> list[str]:
    """The commands of the README's quick-start block (comments dropped)."""
    text = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.split(r"\s#\s", line)[0].strip() for line in block.splitlines() if line.strip()]


def make_pair(root: Path) -> None:
    """A tiny folder pair: 2 classes, 32x32 images, labelled source and target-val, unlabelled target."""
    rng = np.random.default_rng(0)
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    for domain, labelled in (("source", True), ("target", False), ("target_val", True)):
        for i in range(8):
            img = root / domain / "images" / f"{i}.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img)
            if labelled:
                lab = root / domain / "labels" / f"{i}.png"
                lab.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8)).save(lab)


def run_dir(stdout: str) -> Path:
    return Path(re.findall(r"run directory: (\S+)", stdout)[-1])


@pytest.mark.slow
def test_every_quick_start_command_runs_from_a_fresh_clone(tmp_path, digits_data_dir):
    lines = quick_start()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    make_pair(clone / "mypair")
    (clone / "photos").mkdir()
    for i, (h, w) in enumerate([(40, 50), (32, 32)]):
        Image.fromarray(np.full((h, w, 3), 60 * i, np.uint8)).save(clone / "photos" / f"p{i}.png")
    env = {**os.environ, "PYTHONPATH": str(clone), "DASSLAB_DATA": str(digits_data_dir), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DASSLAB_ROOT", None)
    make = ["make", "-s", f"VENV={VENV}", "-o", f"{VENV}/.installed"]     # this venv, installed already
    done, runs = [], {}

    def sh(args: list[str], expect: int = 0) -> subprocess.CompletedProcess:
        import time

        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        print(f"{time.perf_counter() - t0:6.1f} s  {' '.join(args)[:150]}")
        assert proc.returncode == expect, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc

    for line in lines:
        words = shlex.split(line.replace("&& source .venv/bin/activate", ""))
        if words[:2] == ["make", "install"]:
            out = sh(["make", "-n", "install"]).stdout                 # what it would do; the venv exists
            assert "pip install" in out and "optuna" in out
        elif words[:2] == ["make", "demo"]:
            proc = sh([*make, "demo", f"ARGS={' '.join(SMOKE + DIGITS)}"])
            runs["demo"] = run_dir(proc.stdout)
            assert (runs["demo"] / "results.md").is_file() and "| full |" in (runs["demo"] / "results.md").read_text()
        elif words[0] == "dasslab-train" and "dataset=folder" in words:
            proc = sh([*words, *SMOKE])
            runs["pair"] = run_dir(proc.stdout)
            log = next(runs["pair"].glob("*.log")).read_text()
            assert "debug=smoke changes the run" in log and "they are resized" in log   # what smoke changes
            assert "weights_only` was not set" not in log                   # no note against safe loading
            assert "oracle: skipped" in proc.stdout                          # no target-train labels given
        elif words[0] in ("dasslab-eval", "dasslab-predict"):
            import json

            results = json.loads((runs["pair"] / "results.json").read_text())
            args = [w.replace("RUN", results["full"]["run_dir"]) for w in words]
            proc = sh(args)
            if words[0] == "dasslab-eval":
                out = run_dir(proc.stdout.replace("metrics: ", "run directory: ")).parent
                assert (out / "confusion_matrix.csv").is_file() and (out / "confusion_matrix.png").is_file()
            else:
                assert "2 segmented" in proc.stdout and len(list((clone / "predictions" / "labels").glob("*.png"))) == 2
        elif words[0] == "make" and words[1].startswith("reproduce-table"):
            proc = sh([*make, *words[1:]])
            assert "jobs per stage" in proc.stdout and "MISSING dataset.source.root=" in proc.stdout
        elif words[0] == "dasslab-train" and "hydra/launcher=slurm" in words:
            # no Slurm here: the experiment plans its jobs on the small digits data and submits nothing
            extra = ["pipeline.dry_run=true", "dataset=digits", *SMOKE, *DIGITS]
            if shutil.which("sbatch") is None:
                proc = sh([*words, *extra])
                assert "waits for" in proc.stdout or "source_only" in proc.stdout
        elif words[0] == "dasslab-train" and "-m" in words:
            proc = sh([*words, *SMOKE, *DIGITS, "hydra.sweeper.n_trials=2"])
            sweeps = sorted((clone / "outputs" / "demo").glob("*/optimization_results.yaml"))
            assert sweeps and "best_value" in sweeps[-1].read_text()
        elif words[0] == "dasslab-train" and any(w.startswith("experiment=table") for w in words):
            # the paper's data is not here: one line naming the missing folder; then the row on digits
            proc = sh(words, expect=2)
            assert proc.stderr.startswith("error: dataset.source.root=/data/gta5: folder not found")
            row = [w for w in words if not w.startswith("dataset.")]
            proc = sh([*row, "dataset=digits", *SMOKE, *DIGITS])
            assert "mIoU" in proc.stdout
        else:
            pytest.fail(f"a quick-start line this test does not know: {line}")
        done.append(line)
    assert done == lines and len(done) >= 8
