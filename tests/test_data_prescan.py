"""The pre-scan finds bad files before training, counts what it read, and names the first bad file."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dasslab.data import prescan as P
from dasslab.data.folder import FolderDomain
from dasslab.errors import DataError

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=none"]


def _folder(root: Path, n: int = 6, ext: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    (root / "source" / "images").mkdir(parents=True)
    (root / "source" / "labels").mkdir()
    (root / "classes.txt").write_text("background\na\nb\n")
    for i in range(n):
        image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "source" / "images" / f"{i}{ext}")
        Image.fromarray(rng.integers(0, 3, (16, 24), dtype=np.uint8)).save(root / "source" / "labels" / f"{i}.png")
    return root


def _truncate(path: Path, keep: int = 80) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_clean_split_is_counted(tmp_path):
    root = _folder(tmp_path / "d")
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(root / "source" / "labels" / "4.png")  # smaller label
    scan = P.scan_split(FolderDomain(root, "source"), "source")
    assert (scan.samples, scan.labels, scan.images_read, scan.labels_read) == (6, 6, 6, 6)
    assert scan.label_resized == 1 and scan.image_sizes == {"16x24": 6}


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_every_truncated_image_is_found_and_counted(tmp_path, ext):
    root = _folder(tmp_path / "d", ext=ext)
    for i in (1, 3):
        _truncate(root / "source" / "images" / f"{i}{ext}", keep=200)
    with pytest.raises(DataError, match=rf"1{ext}.*\(2 of 6 samples of dataset.source are bad\)"):
        P.scan_split(FolderDomain(root, "source"), "source")


def test_label_values_outside_the_classes_are_found(tmp_path):
    root = _folder(tmp_path / "d")
    Image.fromarray(np.full((16, 24), 9, np.uint8)).save(root / "source" / "labels" / "2.png")
    with pytest.raises(DataError, match=r"2\.png: label values \{9\} outside \[0, 3\)"):
        P.scan_split(FolderDomain(root, "source"), "source")


def test_headers_mode_finds_a_truncated_png_without_decoding_pixels(tmp_path):
    root = _folder(tmp_path / "d")
    _truncate(root / "source" / "images" / "5.png")
    with pytest.raises(DataError, match=r"5\.png: cannot decode image"):
        P.scan_split(FolderDomain(root, "source"), "source", mode="headers")


def test_a_file_changed_after_a_scan_is_read_again(tmp_path):
    root = _folder(tmp_path / "d")
    P.scan_datasets({"source": FolderDomain(root, "source")})
    _truncate(root / "source" / "images" / "0.png")
    with pytest.raises(DataError, match=r"0\.png"):
        P.scan_datasets({"source": FolderDomain(root, "source")})


def test_a_stage_scans_what_it_reads(compose, digits_data_dir):
    cfg = compose(*SMOKE, "stage=source")
    assert P.splits_for(cfg) == ["source", "target_val"]
    report = P.prescan(cfg)
    assert [(s.key, s.samples) for s in report.splits] == [("source", 16), ("target_val", 16)]  # smoke limits
    check = compose(*SMOKE, "stage=check", "data.limit_train=null", "data.limit_val=null")
    keys = P.splits_for(check)
    assert set(keys) == {"source", "source_val", "target", "target_train_labeled", "target_val"}
    sizes = {s.key: s.samples for s in P.prescan(check).splits}
    assert sizes == {"source": 120, "source_val": 40, "target": 120, "target_train_labeled": 120, "target_val": 40}


def test_a_corrupt_target_val_image_fails_before_training(compose, digits_data_dir, tmp_path):
    from dasslab.commands.train import run

    data = tmp_path / "data"
    shutil.copytree(digits_data_dir / "digits", data / "digits")
    bad = sorted((data / "digits" / "target_val" / "images").glob("*.png"))[3]
    _truncate(bad)
    out = tmp_path / "run"
    cfg = compose(*SMOKE, "stage=source", f"dataset.root={data / 'digits'}", f"paths.output_dir={out}")
    with pytest.raises(DataError, match=bad.name):
        run(cfg)
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_check_stage_writes_its_report(compose, tmp_path):
    import json

    from dasslab.commands.train import run

    out = tmp_path / "check"
    run(compose(*SMOKE, "stage=check", f"paths.output_dir={out}"))
    report = json.loads((out / "prescan.json").read_text())
    assert report["mode"] == "full" and {s["key"] for s in report["splits"]} >= {"source", "target", "target_val"}
