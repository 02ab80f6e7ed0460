"""Each stage runs end to end in seconds with debug=smoke and leaves what docs/method.md §5 promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dasslab.commands.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data_dir):
    """One source model and one diffusion model shared by the tests of this module."""
    from hydra import compose, initialize_config_dir

    root = tmp_path_factory.mktemp("runs")
    os.environ["DASSLAB_DATA"] = str(digits_data_dir)
    os.environ["DASSLAB_ROOT"] = str(root)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        src = compose("train", SMOKE + ["stage=source", f"paths.output_dir={root / 'source'}"])
        dif = compose("train", SMOKE + ["stage=diffusion", f"paths.output_dir={root / 'diffusion'}"])
    record = run(src)
    ckpt = run(dif)
    return {"root": root, "source": root / "source", "source_record": record,
            "diffusion_ckpt": Path(ckpt["checkpoint"])}


def test_source_stage_leaves_metrics_and_checkpoint(trained):
    out = trained["source"]
    rec = json.loads((out / "metrics.json").read_text())
    assert set(rec) >= {"miou", "per_class_iou", "classes", "split", "subsets"}
    assert rec["split"] == "target_val" and len(rec["per_class_iou"]) == 11
    assert 0.0 <= rec["miou"] <= 100.0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "overlays.png").is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and info["effective_batch_size"] == 4 and "torch" in info["versions"]
    assert info["batch_size_warning"]  # 4 != the paper's 2


def test_eval_cli_reads_the_checkpoint(trained, tmp_path, digits_data_dir):
    env = dict(os.environ, DASSLAB_DATA=str(digits_data_dir), DASSLAB_ROOT=str(tmp_path))
    ckpt = trained["source"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "dasslab.commands.eval", f"ckpt={ckpt}", "dataset=digits",
                           "dataset.generate.n_train=120", "dataset.generate.n_val=40", "data.num_workers=0",
                           "data.limit_val=16", "dataset.image_size=[32,64]",
                           f"paths.output_dir={out}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "metrics.json").read_text())
    # the same model on the same split (whole-image inference) gives the training run's mIoU
    assert rec["miou"] == pytest.approx(trained["source_record"]["miou"], abs=1e-6)
    assert (out / ".hydra" / "config.yaml").is_file()


def test_sliding_window_equals_whole_for_a_window_of_the_image_size(trained):
    from dasslab.checkpoints import load_segmenter
    from dasslab.segmentation.inference import predict_logits

    model = load_segmenter(trained["source"] / "checkpoints" / "last.ckpt").model
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    whole = predict_logits(model, x, "whole")
    slide = predict_logits(model, x, "slide", crop=[32, 64], stride=[16, 16])
    torch.testing.assert_close(slide, whole)
    overlapping = predict_logits(model, x, "slide", crop=[32, 32], stride=[32, 16])
    assert overlapping.shape == whole.shape and torch.isfinite(overlapping).all()


def test_translate_export_resumes_after_interruption(trained, compose, tmp_path, monkeypatch):
    import dasslab.export.translations as tr
    from dasslab.export.translations import export_translations

    def cfg(out):
        return compose(*SMOKE, f"translate.diffusion_ckpt={trained['diffusion_ckpt']}", "translate.depths=[3,6]",
                       "translate.num_steps=3", "translate.batch_size=3", "translate.limit=7",
                       f"translate.out_dir={out}")

    export_translations(cfg(tmp_path / "full"))

    real_write = tr.atomic_write_png
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 9:  # in the middle of a chunk of depth 3
            raise KeyboardInterrupt
        return real_write(path, data)

    monkeypatch.setattr(tr, "atomic_write_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        export_translations(cfg(tmp_path / "resumed"))
    monkeypatch.setattr(tr, "atomic_write_png", real_write)
    partial = sorted(p.name for p in (tmp_path / "resumed" / "n0003" / "source" / "images").iterdir())
    assert 0 < len(partial) < 7
    export_translations(cfg(tmp_path / "resumed"))

    for depth in ("n0003", "n0006"):
        for kind in ("images", "labels"):
            a = sorted((tmp_path / "full" / depth / "source" / kind).iterdir())
            b = sorted((tmp_path / "resumed" / depth / "source" / kind).iterdir())
            assert [p.name for p in a] == [p.name for p in b] and len(a) == 7
            for pa, pb in zip(a, b):
                assert pa.read_bytes() == pb.read_bytes(), pb
    leftovers = [p for p in (tmp_path / "resumed").rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert (tmp_path / "resumed" / "grid.png").is_file()
    manifest = json.loads((tmp_path / "resumed" / "n0003" / "manifest.json").read_text())
    assert manifest["count"] == 7 and manifest["skipped_done"] > 0


def test_exported_translation_is_a_folder_dataset(trained, tmp_path, compose):
    from dasslab.data.folder import FolderDomain
    from dasslab.export.translations import export_translations

    c = compose(*SMOKE, f"translate.diffusion_ckpt={trained['diffusion_ckpt']}", "translate.depths=[0,5]",
                "translate.limit=4", f"translate.out_dir={tmp_path / 'x'}")
    n0, n5 = export_translations(c)
    a, b = FolderDomain(n0, "source"), FolderDomain(n5, "source")
    assert len(a) == len(b) == 4 and a.num_classes == 11
    # phi^0 is the identity (up to the uint8 round trip) and labels are kept
    src = FolderDomain(Path(os.environ["DASSLAB_DATA"]) / "digits", "source")
    from dasslab.data.transforms import build_transform

    src.transform = build_transform(False, resize=list(c.dataset.image_size))
    for i in range(4):
        assert torch.allclose(a[i]["image"], src[i]["image"], atol=1 / 127.5 + 1e-6)
        assert torch.equal(b[i]["label"], src[i]["label"])
        assert not torch.allclose(b[i]["image"], src[i]["image"], atol=0.02)


@pytest.mark.parametrize("override, match", [
    ("translate.depths=[1001]", "1001"),
    ("dataset.image_size=[30,30]", "divisible"),
])
def test_translate_bad_input(trained, compose, tmp_path, override, match):
    from dasslab.export.translations import export_translations

    c = compose(*SMOKE, f"translate.diffusion_ckpt={trained['diffusion_ckpt']}", "translate.limit=2",
                f"translate.out_dir={tmp_path / 'x'}", "dataset.crop_size=[16,16]", override)
    with pytest.raises(ValueError, match=match):
        export_translations(c)


def test_translate_unwritable_folder(trained, compose, tmp_path):
    from dasslab.export.translations import export_translations

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    c = compose(*SMOKE, f"translate.diffusion_ckpt={trained['diffusion_ckpt']}", "translate.limit=2",
                f"translate.out_dir={blocker / 'sub'}")
    from dasslab.errors import ConfigError

    with pytest.raises(ConfigError, match="translate.out_dir"):
        export_translations(c)


def test_missing_diffusion_checkpoint(compose, tmp_path):
    from dasslab.export.translations import export_translations

    c = compose(*SMOKE, f"translate.diffusion_ckpt={tmp_path / 'nope.ckpt'}")
    from dasslab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="diffusion_ckpt=.*not found"):
        export_translations(c)


def test_pipeline_reuses_finished_stages(compose, tmp_path, capsys):
    args = [*SMOKE, "stage=pipeline", "pipeline.rows=[source_only,oracle]"]
    first = run(compose(*args, f"paths.output_dir={tmp_path / 'p1'}"))
    assert set(first) == {"source_only", "oracle"}
    assert "running" in capsys.readouterr().out
    second = run(compose(*args, f"paths.output_dir={tmp_path / 'p2'}"))
    assert "reusing" in capsys.readouterr().out
    assert second["source_only"]["miou"] == first["source_only"]["miou"]
    assert json.loads((tmp_path / "p2" / "results.json").read_text()) == second
    assert "source_only" in (tmp_path / "p2" / "results.md").read_text()
    # a different setting is a different run
    run(compose(*args, "seed=1", f"paths.output_dir={tmp_path / 'p3'}"))
    assert "running" in capsys.readouterr().out


def _folder_tree(root: Path, classes: int, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(f"class{i}" for i in range(classes)) + "\n")
    for domain, n, labeled in (("source", 12, True), ("target", 12, False), ("target_val", 6, True)):
        (root / domain / "images").mkdir(parents=True)
        if labeled:
            (root / domain / "labels").mkdir(parents=True)
        for i in range(n):
            lab = rng.integers(0, classes, size=(size[0] // 5, size[1] // 5)).repeat(5, 0).repeat(5, 1)
            img = (lab[..., None] * (200 // classes) + rng.integers(0, 40, (*lab.shape, 3))).astype(np.uint8)
            if domain == "target":
                img = 255 - img
            Image.fromarray(img).save(root / domain / "images" / f"im{i:03d}.jpg")
            if labeled:
                Image.fromarray(lab.astype(np.uint8)).save(root / domain / "labels" / f"im{i:03d}.png")
    return root


@pytest.mark.parametrize("classes, size", [(3, (40, 60)), (7, (25, 35))])
def test_folder_dataset_trains_and_evaluates(compose, tmp_path, classes, size):
    root = _folder_tree(tmp_path / "mydata", classes, size)
    out = tmp_path / "run"
    rec = run(compose("stage=source", "debug=smoke", "dataset=folder", f"dataset.root={root}",
                      f"dataset.image_size=[{size[0] // 8 * 8},{size[1] // 8 * 8}]", "dataset.crop_size=[16,16]",
                      f"paths.output_dir={out}"))
    assert list(rec["per_class_iou"]) == [f"class{i}" for i in range(classes)]
    assert (out / "metrics.json").is_file() and (out / "checkpoints" / "last.ckpt").is_file()


def test_folder_dataset_with_a_short_classes_file_fails_clearly(compose, tmp_path):
    from dasslab.data.base import DataError

    root = _folder_tree(tmp_path / "mydata", 4, (20, 20))
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="classes.txt"):
        run(compose("stage=source", "debug=smoke", "dataset=folder", f"dataset.root={root}",
                    "dataset.image_size=[16,16]", "dataset.crop_size=[16,16]",
                    f"paths.output_dir={tmp_path / 'run'}"))


def test_gta5_cityscapes_smoke(compose, tmp_path, make_gta5, cityscapes_fixture):
    import numpy as np

    ids = np.array([7, 8, 11, 21, 23, 26, 0, 1]).repeat(8).reshape(8, 8).repeat(4, 0).repeat(8, 1)
    gta = make_gta5([ids, ids.T[:32, :64] if False else np.roll(ids, 3, 1)] * 3)
    city = tmp_path / "cityscapes"
    for split in ("train", "val"):
        for kind, pattern in (("leftImg8bit", "*_leftImg8bit.png"), ("gtFine", "*_gtFine_label*Ids.png")):
            src = cityscapes_fixture / kind / "val" / "frankfurt"
            dst = city / kind / split / "frankfurt"
            dst.mkdir(parents=True)
            for f in src.glob(pattern):
                (dst / f.name).symlink_to(f)
    out = tmp_path / "run"
    rec = run(compose("stage=source", "debug=smoke", "dataset=gta5_cityscapes", f"dataset.source.root={gta}",
                      f"dataset.target.root={city}", f"paths.output_dir={out}"))
    assert len(rec["per_class_iou"]) == 19 and rec["classes"][0] == "road"


def test_missing_dataset_root_is_a_clear_error(compose, tmp_path):
    from dasslab.data.base import DataError

    with pytest.raises(DataError, match="dataset.source.root"):
        run(compose("stage=source", "debug=smoke", "dataset=gta5_cityscapes",
                    f"dataset.source.root={tmp_path / 'nope'}", f"paths.output_dir={tmp_path / 'run'}"))


def test_guided_export_uses_the_guide_and_records_the_shift(trained, compose, tmp_path):
    from dasslab.export.translations import export_translations

    guide = trained["source"] / "checkpoints" / "last.ckpt"
    common = [*SMOKE, f"diffusion_ckpt={trained['diffusion_ckpt']}", "translate.depths=[6]", "translate.limit=4",
              "translate.num_steps=3"]
    (plain,) = export_translations(compose(*common, f"translate.out_dir={tmp_path / 'plain'}"))
    (guided,) = export_translations(compose(*common, "guidance=sgg", "guidance.scale=50", f"guide_ckpt={guide}",
                                            f"translate.out_dir={tmp_path / 'guided'}"))
    manifest = json.loads((guided / "manifest.json").read_text())
    assert manifest["settings"]["guidance"]["mode"] == "sgg" and len(manifest["shift_over_sigma_per_step"]) == 3
    assert all(v > 0 for v in manifest["shift_over_sigma_per_step"])
    assert (guided / "guidance_shift.png").is_file()
    # the settings left at auto were calibrated at the export's depth (no guide for the plain one), and used
    for folder in (plain, guided):
        cal = json.loads((folder.parent / "calibration" / "calibration.json").read_text())
        used = json.loads((folder / "manifest.json").read_text())["translated_with"]
        assert [r["depth"] for r in cal["depths"]] == [6] and manifest["settings"]["calibration"] is not None
        row = cal["depths"][0]
        assert used["variance"] == (row["variance"] if folder == guided else row["variance_unguided"])
    assert used["shift"] == cal["depths"][0]["shift"] is not None        # guided: a calibrated shift
    a = sorted((plain / "source" / "images").iterdir())
    b = sorted((guided / "source" / "images").iterdir())
    assert any(pa.read_bytes() != pb.read_bytes() for pa, pb in zip(a, b))


def test_guidance_without_a_guide_is_a_clear_error(trained, compose, tmp_path):
    from dasslab.export.translations import export_translations

    with pytest.raises(ValueError, match="guide_ckpt"):
        export_translations(compose(*SMOKE, f"diffusion_ckpt={trained['diffusion_ckpt']}", "guidance=gsg_only",
                                    f"translate.out_dir={tmp_path / 'x'}"))


GUIDED = [(g, "alternate") for g in ("sgg", "lcg_only", "gsg_only", "none")] + [
    ("sgg", a) for a in ("lcg_then_gsg", "gsg_then_lcg", "randmix")]  # arrangements matter with both on


@pytest.mark.parametrize("guidance, arrangement", GUIDED)
def test_every_guidance_and_arrangement_runs(trained, compose, tmp_path, guidance, arrangement):
    from dasslab.export.translations import export_translations

    (out,) = export_translations(compose(
        *SMOKE, f"diffusion_ckpt={trained['diffusion_ckpt']}",
        f"guide_ckpt={trained['source'] / 'checkpoints' / 'last.ckpt'}",
        f"guidance={guidance}", f"arrangement={arrangement}", "translate.depths=[4]", "translate.limit=2",
        "translate.num_steps=4", "translate.grid_images=0", f"translate.out_dir={tmp_path}"))
    manifest = json.loads((out / "manifest.json").read_text())
    shifts = manifest["shift_over_sigma_per_step"]
    assert len(shifts) == 4
    assert all(s > 0 for s in shifts) == (guidance != "none")


def test_nonfinite_guidance_is_skipped_counted_and_never_reaches_the_image(trained, compose, tmp_path, monkeypatch):
    import dasslab.guidance as guidance_pkg
    from dasslab.export.translations import export_translations

    common = [*SMOKE, f"diffusion_ckpt={trained['diffusion_ckpt']}", "translate.depths=[5]", "translate.limit=4",
              "translate.batch_size=2", "translate.num_steps=3", "translate.grid_images=0"]
    (plain,) = export_translations(compose(*common, f"translate.out_dir={tmp_path / 'plain'}"))
    monkeypatch.setattr(guidance_pkg, "make_guidance",
                        lambda *a, **k: (lambda x, mean, var, step, n: torch.full_like(x, float("nan"))))
    with pytest.warns(Warning, match="non-finite|NaN|nan|finite"):
        (bad,) = export_translations(compose(*common, "guidance=sgg",
                                             f"guide_ckpt={trained['source'] / 'checkpoints' / 'last.ckpt'}",
                                             f"translate.out_dir={tmp_path / 'nan'}"))
    assert json.loads((bad / "manifest.json").read_text())["skipped_guidance_steps"] == 2 * 3
    for a, b in zip(sorted((plain / "source" / "images").iterdir()), sorted((bad / "source" / "images").iterdir())):
        assert a.read_bytes() == b.read_bytes()


def test_wandb_logger_runs_offline(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "run"
    run(compose("stage=diffusion", *SMOKE[:-1], "logger=wandb", "diffusion.sample_every=2",
                f"paths.output_dir={out}"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs, list(out.iterdir())
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())
    assert list((out / "samples").glob("*.png"))


def test_translate_rerun_with_other_settings_refuses_stale_images(trained, compose, tmp_path):
    from dasslab.export.translations import StaleOutputError, export_translations

    out = tmp_path / "t"
    base = [*SMOKE, f"translate.diffusion_ckpt={trained['diffusion_ckpt']}", "translate.depths=[4]",
            "translate.num_steps=2", "translate.limit=4", f"translate.out_dir={out}"]
    export_translations(compose(*base))
    manifest = json.loads((out / "n0004" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["diffusion_ckpt"]["size"] > 0
    before = {p.name: p.read_bytes() for p in (out / "n0004" / "source" / "images").iterdir()}
    for other in ("seed=1", "translate.num_steps=3",
                  f"guide_ckpt={trained['source'] / 'checkpoints' / 'last.ckpt'}"):
        extra = [other] + (["guidance=sgg"] if other.startswith("guide_ckpt") else [])
        with pytest.raises(StaleOutputError, match="translate.out_dir=.*other settings"):
            export_translations(compose(*base, *extra))
    after = {p.name: p.read_bytes() for p in (out / "n0004" / "source" / "images").iterdir()}
    assert after == before
    export_translations(compose(*base))          # the same settings: resumes (nothing to do)
