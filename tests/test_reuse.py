"""Nothing stale: an output is reused only for the same inputs; otherwise the run recomputes or refuses with
one line naming what changed -- never old results reported as new.

* ``dasslab-predict`` rerun into the same folder with another checkpoint (another class count, or the same
  classes and other weights) or another size: refused, the old files untouched; ``overwrite=true``
  redoes every image with the new model; an input image edited after its prediction is redone.
* ``dasslab-translate`` of another dataset with the same file names into the same folder, or of the same
  folder after a label was edited in place: refused before any image is written.
* ``stage=pipeline`` after a label was edited in place: the job runs again (another cache folder), it is
  not "reused" with the old mIoU.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import CONF_DIR, diffusion_ckpt, folder, folder_dataset, segmenter_ckpt
from PIL import Image

from dasslab.errors import StaleOutputError


@pytest.fixture
def compose(tmp_path, monkeypatch):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    monkeypatch.setenv("DASSLAB_ROOT", str(tmp_path))

    def _compose(*overrides, config: str = "train"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name=config, overrides=list(overrides))

    return _compose


def _edit_in_place(path: Path, array: np.ndarray) -> None:
    """Rewrite a file under its own name, as an editor does (its mtime moves on)."""
    stamp = max(path.stat().st_mtime_ns + 1, time.time_ns())      # later than anything written before
    Image.fromarray(array).save(path)
    os.utime(path, ns=(stamp, stamp))


def _images(root: Path) -> Path:
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            root / f"im{i}.png")
    return root


def _files(folder_: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder_)): p.read_bytes() for p in sorted(folder_.rglob("*.png"))}


# --------------------------------------------------------------------------- predict
def test_predict_with_another_checkpoint_refuses_then_overwrite_recomputes(tmp_path, compose, one_torch_thread):
    from dasslab.export.predictions import run

    seg3 = segmenter_ckpt(tmp_path / "seg3.ckpt")
    seg3b = segmenter_ckpt(tmp_path / "seg3b.ckpt", seed=1)                   # same classes, other weights
    seg5 = segmenter_ckpt(tmp_path / "seg5.ckpt", classes=("bg", "a", "b", "c", "d"))
    images, out = _images(tmp_path / "in"), tmp_path / "out"

    def predict(ckpt, *extra):
        return run(compose(f"ckpt={ckpt}", f"input={images}", f"output={out}", "size=[16,16]", "num_workers=0",
                           "progress=false", *extra, config="predict"))

    first = predict(seg3)
    assert (first.written, first.existing) == (3, 0)
    record = json.loads((out / "predict.json").read_text())
    assert record["complete"] and record["settings"]["checkpoint"]["sha256"]
    assert record["settings"]["classes"] == ["background", "a", "b"] and record["settings"]["size"] == [16, 16]
    assert record["settings"]["mode"] == "whole" and record["settings"]["input"] == str(images.resolve())
    again = predict(seg3)                                       # the same inputs: only what is missing
    assert (again.written, again.existing) == (0, 3)
    kept = _files(out)
    for other, changed in ((seg5, "checkpoint"), (seg3b, "checkpoint")):
        with pytest.raises(StaleOutputError, match=rf"^output={out}: its predictions were made with other settings "
                                                   rf"\({changed}: .*seg3\.ckpt \(sha256 .* there, "
                                                   rf".*{other.name} \(sha256 .*\) now"):
            predict(other)
    with pytest.raises(StaleOutputError, match=r"size: \[16, 16\] there, \[24, 24\] now"):
        run(compose(f"ckpt={seg3}", f"input={images}", f"output={out}", "size=[24,24]", "num_workers=0",
                    "progress=false", config="predict"))
    with pytest.raises(StaleOutputError, match=r"mode: 'whole' there, 'slide' now"):
        predict(seg3, "mode=slide", "crop=[8,8]")
    assert _files(out) == kept                                  # nothing was touched
    assert json.loads((out / "predict.json").read_text())["settings"] == record["settings"]

    redone = predict(seg5, "overwrite=true")                    # recomputed, every image, with the new model
    assert (redone.written, redone.existing) == (3, 0)
    assert (out / "classes.txt").read_text().splitlines() == ["bg", "a", "b", "c", "d"]
    assert json.loads((out / "predict.json").read_text())["settings"]["classes"] == ["bg", "a", "b", "c", "d"]
    labels = {p: np.asarray(Image.open(out / "labels" / p)) for p in ("im0.png", "im1.png", "im2.png")}
    assert all(lab.max() < 5 for lab in labels.values())

    _edit_in_place(images / "im1.png", np.zeros((20, 24, 3), np.uint8))   # an input edited after its prediction
    after_edit = predict(seg5)
    assert (after_edit.written, after_edit.existing) == (1, 2)
    moved = tmp_path / "elsewhere" / "model.ckpt"            # the same model under another path: still the same
    moved.parent.mkdir()
    moved.write_bytes(seg5.read_bytes())
    again = predict(moved)
    assert (again.written, again.existing) == (0, 3)


def test_predict_refuses_outputs_without_a_record(tmp_path, compose, one_torch_thread):
    from dasslab.export.predictions import run

    seg3 = segmenter_ckpt(tmp_path / "seg3.ckpt")
    images, out = _images(tmp_path / "in"), tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(out / "labels" / "im0.png")   # from an older version
    args = [f"ckpt={seg3}", f"input={images}", f"output={out}", "size=[16,16]", "num_workers=0", "progress=false"]
    with pytest.raises(StaleOutputError, match="holds predictions but no predict.json"):
        run(compose(*args, config="predict"))
    assert run(compose(*args, "overwrite=true", config="predict")).written == 3


# --------------------------------------------------------------------------- translate
def test_translate_of_other_data_with_the_same_names_refuses(tmp_path, compose, one_torch_thread):
    from dasslab.export.translations import export_translations

    a = folder_dataset(tmp_path / "A", seed=0)
    b = folder_dataset(tmp_path / "B", seed=1)        # the same file names 0.png … 3.png, other pixels
    ddpm = diffusion_ckpt(tmp_path / "ddpm.ckpt")
    out = tmp_path / "t"

    def translate(root):
        return export_translations(compose("debug=smoke", *folder(root), f"translate.diffusion_ckpt={ddpm}",
                                           "translate.depths=[2]", "translate.num_steps=1", "translate.limit=4",
                                           "translate.grid_images=0", f"translate.out_dir={out}"))

    translate(a)
    manifest = json.loads((out / "n0002" / "manifest.json").read_text())
    data = manifest["settings"]["data"]
    assert data["root"] == str(a.resolve()) and data["samples"] == 4 and data["labels"] == 4 and data["files"]
    assert manifest["settings"]["diffusion_ckpt"]["sha256"]
    kept = _files(out)
    translate(a)                                      # the same data: resumes, nothing to do
    assert _files(out) == kept
    with pytest.raises(StaleOutputError, match=rf"data: the data is another folder \({a} there, {b} now\)"):
        translate(b)
    _edit_in_place(a / "source" / "labels" / "1.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(StaleOutputError, match=rf"data: files under {a} changed since"):
        translate(a)
    assert _files(out) == kept                        # nothing was added or replaced


def test_eval_records_the_checkpoint_and_the_data(tmp_path, compose, one_torch_thread):
    from dasslab.commands.eval import run

    root = folder_dataset(tmp_path / "data")
    seg3 = segmenter_ckpt(tmp_path / "seg3.ckpt")
    record = run(compose("dataset=folder", f"dataset.root={root}", "dataset.image_size=[16,16]", f"ckpt={seg3}",
                         "data.num_workers=0", f"paths.output_dir={tmp_path / 'eval'}", config="eval"))
    made_by = json.loads((tmp_path / "eval" / "metrics.json").read_text())["made_by"]
    assert made_by == record["made_by"] and made_by["checkpoint"]["sha256"]
    assert made_by["data"]["root"] == str(root.resolve()) and made_by["data"]["labels"] == 4


# --------------------------------------------------------------------------- pipeline
def test_pipeline_after_a_label_edit_runs_the_job_again(tmp_path, compose, capsys, one_torch_thread):
    from dasslab.commands.train import run

    root = folder_dataset(tmp_path / "data", n=4)
    args = ["stage=pipeline", "debug=smoke", "logger=none", *folder(root), "pipeline.rows=[source_only]",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    first = run(compose(*args, f"paths.output_dir={tmp_path / 'p1'}"))
    assert "source_only: running" in capsys.readouterr().out
    job = Path(first["source_only"]["run_dir"])
    info = json.loads((job / "run_info.json").read_text())
    assert info["inputs"]["data"]["source"]["root"] == str(root.resolve())
    second = run(compose(*args, f"paths.output_dir={tmp_path / 'p2'}"))
    assert "source_only: reusing" in capsys.readouterr().out
    assert second["source_only"]["run_dir"] == str(job)

    _edit_in_place(root / "source" / "labels" / "2.png", np.full((16, 16), 1, np.uint8))
    third = run(compose(*args, f"paths.output_dir={tmp_path / 'p3'}"))
    printed = capsys.readouterr().out
    assert "source_only: running" in printed and "reusing" not in printed
    assert third["source_only"]["run_dir"] != str(job)          # another job: the old result is not reported
    new_info = json.loads((Path(third["source_only"]["run_dir"]) / "run_info.json").read_text())
    assert new_info["inputs"]["data"]["source"]["files"] != info["inputs"]["data"]["source"]["files"]


def test_generated_digits_keep_their_cache_keys(tmp_path, compose):
    """A generated dataset (digits) adds nothing to a job's key: its settings are in the config already."""
    from omegaconf import OmegaConf

    from dasslab.provenance import data_fingerprints
    from dasslab.workflow.plan import stage_key

    cfg = compose("debug=smoke", "stage=source", f"paths.output_dir={tmp_path}")
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert data_fingerprints(cfg, tree, generated=False) == {}
    assert stage_key(cfg) == stage_key(compose("debug=smoke", "stage=source", f"paths.output_dir={tmp_path}"))


# --------------------------------------------------------------------------- data files as users write them
@pytest.mark.parametrize("encoding, newline", [("utf-8-sig", "\n"), ("utf-16", "\r\n"), ("utf-8", "\r\n")])
def test_classes_txt_with_a_bom_or_utf16_is_read_correctly(tmp_path, encoding, newline):
    from dasslab.data import read_classes

    path = tmp_path / "classes.txt"
    path.write_bytes(newline.join(["road", "café", "sky", ""]).encode(encoding))
    assert read_classes(path) == ["road", "café", "sky"]


def test_unread_files_are_reported_by_the_prescan(tmp_path):
    from dasslab.data import DataError, FolderDomain
    from dasslab.data.prescan import scan_datasets

    root = folder_dataset(tmp_path / "d")
    (root / "source" / "images" / "notes.txt").write_text("which images are night shots")
    (root / "source" / "images" / "Thumbs.db").write_bytes(b"")          # not data: not reported
    Image.new("RGB", (16, 16)).save(root / "source" / "images" / "7.bmp")  # read: a bmp is an image
    ds = FolderDomain(root, "source", labels=False)
    assert len(ds) == 5
    with pytest.raises(DataError, match=r"notes\.txt: not read by the loader \(extension \.txt"):
        scan_datasets({"source": ds})
