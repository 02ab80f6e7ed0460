"""Label tables, palettes and the id -> trainId mapping on a real Cityscapes frame."""

import numpy as np
import pytest
import torch
from PIL import Image

from dasslab.data import labels as L


def test_class_names_and_palette_are_cityscapes():
    assert len(L.CITYSCAPES_CLASSES) == 19
    assert L.CITYSCAPES_CLASSES[0] == "road" and L.CITYSCAPES_CLASSES[13] == "car"
    assert L.CITYSCAPES_CLASSES[-1] == "bicycle"
    assert L.CITYSCAPES_PALETTE.shape == (19, 3) and L.CITYSCAPES_PALETTE.dtype == np.uint8
    assert tuple(L.CITYSCAPES_PALETTE[0]) == (128, 64, 128)  # road
    assert tuple(L.CITYSCAPES_PALETTE[10]) == (70, 130, 180)  # sky
    assert tuple(L.CITYSCAPES_PALETTE[18]) == (119, 11, 32)  # bicycle
    np.testing.assert_array_equal(L.palette(19), L.CITYSCAPES_PALETTE)


def test_id_tables_are_bijections_onto_19_train_ids():
    for table in (L.CITYSCAPES_ID_TO_TRAINID, L.SYNTHIA_ID_TO_TRAINID):
        assert sorted(table.values()) == list(range(19))
    assert L.CITYSCAPES_ID_TO_TRAINID[26] == 13 and L.SYNTHIA_ID_TO_TRAINID[8] == 13  # car
    assert len(L.SYNTHIA_16) == 16 and not {9, 14, 16} & set(L.SYNTHIA_16)
    assert set(L.SYNTHIA_13) == set(L.SYNTHIA_16) - {3, 4, 5}


def test_lookup_table_maps_unknown_ids_to_ignore():
    lut = L.lookup_table(L.CITYSCAPES_ID_TO_TRAINID)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[7] == 0 and lut[33] == 18
    unmapped = [i for i in range(256) if i not in L.CITYSCAPES_ID_TO_TRAINID]
    assert (lut[unmapped] == L.IGNORE_INDEX).all()
    big = L.lookup_table(L.SYNTHIA_ID_TO_TRAINID, 65536)
    assert big.shape == (65536,) and big[3] == 0 and big[3 + 256] == 255 and big[65535] == 255
    with pytest.raises(ValueError):
        L.lookup_table({300: 1}, 256)


@pytest.mark.parametrize("k", [1, 2, 11, 20, 64, 255])
def test_palette_is_deterministic_distinct_and_not_black(k):
    p = L.palette(k)
    assert p.shape == (k, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == k
    assert (p.astype(int).sum(1) > 0).all()
    np.testing.assert_array_equal(p, L.palette(k))


def test_colorize_uses_palette_and_draws_ignore_black():
    lab = np.array([[0, 13], [255, 18]], dtype=np.uint8)
    rgb = L.colorize(lab)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == (0, 0, 142)
    assert tuple(rgb[1, 0]) == (0, 0, 0)
    np.testing.assert_array_equal(L.colorize(torch.from_numpy(lab).long()), rgb)
    rgb11 = L.colorize(np.array([[10, 255]]), num_classes=11)
    assert tuple(rgb11[0, 0]) == tuple(L.palette(11)[10]) and tuple(rgb11[0, 1]) == (0, 0, 0)


def test_label_ids_mapped_agree_with_label_train_ids(cityscapes_fixture):
    d = cityscapes_fixture / "gtFine" / "val" / "frankfurt"
    ids = np.array(Image.open(d / "frankfurt_000000_000294_gtFine_labelIds.png"))
    train_ids = np.array(Image.open(d / "frankfurt_000000_000294_gtFine_labelTrainIds.png"))
    assert ids.shape == train_ids.shape == (128, 256)
    mapped = L.lookup_table(L.CITYSCAPES_ID_TO_TRAINID)[ids]
    agreement = (mapped == train_ids).mean()
    assert agreement >= 0.995, f"labelIds->trainIds agree on only {agreement:.4%} of pixels"
    # A wrong table (e.g. off by one) must fail the same check.
    shifted = L.lookup_table({k + 1: v for k, v in L.CITYSCAPES_ID_TO_TRAINID.items()})[ids]
    assert (shifted == train_ids).mean() < 0.5
