"""Shared pytest fixtures. Environment first: tests never reach the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["WANDB_MODE"] = "offline"

from pathlib import Path

import pytest

import dasslab.config  # noqa: E402,F401  (registers the config resolvers before any compose)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to oversubscription on shared CI cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cityscapes_fixture() -> Path:
    """The real Cityscapes val frame of ../shared/fixtures/cityscapes (read-only), or skip."""
    root = FIXTURES / "cityscapes"
    if not (root / "gtFine" / "val" / "frankfurt").is_dir():
        pytest.skip(f"Cityscapes fixture not found at {root} (expected ../shared/fixtures next to the repo)")
    return root


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """A small digits benchmark cache (size 32, 120 train / 40 val scenes per domain), built once."""
    from dasslab.data.digits import make_digits

    return make_digits(tmp_path_factory.mktemp("digits") / "cache", size=32, n_train=120, n_val=40, seed=0)


@pytest.fixture
def make_gta5(tmp_path):
    """Factory: write a GTA5-format tree (RGB images, 8-bit *palette* labels of Cityscapes ids)."""
    import numpy as np
    from PIL import Image

    def make(ids_list, root=None, image_size=None):
        root = Path(root or tmp_path / "gta5")
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        colours = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)  # an arbitrary, colourful palette
        for i, ids in enumerate(ids_list):
            ids = np.asarray(ids, dtype=np.uint8)
            h, w = image_size or ids.shape
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i:05d}.png")
            lab = Image.fromarray(ids)
            lab.putpalette(colours.ravel().tolist())  # L -> P: pixel values stay indices
            lab.save(root / "labels" / f"{i:05d}.png")
        return root

    return make


# --------------------------------------------------------------------------- configs and stage runs
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> Path:
    """A DASSLAB_DATA folder whose digits cache (small) is shared by every stage test."""
    from dasslab.data.digits import make_digits

    data = tmp_path_factory.mktemp("data")
    make_digits(data / "digits", size=32, n_train=120, n_val=40, seed=0)
    return data


SMALL_DIGITS = ["dataset.generate.n_train=120", "dataset.generate.n_val=40"]


@pytest.fixture
def compose(tmp_path, digits_data_dir, monkeypatch):
    """compose(*overrides, config="train") -> a resolved-ready Hydra config rooted in tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    monkeypatch.setenv("DASSLAB_ROOT", str(tmp_path))
    monkeypatch.setenv("DASSLAB_DATA", str(digits_data_dir))

    def _compose(*overrides, config: str = "train"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name=config, overrides=list(overrides))

    return _compose
