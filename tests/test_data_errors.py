"""Bad input gets a one-line DataError (or a counted warning) naming the file or setting."""

import re

import cv2
import numpy as np
import pytest

from dasslab.data import GTA5, Cityscapes, DataError, DataWarning, FolderDomain, Synthia
from dasslab.data.base import SegmentationDataset
from dasslab.data.io import read_index_label


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("cls, setting, layout", [
    (GTA5, "dataset.source.root", "GTA5 layout images/NNNNN.png"),
    (Synthia, "dataset.source.root", "GT/LABELS"),
    (Cityscapes, "dataset.target.root", "leftImg8bit/<split>"),
    (FolderDomain, "dataset.root", "classes.txt"),
])
def test_missing_root_names_the_setting_and_layout(tmp_path, cls, setting, layout):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        cls(missing)
    msg = _one_line(e)
    assert msg.startswith(f"{setting}={missing}: folder not found") and layout in msg


def test_missing_subfolder_names_it(make_gta5, tmp_path):
    root = make_gta5([np.zeros((4, 4), np.uint8)])
    (root / "labels" / "00000.png").unlink()
    (root / "labels").rmdir()
    with pytest.raises(DataError, match=r"no labels/ folder"):
        GTA5(root)


def test_image_without_label_is_named(make_gta5):
    root = make_gta5([np.full((4, 4), 7, np.uint8)] * 3)
    (root / "labels" / "00001.png").unlink()
    with pytest.raises(DataError) as e:
        GTA5(root)
    msg = _one_line(e)
    assert str(root / "images" / "00001.png") in msg and "has no label" in msg and "1 of 3" in msg


def test_size_mismatch_is_resized_warned_once_and_counted(make_gta5):
    ids = np.full((6, 8), 26, np.uint8)  # car
    ids[:3] = 7  # road on top
    root = make_gta5([ids, ids, ids], image_size=(12, 16))
    ds = GTA5(root)
    with pytest.warns(DataWarning) as record:
        items = [ds[i] for i in range(3)]
    assert len(record) == 1 and str(root / "labels" / "00000.png") in str(record[0].message)
    assert ds.stats["label_resized"] == 3
    lab = items[0]["label"]
    assert lab.shape == (12, 16) and (lab[:6] == 0).all() and (lab[6:] == 13).all()


def test_unknown_ids_become_ignore(make_gta5):
    ids = np.array([[7, 3, 250, 0], [26, 34, 255, 1]], np.uint8)
    item = GTA5(make_gta5([ids]))[0]
    assert item["label"].tolist() == [[0, 255, 255, 255], [13, 255, 255, 255]]


@pytest.mark.parametrize("content", [b"not an image at all", None])
def test_corrupt_image_names_the_file(make_gta5, content):
    root = make_gta5([np.zeros((8, 8), np.uint8)])
    img = root / "images" / "00000.png"
    data = img.read_bytes()
    img.write_bytes(content if content is not None else data[: len(data) // 3])  # None: truncated PNG
    with pytest.raises(DataError) as e:
        GTA5(root)[0]
    msg = _one_line(e)
    assert msg.startswith(str(img)) and "cannot decode image" in msg


def test_corrupt_or_colour_label_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        read_index_label(bad)
    colour = tmp_path / "colour.png"
    cv2.imwrite(str(colour), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=re.escape(str(colour)) + ".*mode RGB.*not colours"):
        read_index_label(colour)


def test_empty_split_names_split_and_root(make_gta5, tmp_path):
    root = make_gta5([])
    with pytest.raises(DataError) as e:
        GTA5(root, "train")
    msg = _one_line(e)
    assert "split 'train'" in msg and str(root) in msg and "no samples" in msg
    with pytest.raises(DataError, match=r"unknown split"):
        GTA5(make_gta5([np.zeros((2, 2), np.uint8)]), "test")
    with pytest.raises(DataError, match="split 'x'"):
        SegmentationDataset([], None, ["a"], split="x", root="/r")


def _folder(root, label_max, k):
    (root / "source" / "images").mkdir(parents=True)
    (root / "source" / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(k)))
    cv2.imwrite(str(root / "source" / "images" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0], lab[1, 1] = label_max, 255
    cv2.imwrite(str(root / "source" / "labels" / "a.png"), lab)
    return root


def test_classes_txt_disagreeing_with_labels(tmp_path):
    root = _folder(tmp_path / "f", label_max=7, k=3)
    with pytest.raises(DataError) as e:
        FolderDomain(root, "source")[0]
    msg = _one_line(e)
    assert str(root / "source" / "labels" / "a.png") in msg and "{7}" in msg and "3 classes" in msg
    ok = FolderDomain(_folder(tmp_path / "g", label_max=2, k=3), "source")[0]
    assert ok["label"][0, 0] == 2 and ok["label"][1, 1] == 255


def test_bad_classes_file_and_duplicate_stems(tmp_path):
    root = _folder(tmp_path / "f", label_max=1, k=3)
    (root / "classes.txt").write_text("road\n\nsky\n")
    with pytest.raises(DataError, match=re.escape(str(root / "classes.txt")) + ".*line 2 is blank"):
        FolderDomain(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt: classes file not found"):
        FolderDomain(root)
    (root / "classes.txt").write_text("a\nb\n")
    cv2.imwrite(str(root / "source" / "images" / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"a\.(png|jpg) and .*a\.(png|jpg): two files with the same stem"):
        FolderDomain(root)
    with pytest.raises(DataError, match=r"no target_val/images/ folder"):
        FolderDomain(root, "target_val")


def test_cityscapes_image_without_label(cityscapes_fixture, tmp_path):
    frame = "frankfurt_000000_000294_leftImg8bit.png"
    (tmp_path / "leftImg8bit" / "val" / "frankfurt").mkdir(parents=True)
    (tmp_path / "gtFine" / "val" / "frankfurt").mkdir(parents=True)
    img = tmp_path / "leftImg8bit" / "val" / "frankfurt" / frame
    img.symlink_to(cityscapes_fixture / "leftImg8bit" / "val" / "frankfurt" / frame)
    with pytest.raises(DataError, match=re.escape(str(img)) + ": image has no label"):
        Cityscapes(tmp_path, "val")
    with pytest.raises(DataError, match=r"dataset.target.root=.*no leftImg8bit/train/ folder"):
        Cityscapes(tmp_path, "train")
    assert len(Cityscapes(tmp_path, "val", labels=False)) == 1


def test_a_folder_pair_error_names_the_setting_the_user_gives(tmp_path):
    """`dataset.root` for the entries of a folder pair (not dataset.source.root), the entry's own root where
    the user wrote one, and an empty images folder is one line too."""
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from dasslab.data.build import build_dataset, root_setting
    from dasslab.errors import DataError

    root = tmp_path / "pair"
    (root / "source" / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    Image.new("RGB", (8, 8)).save(root / "source" / "images" / "x.png")
    from dasslab.config import CONF_DIR as conf
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", ["dataset=folder", f"dataset.root={root}", "dataset.image_size=[8,8]",
                                "dataset.target_train_labeled={_target_: dasslab.data.folder.FolderDomain, "
                                f"root: {tmp_path / 'labelled'}, domain: target, labels: true}}"])
    assert root_setting(cfg.dataset, "source") == "dataset.root"
    assert root_setting(cfg.dataset, "target_train_labeled") == "dataset.target_train_labeled.root"
    with pytest.raises(DataError, match=rf"^dataset.root={root}: no target/images/ folder"):
        build_dataset(cfg.dataset, "target", train=False)
    (root / "target" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"^dataset.root={root}: target/images/ holds no images"):
        build_dataset(cfg.dataset, "target", train=False)
    with pytest.raises(DataError, match=rf"^dataset.target_train_labeled.root={tmp_path / 'labelled'}: folder not"):
        build_dataset(cfg.dataset, "target_train_labeled", train=False)
