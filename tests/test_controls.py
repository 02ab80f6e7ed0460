"""The control rows (ptl_none, ceiling), optional upstreams (watch) and the results' comparison columns."""

import pytest
from test_stages import _folder_tree

from dasslab.workflow.plan import plan
from dasslab.workflow.results import MIN_GAP, results_markdown, summarize

SEEDS = (0, 1, 2)


def seeded(row: str, values) -> dict:
    return {f"{row}@seed{s}": {"miou": v, "run_dir": f"/runs/{row}/{s}"} for s, v in zip(SEEDS, values)}


# --------------------------------------------------------------------------- the summary
@pytest.fixture
def hand_made():
    """Three seeds, a source-only model per seed, one oracle run, a ceiling per seed."""
    return {**seeded("source_only", [20.0, 22.0, 24.0]), "oracle": {"miou": 60.0, "run_dir": "/runs/oracle"},
            **seeded("ceiling", [50.0, 52.0, 48.0]), **seeded("ptl_none", [21.0, 21.0, 25.0]),
            **seeded("baseline", [23.0, 22.0, 26.0]), **seeded("full", [30.0, 36.0, 33.0])}


def test_ceiling_share_paired_gains_wins_and_beats_by_hand(hand_made):
    out = summarize(hand_made)
    so, ceiling, oracle = 22.0, 50.0, 60.0                          # means over the seeds
    full = out["full"]
    assert full["miou"] == 33.0 and full["std"] == pytest.approx(3.0)
    assert full["gap_closed"] == round((33 - so) / (oracle - so), 4) == 0.2895
    assert full["ceiling_share"] == round((33 - so) / (ceiling - so), 4) == 0.3929
    assert full["paired_gain"] == {"0": 10.0, "1": 14.0, "2": 9.0}  # 30-20, 36-22, 33-24: seed by seed
    assert full["paired_gain_mean"] == 11.0 and (full["wins"], full["n_paired"]) == (3, 3)
    assert full["beats_ptl_none"] == "3/3" and full["beats_baseline"] == "3/3"
    base = out["baseline"]
    assert base["paired_gain"] == {"0": 3.0, "1": 0.0, "2": 2.0} and base["wins"] == 2   # a tie is no win
    assert base["beats_ptl_none"] == "3/3" and "beats_baseline" not in base
    none = out["ptl_none"]
    assert none["paired_gain"] == {"0": 1.0, "1": -1.0, "2": 1.0} and none["wins"] == 2
    assert none["ceiling_share"] == round((22 + 1 / 3 - so) / (ceiling - so), 4) == 0.0119
    assert none["beats_baseline"] == "0/3" and "beats_ptl_none" not in none
    assert out["ceiling"]["gap_closed"] == round((50 - so) / (oracle - so), 4) and "ceiling_share" not in out["ceiling"]
    assert out["ceiling"]["paired_gain"] == {"0": 30.0, "1": 30.0, "2": 24.0}
    assert out["source_only"]["beats_ptl_none"] == "1/3" and "paired_gain" not in out["source_only"]
    assert "paired_gain" not in out["oracle"]                        # run once: no seed to pair
    assert out["oracle"]["beats_ptl_none"] == "3/3"                  # its one run beside each seed's


def test_a_shared_source_only_pairs_with_its_one_value_and_missing_seeds_are_not_paired():
    res = {"source_only": {"miou": 20.0}, **seeded("full", [30.0, 36.0, 19.0]), "full@seed7": {"miou": 25.0},
           "ceiling@seed0": {"miou": 40.0}}
    out = summarize(res)
    assert out["full"]["paired_gain"] == {"0": 10.0, "1": 16.0, "2": -1.0, "7": 5.0}
    assert (out["full"]["wins"], out["full"]["n_paired"]) == (3, 4)
    assert out["full"]["ceiling_share"] == (27.5 - 20) / (40 - 20)   # a ceiling run with one seed: its mean
    res = {**seeded("source_only", [20.0, 22.0, 24.0]), **seeded("full", [30.0, 36.0, 33.0]),
           "full@seed7": {"miou": 25.0}}
    assert summarize(res)["full"]["n_paired"] == 3                 # seed 7 has no source-only run
    assert summarize(res)["full"]["std"] == pytest.approx((66 / 3) ** 0.5)   # 30, 36, 33, 25: mean 31


def test_a_ceiling_too_close_to_source_only_gives_no_share_but_a_note():
    out = summarize({"source_only": {"miou": 20.0}, "ceiling": {"miou": 20.0 + MIN_GAP / 2}, "full": {"miou": 25.0}})
    assert "ceiling_share" not in out["full"] and "share of ceiling is not reported" in out["ceiling"]["note"]
    one = summarize({"full@seed0": {"miou": 25.0}})["full"]
    assert one["std"] is None and one["seeds"] == [0]                # one seed: no spread measured


def test_results_markdown_has_the_comparison_columns_and_keeps_skip_reasons(hand_made):
    why = "needs dataset.target_train_labeled, which dataset=folder does not have"
    hand_made = {k: v for k, v in hand_made.items() if not k.startswith("ceiling")}
    md = results_markdown(summarize(hand_made, {"ceiling": why}), "digits")
    lines = md.splitlines()
    assert lines[2] == ("| row | mIoU (± std, seeds) | gap closed | share of ceiling | paired gain per seed | "
                        "beats ptl_none | beats baseline |")
    full = next(line for line in lines if line.startswith("| full |"))
    assert "33.00 ± 3.00 (3 seeds)" in full and "28.9 %" in full
    assert "+10.00 / +14.00 / +9.00 (mean +11.00, 3/3 > 0)" in full and full.endswith("| 3/3 | 3/3 |")
    assert f"| ceiling | n/a | skipped: {why} |" in md


# --------------------------------------------------------------------------- the plan
ROWS = "pipeline.rows=[source_only,oracle,ptl_none,ceiling,baseline,full]"


def test_controls_keep_the_budget_need_no_ddpm_and_rows_that_translate_watch_the_judge(compose, tmp_path):
    cfg = compose("debug=smoke", "stage=pipeline", "pipeline.seeds=[0,1]", "ptl.K=7", "ptl.lr_schedule=domain",
                  f"paths.output_dir={tmp_path}")
    planned, skipped = plan(cfg, ["ptl_none", "ceiling", "baseline", "full"])
    assert skipped == {}
    judge = str(planned["judge"].checkpoint)
    for s in (0, 1):
        full = planned[f"full@seed{s}"].cfg
        assert full.ptl.watch.judge_ckpt == judge and "judge" in planned[f"full@seed{s}"].needs
        assert planned[f"baseline@seed{s}"].cfg.ptl.watch.judge_ckpt == judge
        for row, mode in (("ptl_none", "none"), ("ceiling", "ceiling")):
            job = planned[f"{row}@seed{s}"]
            assert job.needs == ["source_only"] and job.cfg.ptl.name == mode and job.stage == "adapt"
            assert job.cfg.segmenter.init_ckpt == str(planned["source_only"].checkpoint)
            assert not job.cfg.get("diffusion_ckpt") and not (job.cfg.guidance.lcg or job.cfg.guidance.gsg)
            assert job.cfg.ptl.watch.judge_ckpt is None
            for key in ("N", "K", "max_steps", "lr_schedule"):     # the adaptation budget of the method's rows
                assert job.cfg.ptl[key] == full.ptl[key]
            assert (job.cfg.ptl.K, job.cfg.ptl.lr_schedule) == (7, "domain")
            assert job.cfg.adapt.optim == full.adapt.optim and job.cfg.augment == full.augment


def test_pipeline_watch_false_plans_no_judge(compose, tmp_path):
    cfg = compose("debug=smoke", "stage=pipeline", "pipeline.watch=false", f"paths.output_dir={tmp_path}")
    planned, _ = plan(cfg, ["baseline", "full"])
    assert "judge" not in planned
    assert all(planned[r].cfg.ptl.watch.judge_ckpt is None for r in ("baseline", "full"))


def _keys(compose, tmp_path, *overrides) -> dict[str, str]:
    planned, _ = plan(compose("debug=smoke", "stage=pipeline", *overrides, f"paths.output_dir={tmp_path}"),
                      ["ptl_none", "ceiling", "baseline"])
    return {name: job.key for name, job in planned.items()}


def test_control_cache_keys_leave_out_what_they_do_not_read(compose, tmp_path):
    base = _keys(compose, tmp_path)
    ddpm = _keys(compose, tmp_path, "diffusion.max_steps=7", "guidance.shift=0.2", "translate.num_steps=3")
    for row in ("ptl_none", "ceiling"):
        assert ddpm[row] == base[row]                  # no DDPM, no translation: the same run
    assert ddpm["baseline"] != base["baseline"] and ddpm["diffusion"] != base["diffusion"]
    budget = _keys(compose, tmp_path, "ptl.K=7")
    assert budget["ptl_none"] != base["ptl_none"] and budget["ceiling"] != base["ceiling"]


def test_on_a_pair_without_target_labels_ceiling_is_skipped_and_watch_stays_null(compose, tmp_path, capsys):
    from dasslab.commands.train import run

    root = _folder_tree(tmp_path / "pair", classes=4, size=(40, 56))
    cfg = compose("experiment=demo", "debug=smoke", "dataset=folder", f"dataset.root={root}", ROWS,
                  "pipeline.dry_run=true", f"paths.output_dir={tmp_path / 'p'}")
    planned, skipped = plan(cfg, list(cfg.pipeline.rows))
    assert set(skipped) == {"oracle", "ceiling"} and "target_train_labeled" in skipped["ceiling"]
    assert "judge" not in planned and planned["ptl_none"].cfg.ptl.name == "none"
    for row in ("baseline", "full"):                   # still planned, the judge's key left null
        assert planned[row].cfg.ptl.watch.judge_ckpt is None
        assert planned[row].needs[:2] == ["source_only", "diffusion"]      # + its calibration (no label needed)
        assert planned[planned[row].needs[2]].stage == "calibrate"
    run(cfg)
    printed = capsys.readouterr().out
    assert "ceiling: skipped (needs dataset.target_train_labeled" in printed
    assert "full@" not in printed and "full " in printed and "ptl_none " in printed


@pytest.mark.parametrize("experiment", ["demo", "digits_study"])
def test_experiment_plans_hold_the_controls_when_listed(compose, tmp_path, experiment, capsys):
    from dasslab.commands.train import run

    cfg = compose(f"experiment={experiment}", "debug=smoke", f"paths.output_dir={tmp_path / 'p'}")
    rows = list(cfg.pipeline.rows)
    listed = rows + [r for r in ("ptl_none", "ceiling") if r not in rows]
    seeds = [int(s) for s in cfg.pipeline.get("seeds") or []]
    planned, skipped = plan(cfg, listed)
    assert skipped == {}
    for row in ("ptl_none", "ceiling"):
        labels = [f"{row}@seed{s}" for s in seeds] or [row]
        assert all(label in planned for label in labels), sorted(planned)
        for label in labels:                           # each seed's source-only model where those are per seed
            up = planned[label].needs
            assert len(up) == 1 and up[0].startswith("source_only")
            if cfg.pipeline.jobs.source_only.get("per_seed"):
                assert up == [f"source_only@seed{planned[label].cfg.seed}"]
    out = run(compose(f"experiment={experiment}", "debug=smoke", f"pipeline.rows=[{','.join(listed)}]",
                      "pipeline.dry_run=true", f"paths.output_dir={tmp_path / 'q'}"))
    assert {n for n in out["plan"] if n.startswith(("ptl_none", "ceiling"))} == \
        {n for n in planned if n.startswith(("ptl_none", "ceiling"))}
