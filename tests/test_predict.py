"""``dasslab-predict``: a folder of mixed-size images (one corrupt) segmented by a smoke source model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dasslab.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv", "augment=none"]
SIZES = {"a.png": (40, 50), "sub/b.jpg": (77, 33), "c.png": (20, 20)}  # (H, W); smoke trains at 32x64


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory, digits_data_dir) -> Path:
    """The checkpoint of a `stage=source debug=smoke` run (with the run's .hydra/config.yaml beside it)."""
    from hydra import compose, initialize_config_dir

    from dasslab.commands.train import run

    root = tmp_path_factory.mktemp("predict_runs")
    os.environ["DASSLAB_DATA"] = str(digits_data_dir)
    os.environ["DASSLAB_ROOT"] = str(root)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", SMOKE + ["stage=source", f"paths.output_dir={root / 'source'}"])
    run(cfg)
    return root / "source" / "checkpoints" / "last.ckpt"


@pytest.fixture
def images(tmp_path) -> Path:
    """Three readable images of different sizes and modes, a file that is not an image, a truncated PNG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    for name, (h, w) in SIZES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert("L") if name == "c.png" else Image.fromarray(arr)
        img.save(root / name)
    (root / "broken.png").write_bytes(b"this is not an image")
    good = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 3])
    return root


def predict_cfg(ckpt, input_dir, output_dir, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("predict", [f"ckpt={ckpt}", f"input={input_dir}", f"output={output_dir}", "num_workers=0",
                                   "progress=false", *overrides])


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_predicts_every_readable_image_at_its_size_and_reports_the_bad_ones(source_ckpt, images, tmp_path):
    from dasslab.checkpoints import load_segmenter
    from dasslab.data.labels import palette
    from dasslab.export.predictions import run
    from dasslab.segmentation.inference import upsample_to
    from dasslab.visualize import overlay

    out = tmp_path / "out"
    summary = run(predict_cfg(source_ckpt, images, out))
    assert summary.written == 3 and summary.existing == 0
    assert set(summary.failed) == {str(images / "broken.png"), str(images / "truncated.png")}
    assert all(f"{p}: " in msg for p, msg in summary.failed.items())  # each message names its file
    record = json.loads((out / "predict.json").read_text())
    assert record["size"] == [32, 64] and "config" in record["size_from"]  # the training resolution

    module = load_segmenter(source_ckpt)
    k = len(module.class_names)
    assert (out / "classes.txt").read_text().splitlines() == list(module.class_names)
    for name, (h, w) in SIZES.items():
        rel = Path(name).with_suffix(".png")
        label, color, over = read(out / "labels" / rel), read(out / "color" / rel), read(out / "overlay" / rel)
        assert label.shape == (h, w) and color.shape == over.shape == (h, w, 3)
        assert label.max() < k
        # the evaluation path: resize to the training size, predict, logits back to the image size
        image = cv2.cvtColor(cv2.imread(str(images / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(cv2.resize(image, (64, 32), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)
        with torch.no_grad():
            logits = module.predict_batch((x.float()[None] / 127.5) - 1)
        expected = upsample_to(logits, (h, w)).argmax(1)[0].numpy()
        assert (label == expected).mean() > 0.999
        np.testing.assert_array_equal(color, palette(k)[label])
        np.testing.assert_array_equal(over, overlay(image, label, k, 0.5))


def test_rerun_does_only_what_is_missing(source_ckpt, images, tmp_path):
    from dasslab.export.predictions import run

    out = tmp_path / "out"
    run(predict_cfg(source_ckpt, images, out))
    kept = {p: p.stat().st_mtime_ns for p in (out / "labels").rglob("*.png")}
    (out / "overlay" / "sub" / "b.png").unlink()  # as if interrupted before its last file
    (out / "labels" / "a.png").write_bytes(b"")  # a kept file is never rewritten by a rerun
    summary = run(predict_cfg(source_ckpt, images, out))
    assert (summary.written, summary.existing) == (1, 2)
    assert (out / "overlay" / "sub" / "b.png").is_file()
    assert (out / "labels" / "a.png").read_bytes() == b""
    assert (out / "labels" / "c.png").stat().st_mtime_ns == kept[out / "labels" / "c.png"]


def test_slide_with_a_window_of_the_training_size_equals_whole(source_ckpt, images, tmp_path):
    from dasslab.export.predictions import run

    run(predict_cfg(source_ckpt, images, tmp_path / "whole", "outputs=[labels]"))
    run(predict_cfg(source_ckpt, images, tmp_path / "slide", "outputs=[labels]", "mode=slide", "crop=[32,64]"))
    for name in SIZES:
        rel = Path(name).with_suffix(".png")
        np.testing.assert_array_equal(read(tmp_path / "whole" / "labels" / rel),
                                      read(tmp_path / "slide" / "labels" / rel))
    assert not (tmp_path / "whole" / "color").exists()


def test_resolution_falls_back_to_the_size_setting(source_ckpt, tmp_path):
    from dasslab.export.predictions import training_resolution

    alone = tmp_path / "model.ckpt"  # a checkpoint moved away from its run directory
    shutil.copy(source_ckpt, alone)
    assert training_resolution(source_ckpt, {}).size == [32, 64]
    assert training_resolution(source_ckpt, {}).crop == [32, 32]
    assert training_resolution(alone, {}).size is None  # unknown: each image's own size
    assert training_resolution(alone, {}, size=[16, 24]).size == [16, 24]
    assert training_resolution(source_ckpt, {}, size="native").size is None
    assert training_resolution(alone, {"image_size": [8, 8]}).size == [8, 8]
    with pytest.raises(ConfigError, match=r"^size=\[0, 3\]"):
        training_resolution(alone, {}, size=[0, 3])


def test_bad_settings_are_one_line_errors(source_ckpt, images, tmp_path):
    from dasslab.export.predictions import run

    with pytest.raises(ConfigError, match=r"^input=.*nowhere: folder not found"):
        run(predict_cfg(source_ckpt, tmp_path / "nowhere", tmp_path / "o1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        run(predict_cfg(source_ckpt, empty, tmp_path / "o2"))
    with pytest.raises(ConfigError, match=r"^outputs="):
        run(predict_cfg(source_ckpt, images, tmp_path / "o3", "outputs=[labels,heatmap]"))


def test_cli_reports_the_corrupt_image_on_one_line_and_exits_1(source_ckpt, images, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "dasslab.commands.predict", f"ckpt={source_ckpt}", f"input={images}",
                           f"output={out}", "num_workers=1"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: {images / 'broken.png'}: cannot decode image" in proc.stderr
    assert "3 segmented, 0 already done, 2 failed" in proc.stdout
    assert len(list((out / "labels").rglob("*.png"))) == 3
