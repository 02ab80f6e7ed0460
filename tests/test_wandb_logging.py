"""W&B (offline): project/group/tags from the experiment, pictures logged as uint8 that are not black."""


import numpy as np
import torch
from PIL import Image

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40"]


def test_as_uint8():
    from dasslab.visualize import as_uint8, to_uint8

    x = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(as_uint8(x), [[0, 128, 255, 255]])
    u = np.array([[3, 200]], dtype=np.uint8)
    assert as_uint8(u) is u
    t = torch.linspace(-1, 1, 3 * 4 * 5).reshape(3, 4, 5)
    np.testing.assert_array_equal(as_uint8(t), to_uint8(t))


def test_wandb_offline_run_has_experiment_names_and_visible_pictures(compose, tmp_path, monkeypatch):
    from dasslab.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    out = tmp_path / "run"
    cfg = compose("stage=diffusion", *SMOKE, "logger=wandb", "task_name=table9_probe", "diffusion.sample_every=2",
                  f"paths.output_dir={out}")
    w = cfg.logger.wandb
    assert w.project == "dasslab"
    assert w.group == "table9_probe/digits/small"
    assert list(w.tags) == ["table9_probe", "digits", "small", "diffusion"]
    assert w.name == "diffusion-seed0" and w.job_type == "diffusion"

    run(cfg)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(out.iterdir())
    logged = sorted((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert logged, sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*"))
    pics = [np.asarray(Image.open(p).convert("RGB")) for p in logged]
    assert all(p.max() > 0 for p in pics)  # float pictures would be drawn black
    saved = np.asarray(Image.open(sorted((out / "samples").glob("*.png"))[-1]).convert("RGB"))
    assert any(p.shape == saved.shape and np.array_equal(p, saved) for p in pics)  # the same pixels, lossless
    record = (runs[0] / f"run-{runs[0].name.rsplit('-', 1)[-1]}.wandb").read_bytes()
    for text in (b"table9_probe/digits/small", b"dasslab"):
        assert text in record
