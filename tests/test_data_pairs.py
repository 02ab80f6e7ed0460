"""The built-in pairs of the suite (digits, streets, fog): the held-apart test split, determinism, regimes."""

import pytest
import torch

from dasslab.analysis.image_stats import high_frequency_energy
from dasslab.data.digits import Digits
from dasslab.data.fog import Fog, make_fog
from dasslab.data.generated import SUBSETS, read_meta
from dasslab.data.io import DataError
from dasslab.data.streets import Streets, make_streets

PAIRS = {"streets": (Streets, make_streets), "fog": (Fog, make_fog)}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_generation_is_byte_identical_and_every_subset_is_there(tmp_path, pair):
    _, make = PAIRS[pair]
    a = _files(make(tmp_path / "a", n_train=12, n_val=4, n_test=5, seed=3))
    b = _files(make(tmp_path / "b", n_train=12, n_val=4, n_test=5, seed=3))
    c = _files(make(tmp_path / "c", n_train=12, n_val=4, n_test=5, seed=4))
    assert a == b and a["target/images/00000.png"] != c["target/images/00000.png"]
    counts = {f: sum(k.startswith(f"{f}/images/") for k in a) for f in SUBSETS}
    assert counts == {"source": 12, "source_val": 4, "target": 12, "target_val": 4, "target_test": 5}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_test_split_is_held_apart_from_val_and_train(tmp_path, pair):
    """target_test is drawn on its own generator: none of its scenes is a val or train scene."""
    cls, make = PAIRS[pair]
    root = make(tmp_path / pair, n_train=20, n_val=8, n_test=8)
    files = _files(root)
    test = {files[f"target_test/labels/{i:05d}.png"] for i in range(8)}
    others = {v for k, v in files.items() if k.startswith(("target_val/labels", "target/labels"))}
    assert not test & others
    ds = cls(root, "target", "test", n_train=20, n_val=8, n_test=8)
    assert len(ds) == 8 and ds.has_labels
    unlabeled = cls(root, "target", "train", n_train=20, n_val=8, n_test=8)
    assert not unlabeled.has_labels and (unlabeled[0]["label"] == 255).all()


def test_regimes_differ_in_the_direction_of_the_shift(tmp_path):
    """streets adds texture and noise to flat renders (target hf above source's, whose window grids and edges
    already carry some); fog removes detail (target hf below half the source's); streets' labels are large
    regions."""
    def hf(cls, root, domain, n=24):
        ds = cls(root, domain, "val", n_train=8, n_val=n, n_test=4)
        return high_frequency_energy(torch.stack([ds[i]["image"] for i in range(n)]))

    streets, fog = tmp_path / "s", tmp_path / "f"
    assert hf(Streets, streets, "target") > hf(Streets, streets, "source")
    assert hf(Fog, fog, "target") < 0.5 * hf(Fog, fog, "source")
    meta = read_meta(streets)
    assert min(meta["class_fraction"]["target_val"][:5]) > 0.02      # road .. sky: each a sizeable region
    assert meta["class_names"] == ["road", "sidewalk", "building", "vegetation", "sky", "car"]
    assert read_meta(fog)["class_names"] == ["background", "disc", "square", "triangle"]


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(DataError, match="n_test=0"):
        make_streets(tmp_path / "x", n_train=4, n_val=2, n_test=0)
    with pytest.raises(DataError, match="size=8"):
        make_fog(tmp_path / "y", size=8)
    with pytest.raises(DataError, match="split='test'"):
        Digits(tmp_path / "z", "source", "test", n_train=4, n_val=2)
