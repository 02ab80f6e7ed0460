"""Each dataset reads its real on-disk format (palette, 16-bit, Cityscapes tree, folder layout)."""

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dasslab.data import GTA5, Cityscapes, FolderDomain, Synthia
from dasslab.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID, lookup_table
from dasslab.data.transforms import build_transform

FRAME = "frankfurt_000000_000294"


def test_gta5_palette_labels_read_as_indices(make_gta5):
    rng = np.random.default_rng(1)
    ids = rng.choice([0, 1, 7, 8, 11, 26, 33, 34, 250], size=(12, 20)).astype(np.uint8)
    root = make_gta5([ids])
    assert Image.open(root / "labels" / "00000.png").mode == "P"
    item = GTA5(root)[0]
    expected = lookup_table(CITYSCAPES_ID_TO_TRAINID)[ids]
    np.testing.assert_array_equal(item["label"].numpy(), expected)
    assert item["label"].dtype == torch.int64 and item["name"] == "00000"
    assert item["image"].shape == (3, 12, 20) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    # OpenCV would decode the palette into colours, not ids.
    as_cv2 = cv2.imread(str(root / "labels" / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert as_cv2.ndim == 3 or not np.array_equal(as_cv2, ids)


def test_gta5_splits_are_deterministic_and_disjoint(make_gta5):
    root = make_gta5([np.full((4, 4), 7, np.uint8)] * 60)
    def names(ds):
        return {s[0] for s in ds.samples}
    train, val, full = GTA5(root, "train"), GTA5(root, "val"), GTA5(root, "all")
    assert names(train) | names(val) == names(full) and not names(train) & names(val)
    assert 0 < len(val) < len(train)
    assert names(GTA5(root, "val")) == names(val)


def test_synthia_16bit_labels_read_from_first_channel(tmp_path):
    root = tmp_path / "synthia"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    rng = np.random.default_rng(2)
    cls = rng.choice([0, 1, 3, 8, 12, 21, 22, 300], size=(10, 14)).astype(np.uint16)
    inst = rng.integers(0, 65535, size=(10, 14, 2), dtype=np.uint16)  # other channels: instance-like ids
    rgb16 = np.dstack([cls, inst])  # file channel order R, G, B
    cv2.imwrite(str(root / "GT" / "LABELS" / "0000001.png"), rgb16[..., ::-1])  # cv2 writes BGR
    cv2.imwrite(str(root / "RGB" / "0000001.png"), rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    item = Synthia(root)[0]
    expected = lookup_table(SYNTHIA_ID_TO_TRAINID, 65536)[cls]
    np.testing.assert_array_equal(item["label"].numpy(), expected)
    assert (expected != 255).any() and (expected == 255).any()
    # PIL truncates 16-bit RGB to 8 bits: it would not give the class ids.
    pil = np.array(Image.open(root / "GT" / "LABELS" / "0000001.png"))
    assert not np.array_equal(pil[..., 0].astype(np.int64), cls.astype(np.int64))


def _cityscapes_tree(src, dst, keep_train_ids=True):
    for kind, suffixes in (("leftImg8bit", ["leftImg8bit"]),
                           ("gtFine", ["gtFine_labelIds"] + (["gtFine_labelTrainIds"] if keep_train_ids else []))):
        d = dst / kind / "val" / "frankfurt"
        d.mkdir(parents=True)
        for s in suffixes:
            os.symlink(src / kind / "val" / "frankfurt" / f"{FRAME}_{s}.png", d / f"{FRAME}_{s}.png")
    return dst


def test_cityscapes_reads_the_real_frame(cityscapes_fixture, tmp_path):
    with_train = Cityscapes(_cityscapes_tree(cityscapes_fixture, tmp_path / "a"), "val")
    only_ids = Cityscapes(_cityscapes_tree(cityscapes_fixture, tmp_path / "b", keep_train_ids=False), "val")
    assert len(with_train) == 1 and with_train.samples[0][1].endswith("_labelTrainIds.png")
    assert only_ids.samples[0][1].endswith("_labelIds.png")
    a, b = with_train[0], only_ids[0]
    assert a["image"].shape == (3, 128, 256) and a["name"] == f"{FRAME}_leftImg8bit"
    assert set(a["label"].unique().tolist()) <= set(range(19)) | {255}
    assert (a["label"] == b["label"]).float().mean() >= 0.995
    assert (a["label"] != 255).float().mean() > 0.5
    unlabeled = Cityscapes(tmp_path / "a", "val", labels=False)[0]
    assert (unlabeled["label"] == 255).all()
    assert with_train.num_classes == 19 and with_train.class_names[0] == "road"


def _folder(root, k=5, size=(24, 40), n=3):
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(k)) + "\n\n")
    for dom, labelled in (("source", True), ("target", False), ("target_val", True)):
        (root / dom / "images").mkdir(parents=True)
        if labelled:
            (root / dom / "labels").mkdir()
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            ext = ".jpg" if i % 2 else ".png"
            cv2.imwrite(str(root / dom / "images" / f"im{i}{ext}"), img)
            if labelled:
                lab = rng.integers(0, k, size, dtype=np.uint8)
                lab[0, :] = 255
                cv2.imwrite(str(root / dom / "labels" / f"im{i}.png"), lab)
    return root


def test_folder_domains_with_arbitrary_classes_and_size(tmp_path):
    root = _folder(tmp_path / "f", k=5, size=(24, 40))
    src = FolderDomain(root, "source")
    assert src.class_names == ("c0", "c1", "c2", "c3", "c4") and src.num_classes == 5 and len(src) == 3
    item = src[1]
    truth = cv2.imread(str(root / "source" / "labels" / "im1.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(item["label"].numpy(), truth)
    assert item["image"].shape == (3, 24, 40) and item["name"] == "im1"
    tgt = FolderDomain(root, "target")
    assert not tgt.has_labels and (tgt[0]["label"] == 255).all()
    assert FolderDomain(root, "target_val").has_labels


def test_transforms_resize_crop_flip_keep_labels_consistent(tmp_path):
    root = _folder(tmp_path / "f", k=5, size=(24, 40))
    ds = FolderDomain(root, "source", transform=build_transform(True, resize=(12, 20), crop=(16, 16), seed=0))
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["label"].shape == (16, 16)
    assert set(item["label"].unique().tolist()) <= set(range(5)) | {255}
    assert (item["label"][:2] == 255).all()  # padded rows are ignored, never a class
    ev = FolderDomain(root, "source", transform=build_transform(False, resize=(12, 20), crop=(16, 16)))[0]
    assert ev["image"].shape == (3, 12, 20)
    truth = cv2.imread(str(root / "source" / "labels" / "im0.png"), cv2.IMREAD_UNCHANGED)
    assert set(ev["label"].unique().tolist()) <= set(np.unique(truth).tolist())  # nearest: no new values
    flip = build_transform(True, hflip=True, seed=0)
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, 0] = 255
    outs = [flip(image=img, mask=img[..., 0].copy())["mask"][0, 0] for _ in range(20)]
    assert 0 in outs and 255 in outs


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches(tmp_path, workers):
    root = _folder(tmp_path / "f", k=5, size=(24, 40), n=4)
    loader = DataLoader(FolderDomain(root, "source"), batch_size=2, num_workers=workers)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["image"].shape == (2, 3, 24, 40) and batches[0]["label"].dtype == torch.int64
    assert batches[0]["name"] == ["im0", "im1"]


def test_image_is_rgb_scaled_to_minus_one_one(tmp_path):
    root = _folder(tmp_path / "f", k=2, size=(4, 4), n=1)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red, written by PIL (RGB order on disk)
    Image.fromarray(rgb).save(root / "source" / "images" / "im0.png")
    img = FolderDomain(root, "source")[0]["image"]
    assert torch.allclose(img[0], torch.ones(4, 4)) and torch.allclose(img[1:], -torch.ones(2, 4, 4))
