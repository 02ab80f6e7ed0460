"""Contents, not names (issue 31): what a data file holds decides how it is read, and nothing is dropped silently.

* A label holding JPEG (or WebP, GIF …) bytes under a ``.png`` name used to be decoded and trained on: the JPEG
  changed its class indices and one class vanished, exit 0. It is refused, naming the file and what it holds.
* A label without its image used to be dropped (``run_info.json`` counted 3 labels of 4 files). It is refused
  with the count and the first file, as an image without its label is.
* An image whose content is another format than its extension names is read by content and reported.
* A pixel cap refuses a decompression bomb from its header, before it is decoded.
* A symlink loop among the data files is named, not skipped.
"""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from dasslab.data import formats
from dasslab.data.folder import FolderDomain
from dasslab.data.gta5 import GTA5
from dasslab.data.io import list_files, read_image, read_index_label
from dasslab.data.prescan import scan_datasets
from dasslab.errors import ConfigError, DataError


def make_folder(root, n=4, size=16, classes=("background", "a", "b", "c")):
    rng = np.random.default_rng(0)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for sub in ("images", "labels"):
        (root / "source" / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "source" / "images" /
                                                                                 f"{i}.png")
        label = rng.integers(0, len(classes), (size, size), dtype=np.uint8)   # sharp edges: what JPEG smears
        Image.fromarray(label).save(root / "source" / "labels" / f"{i}.png")
    return root


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_a_label_holding_other_bytes_under_a_png_name_is_refused(tmp_path, fmt):
    path = tmp_path / "label.png"
    path.write_bytes(encoded(Image.fromarray(np.full((16, 16), 3, np.uint8)), fmt))
    with pytest.raises(DataError) as e:
        read_index_label(path)
    assert str(e.value).startswith(f"{path}: holds {fmt} data, not PNG") and "\n" not in str(e.value)


def test_a_jpeg_coded_label_is_refused_by_the_prescan_before_training(tmp_path):
    """The issue's case: the JPEG decodes (OpenCV and Pillow read by content) but loses class 3 at its edges."""
    root = make_folder(tmp_path / "data")
    bad = root / "source" / "labels" / "1.png"
    label = np.asarray(Image.open(bad))
    bad.write_bytes(encoded(Image.fromarray(label), "JPEG"))
    assert not np.array_equal(np.asarray(Image.open(bad)), label)       # what used to be trained on
    with pytest.raises(DataError, match=rf"^{bad}: holds JPEG data, not PNG \(JPEG and WebP compression change"):
        scan_datasets({"source": FolderDomain(root, "source")})


@pytest.mark.parametrize("mode, words", [("RGB", "mode RGB (colours)"), ("LA", "mode LA")])
def test_a_label_of_colours_is_refused(tmp_path, mode, words):
    path = tmp_path / "label.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert(mode).save(path)
    with pytest.raises(DataError, match=rf"^{path}: label image has {words.replace('(', '[(]').replace(')', '[)]')}"):
        read_index_label(path)


def test_palette_and_grey_pngs_still_read(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)).save(grey)
    pal = tmp_path / "pal.png"
    im = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)).convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    im.save(pal)
    assert read_index_label(grey).tolist() == [[0, 1], [2, 3]]
    assert read_index_label(pal).tolist() == np.asarray(Image.open(pal)).tolist()


def test_a_label_without_its_image_is_reported_with_the_count_and_the_first(tmp_path):
    root = make_folder(tmp_path / "data")
    for stem in ("7", "8"):
        shutil.copy(root / "source" / "labels" / "0.png", root / "source" / "labels" / f"{stem}.png")
    with pytest.raises(DataError) as e:
        FolderDomain(root, "source")
    assert str(e.value).startswith(f"{root / 'source' / 'labels' / '7.png'}: label has no image")
    assert "2 of 6 labels lack images" in str(e.value)


def test_a_gta5_label_of_the_other_split_is_not_an_orphan(tmp_path):
    """GTA5 splits its images by a hash of the stem: the labels of the val images belong to images, not orphans;
    a label whose image is missing altogether is."""
    root = tmp_path / "gta5"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(30):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{i:05d}.png")
        Image.fromarray(np.full((4, 4), 7, np.uint8)).save(root / "labels" / f"{i:05d}.png")
    train, val = GTA5(root, "train"), GTA5(root, "val")
    assert len(train) + len(val) == 30 and len(val) > 0
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(root / "labels" / "99999.png")
    with pytest.raises(DataError, match=r"99999\.png: label has no image .* 1 of 31 labels lack images"):
        GTA5(root, "train")


def test_an_image_in_another_format_is_read_by_content_and_reported(tmp_path):
    root = make_folder(tmp_path / "data")
    img = root / "source" / "images" / "2.png"
    rgb = np.asarray(Image.open(img).convert("RGB"))
    img.write_bytes(encoded(Image.fromarray(rgb), "JPEG"))
    assert read_image(img).shape == (16, 16, 3)
    report = scan_datasets({"source": FolderDomain(root, "source")})
    scan = report.splits[0]
    assert scan.other_format == 1 and scan.other_format_first.startswith(f"{img} holds JPEG data, not the PNG")
    assert "1 images of dataset.source hold another format than their extension names" in report.summary()


def test_the_pixel_cap_refuses_a_bomb_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)           # 144 million pixels in 17 KB
    assert bomb.stat().st_size < 50_000
    with pytest.raises(DataError, match=rf"^{bomb}: 12000x12000 = 144000000 pixels, more than "
                                        rf"data.max_pixels=100000000"):
        read_image(bomb)
    try:
        formats.set_max_pixels(200_000_000)
        assert read_image(tmp_path / "bomb.png").shape == (12000, 12000, 3)     # the cap is the setting's
        formats.set_max_pixels(10, "max_pixels")
        small = tmp_path / "small.png"
        Image.new("RGB", (4, 4)).save(small)
        with pytest.raises(DataError, match="4x4 = 16 pixels, more than max_pixels=10"):
            read_image(small)
        with pytest.raises(ConfigError, match=r"^data.max_pixels=0: expected an integer >= 1"):
            formats.set_max_pixels(0)
    finally:
        formats.set_max_pixels(None)


def test_a_symlink_loop_among_the_data_is_named(tmp_path):
    (tmp_path / "a.png").symlink_to("a.png")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'a.png'}: a symlink loop"):
        list_files(tmp_path)
