"""The built-in digits benchmark: determinism, classes, statistics, cache behaviour."""

import json
from pathlib import Path

import numpy as np
import pytest

from dasslab.data import Digits, FolderDomain, make_digits
from dasslab.data import digits as digits_mod
from dasslab.data.io import DataError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_byte_identical_for_a_seed(tmp_path):
    a = _files(make_digits(tmp_path / "a", n_train=30, n_val=10, seed=5))
    b = _files(make_digits(tmp_path / "b", n_train=30, n_val=10, seed=5))
    c = _files(make_digits(tmp_path / "c", n_train=30, n_val=10, seed=6))
    # images + labels of source, target (30 each), source_val, target_val, target_test (10 each); classes, meta
    assert len(a) == 2 * (2 * 30 + 3 * 10) + 2
    assert a == b
    assert a.keys() == c.keys() and a["source/images/00000.png"] != c["source/images/00000.png"]


def test_classes_and_splits(digits_root):
    src = Digits(digits_root, "source", "train", n_train=120, n_val=40)
    assert src.num_classes == 11 and src.class_names == ("background",) + tuple("0123456789")
    assert digits_mod.BACKGROUND == 0 and len(src) == 120
    assert len(Digits(digits_root, "target", "val", n_train=120, n_val=40)) == 40
    test = Digits(digits_root, "target", "test", n_train=120, n_val=40)      # n_test defaults to n_val
    assert len(test) == 40 and test.has_labels
    tgt = Digits(digits_root, "target", "train", n_train=120, n_val=40)
    assert not tgt.has_labels and (tgt[0]["label"] == 255).all()
    oracle = Digits(digits_root, "target", "train", n_train=120, n_val=40, labels=True)
    assert oracle.has_labels and (oracle[0]["label"] != 255).all()
    # The cache is a plain folder dataset.
    assert len(FolderDomain(digits_root, "source_val")) == 40
    item = src[0]
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1


def test_label_statistics(digits_root):
    counts = np.zeros(11, np.int64)
    ds = Digits(digits_root, "source", "train", n_train=120, n_val=40)
    for i in range(len(ds)):
        counts += np.bincount(ds[i]["label"].numpy().ravel(), minlength=11)
    frac = counts / counts.sum()
    assert 0.75 < frac[0] < 0.95, f"background fraction {frac[0]:.3f}"
    assert (counts[1:] > 0).all(), "every digit class occurs"
    np.testing.assert_allclose(frac, ds.meta["class_fraction"]["source"], atol=1e-5)


def test_target_is_textured_and_source_plain(digits_root):
    src = Digits(digits_root, "source", "val", n_train=120, n_val=40)
    tgt = Digits(digits_root, "target", "val", n_train=120, n_val=40)

    def plain_share(ds):
        """Mean share of background pixels that have the scene's most common colour."""
        out = []
        for i in range(10):
            it = ds[i]
            bg = it["image"].numpy()[:, (it["label"] == 0).numpy()].T
            _, counts = np.unique(bg, axis=0, return_counts=True)
            out.append(counts.max() / len(bg))
        return float(np.mean(out))

    assert plain_share(src) > 0.7 and plain_share(tgt) < 0.2


def test_cache_reused_and_regenerated_when_parameters_change(digits_root, tmp_path):
    root = make_digits(tmp_path / "c", n_train=20, n_val=10)
    stamp = (root / "meta.json").stat().st_mtime_ns
    make_digits(root, n_train=20, n_val=10)
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    make_digits(root, n_train=25, n_val=10)
    assert json.loads((root / "meta.json").read_text())["n_train"] == 25
    assert len(list((root / "source" / "images").iterdir())) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"], "no temporary folders left behind"


def test_interrupted_generation_leaves_no_cache(tmp_path, monkeypatch):
    def boom(out, params):
        (out / "source" / "images").mkdir(parents=True)
        (out / "source" / "images" / "00000.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_mod, "_generate", boom)
    with pytest.raises(KeyboardInterrupt):
        make_digits(tmp_path / "cache", n_train=10, n_val=5)
    assert [p.name for p in tmp_path.iterdir()] in ([], [".cache.lock"])     # no (half) cache, at most the lock


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match=r"mine.*not a digits cache"):
        make_digits(tmp_path / "mine", n_train=10, n_val=5)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    with pytest.raises(DataError, match="domain='sauce'"):
        Digits(tmp_path / "d", "sauce")


def test_folder_working_size_follows_the_data(digits_root, tmp_path):
    """Native size when all images share one; the most common size, capped and rounded, otherwise."""
    from omegaconf import OmegaConf

    from dasslab.data.folder import working_size
    from dasslab.data.io import write_png

    Digits(digits_root, "source", "train", n_train=120, n_val=40)       # the digits cache: all 32x32
    assert working_size(digits_root) == [32, 32]
    assert working_size(digits_root, max_side=16) == [16, 16]          # the cap, aspect kept
    root = tmp_path / "pair"
    sizes = {"source": [(40, 72)] * 3, "target": [(40, 72), (30, 50)], "target_val": [(90, 30)]}
    for domain, shapes in sizes.items():
        (root / domain / "images").mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            write_png(root / domain / "images" / f"{i}.png", np.zeros((h, w, 3), np.uint8))
    (root / "classes.txt").write_text("a\nb\n")
    assert working_size(root) == [40, 72]                               # most common (4 of 6 images)
    assert working_size(root, max_side=36) == [16, 32]                  # 40x72 * 0.5 = 20x36 -> multiples of 8
    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "dataset" / "folder.yaml")
    cfg.dataset.root = str(root)
    assert list(cfg.dataset.image_size) == [40, 72] and list(cfg.dataset.crop_size) == [40, 72]
    with pytest.raises(DataError, match="dataset.root"):
        working_size(tmp_path / "missing")


def test_digit_scale_changes_the_scenes_and_is_recorded_only_when_set(tmp_path):
    small = make_digits(tmp_path / "a", n_train=40, n_val=5, seed=1)
    big = make_digits(tmp_path / "b", n_train=40, n_val=5, seed=1, digit_scale=(0.6, 0.9))
    meta_a, meta_b = (json.loads((r / "meta.json").read_text()) for r in (small, big))
    assert "digit_scale" not in meta_a and meta_b["digit_scale"] == [0.6, 0.9]
    # bigger digits cover more of the scene
    assert meta_b["class_fraction"]["source"][0] < meta_a["class_fraction"]["source"][0]
    with pytest.raises(DataError, match="digit_scale"):
        make_digits(tmp_path / "c", n_train=4, n_val=1, digit_scale=(0.9, 0.5))


def test_two_processes_wanting_the_cache_at_once_generate_it_once(tmp_path, monkeypatch):
    """A pipeline's parallel jobs (a DDPM and a source model) ask for the same cache at once: the second waits
    for the first and reads its files; it never generates again and swaps the folder under the first's reader."""
    import threading
    import time

    real, calls = digits_mod._generate, []

    def slow(out, params):
        calls.append(out)
        time.sleep(1.0)
        real(out, params)

    monkeypatch.setattr(digits_mod, "_generate", slow)
    root = tmp_path / "digits"
    results = []

    def want():
        results.append(make_digits(root, size=16, n_train=4, n_val=2, seed=0))

    threads = [threading.Thread(target=want) for _ in range(2)]
    threads[0].start()
    time.sleep(0.3)                  # the second asks while the first is generating
    threads[1].start()
    for t in threads:
        t.join(timeout=60)
    assert results == [root, root] and len(calls) == 1
    assert len(list((root / "target" / "images").iterdir())) == 4
