"""Bad input gets ONE line ``error: …`` naming the file or setting, exit status 2, no traceback.

The cases run through the real entry points (``dasslab.commands.train:main`` etc., i.e. Hydra + the
wrapper of ``dasslab/commands/app.py``) in one child process, so the slow imports are paid once.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SMOKE = ["debug=smoke", "logger=none"]

DRIVER = r"""
import contextlib, importlib, io, json, sys
cases = json.loads(sys.argv[1])
results = {}
for name, module, argv in cases:
    main = importlib.import_module(module).main
    sys.argv = [module] + argv
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # a bug: reported as such
            code = f"raised {type(e).__name__}: {e}"
    results[name] = {"code": code, "stderr": err.getvalue()}
print("RESULTS" + json.dumps(results))
"""


def _folder(root: Path, classes=("background", "a", "b")) -> Path:
    """A valid ``dataset=folder`` tree: 4 labeled source, 4 target, 4 labeled target-val images."""
    rng = np.random.default_rng(0)
    (root).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for domain, labeled in (("source", True), ("target", False), ("target_val", True)):
        (root / domain / "images").mkdir(parents=True)
        if labeled:
            (root / domain / "labels").mkdir()
        for i in range(4):
            image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / domain / "images" / f"{i}.png")
            if labeled:
                lab = rng.integers(0, len(classes), (16, 16), dtype=np.uint8)
                Image.fromarray(lab).save(root / domain / "labels" / f"{i}.png")
    return root


def _variant(base: Path, name: str, tmp: Path, edit) -> Path:
    root = tmp / name
    shutil.copytree(base, root)
    edit(root)
    return root


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    good = _folder(tmp / "good")
    folder = ["dataset=folder", "dataset.image_size=[16,16]", "dataset.crop_size=[16,16]"]
    fake_segmenter = tmp / "segmenter.ckpt"
    torch.save({"hyper_parameters": {"backbone": {"name": "small"}}, "state_dict": {}}, fake_segmenter)
    (tmp / "afile").write_text("not a folder")

    def no_label(r):
        (r / "source" / "labels" / "2.png").unlink()

    def ids_outside(r):
        Image.fromarray(np.full((16, 16), 7, np.uint8)).save(r / "source" / "labels" / "1.png")

    def corrupt(r):
        p = r / "target_val" / "images" / "3.png"
        p.write_bytes(p.read_bytes()[:60])

    def empty(r):
        for p in (r / "target" / "images").iterdir():
            p.unlink()

    roots = {n: _variant(good, n, tmp, e) for n, e in
             [("no_label", no_label), ("ids", ids_outside), ("corrupt", corrupt), ("empty", empty)]}
    train, translate, evaluate = "dasslab.commands.train", "dasslab.commands.translate", "dasslab.commands.eval"
    src = ["stage=source", *SMOKE]
    # name -> (module, argv, what the one line must name)
    cases = {
        "missing root": (train, src + folder + [f"dataset.root={tmp / 'nope'}"], "dataset.root="),
        "image without label": (train, src + folder + [f"dataset.root={roots['no_label']}"], "2.png"),
        "ids outside classes.txt": (train, src + folder + [f"dataset.root={roots['ids']}"], "1.png"),
        "corrupt PNG": (train, src + folder + [f"dataset.root={roots['corrupt']}"], "3.png"),
        "empty split": (train, ["stage=diffusion", *SMOKE] + folder + [f"dataset.root={roots['empty']}"], "target"),
        "classes.txt mismatch": (train, src + folder + [f"dataset.root={good}", "dataset.num_classes=5"],
                                 "num_classes"),
        "wrong checkpoint kind": (translate, SMOKE + [f"diffusion_ckpt={fake_segmenter}"], "diffusion_ckpt="),
        "depth > T": (translate, SMOKE + ["translate.depths=[5000]"], "5000"),
        "unwritable output": (train, src + [f"paths.output_dir={tmp / 'afile' / 'run'}"], "afile"),
        "negative lambda": (train, src + ["guidance=sgg", "guidance.scale=-1"], "guidance.scale"),
        "pretrained offline": (train, src + ["backbone=deeplabv2_r101", "backbone.pretrained=true",
                                             "dataset.generate.n_train=120", "dataset.generate.n_val=40"],
                               "backbone."),
        "missing resume checkpoint": (train, src + [f"resume={tmp / 'none.ckpt'}"], "resume="),
        "eval without ckpt": (evaluate, [], "ckpt"),
        "unknown stage": (train, ["stage=nonexistent"], "stage"),
    }
    return cases


@pytest.mark.slow
def test_every_bad_input_prints_one_line_naming_it(bad_inputs, tmp_path, digits_data_dir):
    env = dict(os.environ, DASSLAB_ROOT=str(tmp_path), DASSLAB_DATA=str(digits_data_dir), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DASSLAB_DEBUG", None)
    payload = json.dumps([[name, module, argv] for name, (module, argv, _) in bad_inputs.items()])
    proc = subprocess.run([sys.executable, "-c", DRIVER, payload], env=env, capture_output=True, text=True,
                          timeout=900)
    assert "RESULTS" in proc.stdout, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS", 1)[1])
    table = []
    for name, (_, _, names) in bad_inputs.items():
        r = results[name]
        errors = [line for line in r["stderr"].splitlines() if line.startswith("error: ")]
        table.append(f"{name}: {errors[0] if errors else r['stderr'][-300:]!r}")
        assert r["code"] == 2, (name, r)
        assert len(errors) == 1 and "Traceback" not in r["stderr"], (name, r["stderr"])
        assert names in errors[0], (name, errors[0])
    print("\n".join(table))


def test_the_console_command_exits_2_with_one_line_and_a_traceback_only_on_request(tmp_path):
    env = dict(os.environ, DASSLAB_ROOT=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DASSLAB_DEBUG", None)
    cmd = [sys.executable, "-m", "dasslab.commands.train", "stage=source", "debug=smoke", "guidance=sgg",
           "guidance.scale=-1", f"paths.output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: guidance.scale=-1")
    debug = subprocess.run(cmd, env=dict(env, DASSLAB_DEBUG="1"), capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
