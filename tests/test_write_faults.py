"""Write-time faults lose nothing (issue 31): a full disk or a file-size limit while saving is one line naming the
file, exit 2; what was saved before stays whole, and a rerun continues from it.

The faults are real: each command runs in a shell under ``ulimit -f`` (the kernel refuses to grow a file past
the limit: EFBIG, what a full disk's ENOSPC is to the writer). A checkpoint used to fail after training with an
88-line traceback, exit 1.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import diffusion_ckpt, error_lines, folder, folder_dataset, run_cases, segmenter_ckpt
from PIL import Image

from dasslab.errors import OutputError
from dasslab.utils.io import atomic_write_bytes


def limited(kb: int) -> list[str]:
    """A shell prefix that runs the command under a file-size limit of ``kb`` KiB."""
    return ["bash", "-c", f'ulimit -f {kb}; exec "$@"', "bash"]


def env(tmp: Path) -> dict:
    e = dict(os.environ, DASSLAB_ROOT=str(tmp), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
             NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline")
    for key in ("HYDRA_FULL_ERROR", "DASSLAB_DEBUG", "_DASSLAB_DEBUG_REQUESTED"):
        e.pop(key, None)
    return e


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_atomic_write_past_the_limit_keeps_the_old_file_and_names_the_new(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"miou": 1.0}')
    code = ("import sys; from dasslab.utils.io import atomic_write_bytes\n"
            "try:\n    atomic_write_bytes(sys.argv[1], b'x' * 8192)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([*limited(4), sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                          timeout=120, env=env(tmp_path))
    assert proc.stdout.startswith(f"OutputError {target}: cannot write (File too large, over the file-size limit")
    assert "no half-written file is left" in proc.stdout and proc.stdout.count("\n") == 1
    assert target.read_text() == '{"miou": 1.0}'                       # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left behind


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"afile/sub/x.json: cannot write \(Not a directory, a file stands where"):
        atomic_write_bytes(tmp_path / "afile" / "sub" / "x.json", b"{}")


@pytest.mark.slow
def test_a_full_disk_at_checkpoint_save_keeps_the_last_checkpoint_and_a_rerun_resumes(tmp_path):
    """Run 1 saves last.ckpt at step 2. Run 2 resumes to go to step 4 under a 1 MB file-size limit (a checkpoint
    is ~4 MB): saving fails. It must exit 2 with one line naming the file and the kept checkpoint, leave last.ckpt
    byte for byte as it was (loadable, step 2) and no temporary file. Run 3, with room, resumes from step 2."""
    good = folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    base = [sys.executable, "-m", "dasslab.commands.train", "stage=source", "debug=smoke", "logger=none",
            *folder(good), f"paths.output_dir={run}"]
    first = subprocess.run([*base, "segmenter.max_steps=2"], capture_output=True, text=True, timeout=600,
                           env=env(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    kept = digest(last)
    assert torch.load(last, weights_only=True)["global_step"] == 2

    second = subprocess.run([*limited(1024), *base, "segmenter.max_steps=4", "resume=auto"], capture_output=True,
                            text=True, timeout=600, env=env(tmp_path))
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert second.returncode == 2, second.stderr[-3000:]
    assert "Traceback" not in second.stderr and len(errors) == 1
    assert errors[0].startswith(f"error: {run / 'checkpoints' / 'step000004.ckpt'}: cannot write (File too large")
    assert f"the last complete checkpoint {last} is kept (resume=auto continues from it)" in errors[0]
    assert digest(last) == kept and torch.load(last, weights_only=True)["global_step"] == 2
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]   # no temporary file
    from dasslab.checkpoints import load_segmenter

    load_segmenter(last)

    third = subprocess.run([*base, "segmenter.max_steps=4", "resume=auto"], capture_output=True, text=True,
                           timeout=600, env=env(tmp_path))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in third.stdout + third.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 4


@pytest.mark.slow
def test_a_full_disk_while_saving_a_prediction_a_translation_or_a_result_is_one_line(tmp_path):
    """Under a 24 KB limit the commands' settings, records and logs fit; a 128 x 128 output image does not:
    a predicted overlay, a translated image, the evaluation's overlays.png. Each is one line naming the file,
    exit 2, and every file left behind is whole (each PNG decodes)."""
    big = folder_dataset(tmp_path / "big", n=2, size=128)
    ck = tmp_path / "ckpt"
    ck.mkdir()
    seg, diff = segmenter_ckpt(ck / "seg.ckpt"), diffusion_ckpt(ck / "diff.ckpt")
    out = tmp_path / "out"
    data = ["dataset=folder", f"dataset.root={big}", "dataset.image_size=[128,128]", "dataset.crop_size=[128,128]"]
    cases = {
        "prediction": ("dasslab.commands.predict", [f"ckpt={seg}", f"input={big / 'target' / 'images'}",
                                                    f"output={out / 'predict'}", "size=[16,16]", "num_workers=0",
                                                    "progress=false"], [out / "predict" / "overlay"], [out]),
        "translation": ("dasslab.commands.translate", ["debug=smoke", "logger=none", *data, f"diffusion_ckpt={diff}",
                                                       "translate.depths=[4]", "translate.num_steps=2",
                                                       "translate.variance=beta",   # given: no calibration first
                                                       f"paths.output_dir={out / 'translate'}"],
                        [out / "translate" / "translated" / "n0004" / "source" / "images"], [out]),
        # data.num_workers=0: under ulimit -f a loader worker's shared-memory file is limited too (no disk is)
        "result": ("dasslab.commands.eval", [*data[:3], f"ckpt={seg}", "data.num_workers=0",
                                             f"paths.output_dir={out / 'eval'}"],
                   [out / "eval" / "overlays.png"], [out]),
    }
    results = run_cases(cases, tmp_path, env=env(tmp_path), prefix=limited(24))
    for name, (_, _, where, _) in cases.items():
        r = results[name]
        errors = [line for line in error_lines(r["stderr"]) if line.startswith("error: ")]
        assert r["code"] == 2 and "Traceback" not in r["stderr"] and len(errors) == 1, (name, r["stderr"][-2000:])
        assert errors[0].startswith(f"error: {where[0]}") and "cannot write (File too large" in errors[0], errors[0]
    pngs = [p for p in out.rglob("*.png")]
    assert pngs and all(np.asarray(Image.open(p)).size for p in pngs)
    assert not [p for p in out.rglob(".*.tmp")]
