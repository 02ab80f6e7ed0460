"""Label-free calibration (dasslab/calibration): the choices, the plan a run uses, the job, and what it reads."""
# ruff: noqa: F811  (the fixture `trained` comes from test_ptl and is redefined as a parameter)

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_ptl import SMOKE, trained  # noqa: F401  (the fixture: a source model and a DDPM, 3 steps each)

from dasslab.calibration import AUTO, TranslationPlan, TranslationSettings
from dasslab.calibration.choose import bisect, choose_shift, choose_t_max, shift_feasible
from dasslab.calibration.plan import calibration_depths, wants_calibration
from dasslab.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


# --------------------------------------------------------------------------- the choices (closed forms)
def test_t_max_is_the_first_depth_on_the_domain_score_plateau():
    probe = [{"depth": d, "domain": s} for d, s in [(100, 0.1), (200, 0.4), (300, 0.71), (400, 0.74), (500, 0.75)]]
    assert choose_t_max(probe, plateau=0.05) == 300          # 0.71 >= 0.75 - 0.05; 0.40 is not
    assert choose_t_max(probe, plateau=0.0) == 500
    assert choose_t_max(probe, plateau=1.0) == 100
    with pytest.raises(ValueError):
        choose_t_max([], 0.05)


def test_bisect_finds_the_variance_whose_hf_matches_the_target():
    calls = []

    def ratio(v):                      # hf ratio rising with v, 1 at v = 0.3
        calls.append(v)
        return 0.6 + 4 / 3 * v

    v, tried = bisect(ratio, steps=6, tolerance=0.02)
    assert abs(ratio(v) - 1) <= 0.02 and v == pytest.approx(0.3, abs=0.02)
    assert [t[0] for t in tried] == calls[: len(tried)] and tried[0][0] == 0.5   # halving from the middle
    v, tried = bisect(lambda v: 2.0 + v, steps=3, tolerance=0.1)     # too rough everywhere: the smoothest end
    assert v == 0.0 and tried[-1] == (0.0, 2.0)
    v, tried = bisect(lambda v: 0.2 + 0.1 * v, steps=3, tolerance=0.1)
    assert v == 1.0
    v, tried = bisect(lambda v: pytest.fail("measured"), steps=3, tolerance=0.1, seen=[(0.4, 1.05)])
    assert v == 0.4 and tried == [(0.4, 1.05)]                        # a setting measured before that fits


def test_the_shift_is_the_knee_of_the_guide_agreement_among_feasible_shifts():
    unguided = {"agreement": 10.0, "domain": 0.8, "hf_smooth": 1.0}
    rows = [{"shift": 0.1, "agreement": 40.0, "domain": 0.8, "hf_smooth": 1.0},
            {"shift": 0.2, "agreement": 60.0, "domain": 0.79, "hf_smooth": 1.05},
            {"shift": 0.4, "agreement": 64.0, "domain": 0.78, "hf_smooth": 1.08},
            {"shift": 0.8, "agreement": 90.0, "domain": 0.6, "hf_smooth": 1.4}]     # undoes the translation
    # feasible: 0.1, 0.2, 0.4; best gain 54; 0.9 of it = 48.6 -> 58.6: the smallest reaching it is 0.2
    assert choose_shift(rows, unguided, hf_tolerance=0.1, domain_drop=0.05, fraction=0.9) == (0.2, True)
    assert choose_shift(rows, unguided, 0.1, 0.05, fraction=1.0) == (0.4, True)
    assert not shift_feasible(rows[3], unguided, 0.1, 0.05)
    rough = [{**r, "hf_smooth": 1.3} for r in rows]                  # texture no variance removes: artefacts
    assert choose_shift(rough, unguided, 0.1, 0.05, 0.9) == (0.1, False)
    # where even the unguided chain is rougher than the target, guidance is judged by what it adds
    assert shift_feasible({"domain": 0.8, "hf_smooth": 1.45}, {**unguided, "hf_smooth": 1.4}, 0.1, 0.05)


# --------------------------------------------------------------------------- the plan a run uses
def _settings(**kw):
    base = dict(N=6, T=1000, t_max=AUTO, variance=AUTO, shift=AUTO, guided=True, num_steps=10)
    return TranslationSettings(**{**base, **kw})


CALIBRATION = {"t_max": {"value": 400, "chosen": True},
               "depths": [{"depth": 100, "variance": 0.5, "variance_unguided": 0.6, "shift": 0.4},
                          {"depth": 400, "variance": 0.1, "variance_unguided": 0.25, "shift": 0.2}]}


def test_the_plan_uses_the_nearest_calibrated_depth_and_given_values_as_given():
    plan = TranslationPlan.of(_settings(), CALIBRATION)
    assert plan.t_max == 400
    assert (plan.variance(100), plan.shift(100)) == (0.5, 0.4)
    assert (plan.variance(300), plan.shift(300)) == (0.1, 0.2)       # nearest: 400
    assert plan.variance(380, guided=False) == 0.25
    given = TranslationPlan.of(_settings(t_max=600, variance="posterior"), CALIBRATION)
    assert given.t_max == 600 and given.variance(100) == "posterior" and given.shift(100) == 0.4
    assert given.record()["given"] == {"ptl.t_max": 600, "translate.variance": "posterior"}
    assert TranslationPlan.of(_settings(t_max=None, variance="beta", shift=0.1), None).record()["auto"] == []
    with pytest.raises(ConfigError, match="ptl.t_max=auto: no calibration"):
        TranslationPlan.of(_settings(), None)


def test_calibration_depths_cover_the_walk():
    assert calibration_depths(6, 600, 1000, 12) == [(n, 100 * n) for n in range(1, 7)]
    few = calibration_depths(600, None, 1000, 4)                       # the paper's t_n = n, measured at 4
    assert [n for n, _ in few] == [1, 201, 400, 600] and few[-1] == (600, 600)   # round(1 + i * 599 / 3)


def test_auto_needs_calibrate_auto_and_one_line_names_the_setting(compose):
    cfg = compose("experiment=demo", "translate.calibrate=off")
    with pytest.raises(ConfigError, match=r"^ptl.t_max=auto needs translate.calibrate=auto"):
        TranslationSettings.of(cfg.ptl, cfg.translate, cfg.guidance, 1000)
    cfg = compose("experiment=demo", "translate.calibrate=maybe")
    with pytest.raises(ConfigError, match="translate.calibrate='maybe'"):
        TranslationSettings.of(cfg.ptl, cfg.translate, cfg.guidance, 1000)
    paper = compose("experiment=table2f_full")                       # the paper's settings, as given
    assert TranslationSettings.of(paper.ptl, paper.translate, paper.guidance, 1000).auto_keys() == []


def test_the_calibrate_job_is_wanted_by_rows_that_translate_with_auto_settings(compose):
    from dasslab.workflow.plan import plan

    cfg = compose("experiment=demo", *SMOKE[1:], "pipeline.rows=[ptl_none,ceiling,baseline,full,paper]")
    planned, _ = plan(cfg, list(cfg.pipeline.rows))
    calib = {n: j for n, j in planned.items() if j.stage == "calibrate"}
    # full (dasslab's guidance) and paper (the paper's) measure their own guidance; baseline is unguided
    assert len(calib) == 3 and len({j.key for j in calib.values()}) == 3
    assert "calibrate" in planned["full"].needs and planned["full"].cfg.translate.calibration.endswith(
        "calibration.json")
    assert not any(n.startswith("calibrate") for n in planned["ptl_none"].needs + planned["ceiling"].needs)
    assert planned["paper"].cfg.guidance.lcg_input == "masked"
    paper_cal = next(n for n in planned["paper"].needs if n.startswith("calibrate"))
    assert planned[paper_cal].cfg.guidance.lcg_input == "masked"   # inherited from the row it calibrates
    assert planned["ptl_none"].cfg.ptl.t_max == AUTO and not wants_calibration(planned["ptl_none"].cfg)
    # every setting given: no calibration at all
    given = compose("experiment=demo", *SMOKE[1:], "pipeline.rows=[full]", "translate.calibrate=off",
                    "translate.variance=posterior", "ptl.t_max=600", "guidance.shift=0.3")
    planned, _ = plan(given, ["full"])
    assert not any(j.stage == "calibrate" for j in planned.values())


# --------------------------------------------------------------------------- the job on real (tiny) models
TINY = ["calibrate.images=6", "calibrate.reference_images=12", "calibrate.classifier_images=24",
        "calibrate.classifier_steps=5", "calibrate.probe_depths=[20,60]", "calibrate.bisection_steps=3",
        "calibrate.shifts=[0.1,0.4]", "calibrate.max_depths=2", "calibrate.batch_size=6"]


def _folder_pair(src_root: Path, out: Path, smooth: bool, labels: str = "copy") -> Path:
    """A ``folder`` pair built from the digits cache: its source, and its target made smooth (blurred) or not;
    the target-train labels copied, or replaced by bytes no decoder reads (``labels="garbage"``)."""
    import cv2

    shutil.copytree(src_root / "source", out / "source")
    shutil.copytree(src_root / "target_val", out / "target_val")
    (out / "target" / "images").mkdir(parents=True)
    (out / "target" / "labels").mkdir()
    for p in sorted((src_root / "target" / "images").glob("*.png")):
        img = np.asarray(Image.open(p).convert("RGB"))
        if smooth:
            img = cv2.GaussianBlur(img, (0, 0), 2.0)
        Image.fromarray(img).save(out / "target" / "images" / p.name)
        lab = out / "target" / "labels" / p.name
        if labels == "copy":
            shutil.copy2(src_root / "target" / "labels" / p.name, lab)
        else:
            lab.write_bytes(b"not a png")
            lab.chmod(0)
    shutil.copy2(src_root / "classes.txt", out / "classes.txt")
    return out


def _calibrate(compose, trained, root: Path, out: Path, *extra) -> dict:
    from dasslab.calibration.calibrate import run_calibration

    cfg = compose("experiment=demo", "debug=smoke", *TINY, "dataset=folder", f"dataset.root={root}",
                  "dataset.image_size=[32,32]", *extra)
    settings = TranslationSettings.of(cfg.ptl, cfg.translate, cfg.guidance, 1000)
    return run_calibration(cfg.dataset, cfg.calibrate, settings, cfg.guidance, cfg.arrangement,
                           str(trained["source"]), str(trained["diffusion"]), 0, out)


def test_a_pair_whose_target_is_smoother_gets_other_choices(compose, trained, digits_data_dir, tmp_path,
                                                            one_torch_thread):
    textured = _calibrate(compose, trained, _folder_pair(digits_data_dir / "digits", tmp_path / "a", False),
                          tmp_path / "ca")
    smooth = _calibrate(compose, trained, _folder_pair(digits_data_dir / "digits", tmp_path / "b", True),
                        tmp_path / "cb")
    assert smooth["reference"]["hf_target"] < 0.7 * textured["reference"]["hf_target"]
    v = [[r["variance"] for r in c["depths"]] for c in (textured, smooth)]
    assert v[0] != v[1] and all(b <= a for a, b in zip(*v))           # a smoother target: a smoother chain
    for c, out in ((textured, tmp_path / "ca"), (smooth, tmp_path / "cb")):
        assert json.loads((out / "calibration.json").read_text())["depths"] == json.loads(json.dumps(c["depths"]))
        assert (out / "calibration.png").stat().st_size > 0
        assert [r["depth"] for r in c["depths"]] == [t for _, t in calibration_depths(c["N"], c["t_max"]["value"],
                                                                                     1000, 2)]


def test_calibration_reads_no_target_label_and_no_val_or_test_image(compose, trained, digits_data_dir, tmp_path,
                                                                    monkeypatch, one_torch_thread):
    """Unreadable target-train labels change nothing; the only splits it builds are source and target."""
    import dasslab.data.datamodule as dm

    built = []
    real = dm.build_dataset
    monkeypatch.setattr(dm, "build_dataset", lambda cfg, key, *a, **k: (built.append(key), real(cfg, key, *a, **k))[1])
    a = _calibrate(compose, trained, _folder_pair(digits_data_dir / "digits", tmp_path / "a", False), tmp_path / "ca")
    b = _calibrate(compose, trained, _folder_pair(digits_data_dir / "digits", tmp_path / "b", False, "garbage"),
                   tmp_path / "cb")
    assert set(built) == {"source", "target"}

    def choices(c):   # everything but the timings
        text = json.dumps({k: c[k] for k in ("t_max", "depths", "reference")})
        return json.loads(text, object_hook=lambda d: {k: v for k, v in d.items() if k != "seconds"})

    assert choices(a) == choices(b)
