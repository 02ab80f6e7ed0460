"""``dasslab-tables`` on synthetic run folders: seeds averaged, sweeps expanded, failures kept, paper beside."""

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from dasslab.commands.tables import main
from dasslab.data.labels import CITYSCAPES_CLASSES, SYNTHIA_13, SYNTHIA_16
from dasslab.errors import ConfigError
from dasslab.workflow.tables import find_runs, sweep_jobs, write_tables

DIGITS = ["background"] + [str(i) for i in range(10)]


def metrics(classes, values, subsets=None):
    per = dict(zip(classes, values))
    rec = {"miou": round(statistics.fmean(values), 4), "per_class_iou": per, "classes": list(classes),
           "subsets": {}, "split": "target_val"}
    for name, idx in (subsets or {}).items():
        m = round(statistics.fmean(values[i] for i in idx), 4)
        rec["subsets"][name] = {"classes": [classes[i] for i in idx], "miou": m}
        rec[name] = m
    return rec


def make_run(path: Path, config: dict, record: dict | None, overrides=(), choices=None) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices or {}}}}))
    if record is not None:
        (path / "metrics.json").write_text(json.dumps(record))
    return path


def cfg(task, dataset, seed, out, **extra):
    c = {"task_name": task, "seed": seed, "stage": {"name": "adapt"}, "dataset": {"name": dataset},
         "backbone": {"name": "deeplabv2_r101"}, "paths": {"output_dir": str(out)},
         "segmenter": {"lr": 2.5e-4, "init_ckpt": f"{out}/../source/seed{seed}/last.ckpt"}}
    for k, v in extra.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return c


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def runs_root(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    root = tmp_path / "outputs"
    # Table 1 row over three seeds (GTA5 -> Cityscapes), and one seed whose run died
    gta_values = {}
    for seed in range(3):
        vals = [round(float(v), 2) for v in rng.uniform(10, 90, 19)]
        gta_values[seed] = vals
        out = root / "table1_full" / f"seed{seed}"
        make_run(out, cfg("table1_r101_gta5", "gta5_cityscapes", seed, out), metrics(CITYSCAPES_CLASSES, vals),
                 overrides=[f"seed={seed}"])
    out = root / "table1_full" / "seed3"
    make_run(out, cfg("table1_r101_gta5", "gta5_cityscapes", 3, out), None, overrides=["seed=3"])
    # a source-only row of the same table that failed on its only seed
    out = root / "table1_source_only" / "seed0"
    dead = cfg("table1_r101_gta5", "gta5_cityscapes", 0, out, **{"adapt.mode": "none", "stage.name": "source"})
    make_run(out, dead, None, overrides=["adapt.mode=none"])
    # SYNTHIA -> Cityscapes: 16/13-class subsets
    vals = [round(float(v), 2) for v in rng.uniform(10, 90, 19)]
    out = root / "table1_synthia" / "seed0"
    make_run(out, cfg("table1_full", "synthia_cityscapes", 0, out),
             metrics(CITYSCAPES_CLASSES, vals, {"miou16": SYNTHIA_16, "miou13": SYNTHIA_13}))
    # a diffusion run: no mIoU by design, not a row
    out = root / "diffusion" / "run"
    make_run(out, {"task_name": "diffusion", "stage": {"name": "diffusion"}, "dataset": {"name": "digits"}}, None)
    return root, gta_values, vals


@pytest.fixture
def sweep(tmp_path):
    """A multirun over lambda x N on digits: job 2 failed, job 3 never ran."""
    d = tmp_path / "sweep"
    d.mkdir()
    task = ["guidance.scale=0.1,1.0", "ptl.N=10,20", "seed=0"]
    (d / "multirun.yaml").write_text(yaml.safe_dump({
        "task_name": "lambda_sweep", "seed": 0, "stage": {"name": "adapt"}, "dataset": {"name": "digits"},
        "guidance": {"scale": 1.0}, "ptl": {"N": 600},
        "hydra": {"sweeper": {"params": None}, "overrides": {"task": task},
                  "runtime": {"choices": {"guidance": "sgg", "hydra/launcher": "basic"}}}}))
    values = {}
    for num, (scale, n) in enumerate([(0.1, 10), (0.1, 20), (1.0, 10)]):
        vals = [float(num * 10 + i) for i in range(11)]
        values[(scale, n)] = vals
        c = {"task_name": "lambda_sweep", "seed": 0, "stage": {"name": "adapt"}, "dataset": {"name": "digits"},
             "guidance": {"scale": scale}, "ptl": {"N": n}, "paths": {"output_dir": str(d / str(num))}}
        make_run(d / str(num), c, metrics(DIGITS, vals) if num != 2 else None,
                 overrides=[f"guidance.scale={scale}", f"ptl.N={n}", "seed=0"], choices={"guidance": "sgg"})
    return d, values


def test_seeds_are_averaged_failures_kept_and_paper_beside(runs_root, tmp_path):
    root, gta_values, synthia_values = runs_root
    runs = find_runs([root])
    assert all(r.stage != "diffusion" for r in runs)
    out = tmp_path / "tables"
    tables = write_tables(runs, out)
    assert set(tables) == {"Table 1 — gta5_cityscapes", "Table 1 — synthia_cityscapes"}

    rows = read_csv(out / "table_1_gta5_cityscapes.csv")
    assert len(rows) == 2  # the seeds of one setting, and the failed setting
    full = next(r for r in rows if r["runs"] == "4")
    assert full["runs_ok"] == "3" and full["status"] == "1 failed"
    for j, name in enumerate(CITYSCAPES_CLASSES):
        seeds = [gta_values[s][j] for s in range(3)]
        assert float(full[name]) == pytest.approx(statistics.fmean(seeds), abs=1e-3)
        assert float(full[f"{name} std"]) == pytest.approx(statistics.stdev(seeds), abs=1e-3)
    assert float(full["mIoU"]) == pytest.approx(statistics.fmean(statistics.fmean(v) for v in gta_values.values()),
                                                abs=1e-3)
    assert float(full["paper mIoU"]) == 61.9  # dasslab/workflow/paper_results.yaml: Table 1, R101, GTA5, adaptation
    dead = next(r for r in rows if r["runs"] == "1")
    assert dead["status"] == "1 failed" and dead["mIoU"] == "" and "adapt.mode=none" in dead["setting"]
    assert dead["paper mIoU"] == ""  # the source-only run of the same experiment is another row

    md = tables["Table 1 — gta5_cityscapes"]
    assert "| sidew. |" in md and "**failed**" in md and "no metrics.json" in md
    assert " ± " in md and "3/4 (1 failed)" in md

    syn = read_csv(out / "table_1_synthia_cityscapes.csv")[0]
    assert "terrain" not in syn and "truck" not in syn and "train" not in syn  # 16 columns as papers print
    assert float(syn["mIoU"]) == pytest.approx(statistics.fmean(synthia_values[i] for i in SYNTHIA_16), abs=1e-3)
    assert float(syn["mIoU*"]) == pytest.approx(statistics.fmean(synthia_values[i] for i in SYNTHIA_13), abs=1e-3)
    assert (out / "tables.md").read_text().count("###") == 2


def test_a_sweep_becomes_a_table_with_failed_and_missing_jobs(sweep, tmp_path):
    d, values = sweep
    assert [sorted(j) for j in sweep_jobs(d)] == [sorted(["guidance.scale=0.1", "ptl.N=10", "seed=0"]),
                                                  sorted(["guidance.scale=0.1", "ptl.N=20", "seed=0"]),
                                                  sorted(["guidance.scale=1.0", "ptl.N=10", "seed=0"]),
                                                  sorted(["guidance.scale=1.0", "ptl.N=20", "seed=0"])]
    runs = find_runs([str(d)])
    assert [r.status for r in runs] == ["ok", "ok", "failed", "missing"]
    out = tmp_path / "t"
    write_tables(runs, out)
    rows = read_csv(out / "runs_digits.csv")
    by_setting = {r["setting"]: r for r in rows}
    assert set(by_setting) == {f"guidance.scale={s}, ptl.N={n}" for s in (0.1, 1.0) for n in (10, 20)}
    for (s, n), vals in values.items():
        row = by_setting[f"guidance.scale={s}, ptl.N={n}"]
        if (s, n) == (1.0, 10):
            assert row["status"] == "1 failed" and row["mIoU"] == ""
        else:
            assert float(row["mIoU"]) == pytest.approx(statistics.fmean(vals), abs=1e-3)
            assert float(row["9"]) == vals[10]
    assert by_setting["guidance.scale=1.0, ptl.N=20"]["status"] == "1 missing"


def test_pipeline_results_rows_and_skipped_rows(runs_root, tmp_path):
    root, gta_values, _ = runs_root
    pipe = tmp_path / "pipe"
    make_run(pipe, {"task_name": "table1_full", "stage": {"name": "pipeline"}, "dataset": {"name": "gta5_cityscapes"}},
             None)
    (pipe / "results.json").write_text(json.dumps({
        "full": {"miou": 1.0, "run_dir": str(root / "table1_full" / "seed0")},
        "oracle": {"miou": None, "skipped": "dataset has no target_train_labeled"}}))
    runs = find_runs([pipe])
    assert [(r.row, r.status) for r in runs] == [("full", "ok"), ("oracle", "missing")]
    tables = write_tables(runs, tmp_path / "t")
    md = tables["Table 1 — gta5_cityscapes"]
    assert "| full |" in md and "| oracle |" in md and "row skipped: dataset has no target_train_labeled" in md
    assert "61.9" in md


def test_cli_globs_and_one_line_errors(sweep, runs_root, tmp_path, capsys):
    d, _ = sweep
    root, _, _ = runs_root
    main([f"runs={root}/table1_*", f"runs={d}", f"out={tmp_path / 'cli'}"])
    printed = capsys.readouterr().out
    assert "Table 1 — gta5_cityscapes" in printed and "runs — digits" in printed
    assert "runs (4 failed or missing)" in printed  # 2 in Table 1, 2 in the sweep
    assert "paper" not in (tmp_path / "cli" / "runs_digits.md").read_text()
    with pytest.raises(SystemExit) as e:
        main([f"runs={tmp_path / 'nope'}", f"out={tmp_path / 'x'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: runs={tmp_path / 'nope'}: folder not found; expected run " \
                                               "folders or sweep folders"
    with pytest.raises(ConfigError, match="^out: a value is required"):
        from dasslab.commands.tables import parse_args

        parse_args([f"runs={d}"])


@pytest.mark.parametrize("shared_source", [False, True])
def test_pipeline_rows_run_per_seed_get_the_pipelines_own_summary(tmp_path, shared_source):
    """A stage=pipeline folder with seeded rows: each seed's run is read, and mean ± std, gap closed, share of
    ceiling, paired gains and "beats" are :func:`dasslab.workflow.results.summarize`'s own numbers (a source-only model
    run once is shared by the seeds: each pairs with it)."""
    from dasslab.workflow.results import summarize

    values = {"source_only": [22.0] if shared_source else [20.0, 22.0, 24.0], "oracle": [60.0, 58.0, 62.0],
              "ceiling": [50.0, 52.0, 48.0], "ptl_none": [21.0, 21.0, 25.0], "baseline": [23.0, 22.0, 26.0],
              "full": [30.0, 36.0, 33.0]}
    results = {}
    for row, vals in values.items():
        for seed, v in enumerate(vals):
            out = tmp_path / "cache" / row / f"seed{seed}"
            make_run(out, cfg("digits_study", "digits", seed, out, **{"ptl.name": row}), metrics(DIGITS, [v] * 11))
            results[f"{row}@seed{seed}" if len(vals) > 1 else row] = {"miou": v, "run_dir": str(out)}
    summary = summarize(results, {"wo_lcg": "needs something"})
    pipe = tmp_path / "pipe"
    make_run(pipe, {"task_name": "digits_study", "stage": {"name": "pipeline"}, "dataset": {"name": "digits"}}, None)
    (pipe / "results.json").write_text(json.dumps(summary))
    runs = find_runs([pipe])
    assert [r.row for r in runs].count("full") == 3 and all(r.status == "ok" for r in runs if r.row != "wo_lcg")
    tables = write_tables(runs, tmp_path / "t")
    rows = {r["setting"]: r for r in read_csv(tmp_path / "t" / "digits_study_digits.csv")}   # the experiment's table
    assert set(rows) == {*values, "wo_lcg"} and rows["wo_lcg"]["status"] == "1 missing"
    for row in values:
        got, want = rows[row], summary[row]
        assert got["runs_ok"] == str(len(values[row])) and float(got["mIoU"]) == pytest.approx(want["miou"], abs=1e-4)
        assert (got["mIoU std"] == "") == (want.get("std") is None)
        assert not got["mIoU std"] or float(got["mIoU std"]) == pytest.approx(want["std"], abs=1e-4)
        for col, key in (("gap closed", "gap_closed"), ("share of ceiling", "ceiling_share"),
                         ("paired gain mean", "paired_gain_mean")):
            assert (got[col] == "") == (key not in want) and (not got[col] or float(got[col]) == want[key])
        for col, key in (("wins", "wins"), ("beats ptl_none", "beats_ptl_none"), ("beats baseline", "beats_baseline")):
            assert got[col] == str(want.get(key, ""))
    assert rows["full"]["share of ceiling"] == "0.3929" and rows["full"]["beats ptl_none"] == "3/3"
    gains = "+8.00 / +14.00 / +11.00" if shared_source else "+10.00 / +14.00 / +9.00"   # - 22 | - 20, 22, 24
    assert list(summary["full"]["paired_gain"].values()) == [float(g) for g in gains.split(" / ")]
    md = tables["digits_study — digits"]
    assert "| gap closed | share of ceiling | paired gain per seed | beats ptl_none | beats baseline |" in md
    full = next(line for line in md.splitlines() if line.startswith("| full |"))
    assert "| 33.0 ± 3.0 |" in full and "| 39.3 % |" in full and f"{gains} (mean +11.00, 3/3 > 0)" in full
    assert "row skipped: needs something" in md


def test_help_prints_the_usage_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: dasslab-tables runs=")


def _pipeline_job(cache: Path, stage: str, key: str, config: dict, value: float | None) -> Path:
    """A finished job of the pipeline cache: its config (task_name = the job), DONE.json, metrics.json."""
    out = cache / stage / key
    make_run(out, config, metrics(DIGITS, [value] * 11) if value is not None else None)
    (out / "DONE.json").write_text(json.dumps({"miou": value, "run_dir": str(out)}))
    return out


@pytest.fixture
def experiment_sweep(tmp_path):
    """A multirun of experiment=table2f_full over ptl.N (jobs 0, 1), both reusing one cached source model."""
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    base = {"dataset": {"name": "digits"}, "seed": 0, "backbone": {"name": "small"}}
    src = _pipeline_job(cache, "source", "s1", {**base, "task_name": "source_only", "stage": {"name": "source"}}, 20.0)
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "task_name": "table2f_full", "hydra": {"sweeper": {"params": None},
                                               "overrides": {"task": ["experiment=table2f_full", "ptl.N=10,20"]}}}))
    for k, n in enumerate((10, 20)):
        full = _pipeline_job(cache, "adapt", f"a{n}", {**base, "task_name": "full", "stage": {"name": "adapt"},
                                                      "ptl": {"N": n}, "translate": {"depth": n}}, 30.0 + n)
        job = make_run(sweep / str(k), {**base, "task_name": "table2f_full", "stage": {"name": "pipeline"},
                                        "ptl": {"N": n}}, None, overrides=["experiment=table2f_full", f"ptl.N={n}"],
                       choices={"experiment": "table2f_full", "stage": "pipeline"})
        (job / "results.json").write_text(json.dumps({"source_only": {"miou": 20.0, "run_dir": str(src)},
                                                      "full": {"miou": 30.0 + n, "run_dir": str(full)}}))
    return sweep, cache


def test_an_experiment_sweep_is_its_paper_table_with_a_shared_run_counted_once(experiment_sweep, tmp_path):
    sweep, _ = experiment_sweep
    runs = find_runs([sweep])
    assert [(r.row, r.path.name) for r in runs] == [("source_only", "s1"), ("full", "a10"), ("full", "a20")]
    tables = write_tables(runs, tmp_path / "t")
    assert list(tables) == ["Table 2 — digits"]
    rows = {r["setting"]: r for r in read_csv(tmp_path / "t" / "table_2_digits.csv")}
    # the swept setting names the rows, not translate.depth (which follows it), not the experiment
    assert set(rows) == {"source only", "(f) SGG + PTL, ptl.N=10", "(f) SGG + PTL, ptl.N=20"}
    src = rows["source only"]
    assert (src["runs_ok"], src["runs"], src["mIoU"], src["mIoU std"]) == ("1", "1", "20.0000", "")
    assert float(rows["(f) SGG + PTL, ptl.N=20"]["mIoU"]) == 50.0
    md = tables["Table 2 — digits"]
    assert md.index("| source only |") < md.index("| (f) SGG + PTL, ptl.N=10 |") < md.index("ptl.N=20 |")


def test_the_cache_is_a_table_of_its_jobs(experiment_sweep, tmp_path):
    _, cache = experiment_sweep
    _pipeline_job(cache, "diffusion", "d1", {"task_name": "diffusion", "stage": {"name": "diffusion"},
                                             "dataset": {"name": "digits"}}, None)
    write_tables(find_runs([cache]), tmp_path / "t")
    rows = {r["setting"]: r for r in read_csv(tmp_path / "t" / "runs_digits.csv")}
    assert set(rows) == {"source_only", "full, ptl.N=10", "full, ptl.N=20"}      # the DDPM has no mIoU: no row
    assert float(rows["full, ptl.N=10"]["mIoU"]) == 40.0


@pytest.mark.parametrize("text, reason", [
    ('{"full": {"miou": 31.0, "run_d', "unreadable {path} (Unterminated string"),            # half-written
    ('[{"full": {"miou": 31.0}}]', "{path} holds a JSON list, not a record of rows"),
    ('{"full": {"miou": 31.0, "run_dir": 5}}', "{path}: row full's run_dir is 5, not a folder path"),
    ('{"full": {"per_seed": {"0": {"miou": 31.0, "run_dir": ["a"]}}}}', "row full's run_dir is ['a'], not a folder"),
])
def test_a_damaged_results_json_is_a_failed_row_with_the_reason(tmp_path, capsys, text, reason):
    """Issue 31: a half-written results.json was a JSONDecodeError traceback, a JSON list an AttributeError,
    ``"run_dir": 5`` a TypeError. Each is a failed row naming the file and what is wrong; the command exits 0."""
    pipe = make_run(tmp_path / "pipe", {"task_name": "digits_study", "stage": {"name": "pipeline"},
                                        "dataset": {"name": "digits"}}, None)
    (pipe / "results.json").write_text(text)
    main([f"runs={pipe}", f"out={tmp_path / 't'}"])
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and "1 runs (1 failed or missing)" in printed.out
    [row] = read_csv(tmp_path / "t" / "digits_study_digits.csv")
    assert row["status"] == "1 failed" and row["mIoU"] == ""
    assert reason.format(path=pipe / "results.json") in (tmp_path / "t" / "digits_study_digits.md").read_text()


@pytest.mark.parametrize("text, reason", [
    ('{"miou": 31.0, "per_class', "unreadable metrics.json (Unterminated string"),
    ('[{"miou": 31.0}]', "unreadable metrics.json (holds a JSON list, not a record)"),
    ('{"miou": "high"}', "unreadable metrics.json ('miou' is 'high', not a number)"),
    ('{"miou": 31.0, "per_class_iou": [1, 2]}', "'per_class_iou' is not a record of numbers"),
    ('{"miou": 31.0, "subsets": {"miou16": 3}}', "'subsets' is not a record of {miou: …} records"),
])
def test_a_damaged_metrics_json_is_a_failed_row_with_the_reason(tmp_path, text, reason):
    """A half-written metrics.json was already a failed row; a JSON list, text for a number, a list for the
    per-class IoU are too (they used to pass as "ok" and fail later, in the table's arithmetic)."""
    run = make_run(tmp_path / "run", cfg("table1_full", "digits", 0, tmp_path / "run"), None)
    (run / "metrics.json").write_text(text)
    good = make_run(tmp_path / "good", cfg("table1_full", "digits", 1, tmp_path / "good"),
                    metrics(DIGITS, [50.0] * 11))
    runs = find_runs([run, good])
    assert [r.status for r in runs] == ["failed", "ok"] and reason in runs[0].reason
    assert "| 1/2 (1 failed) |" in write_tables(runs, tmp_path / "t")["Table 1 — digits"]
    assert reason in write_tables(runs[:1], tmp_path / "t1")["Table 1 — digits"]
