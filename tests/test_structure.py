"""The shape of the code: no import cycles; stages are data (a new stage is a config file); the pipeline plans."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dasslab"
TESTS = Path(__file__).resolve().parent


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (module- and function-level imports alike)."""
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = m.split(".")
                if node.level:
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m and not m.startswith(t + ".") and t != root.name:
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles_in_dasslab():
    assert cycles(import_graph(PKG)) == []


def test_lower_layers_do_not_import_upper_ones():
    graph = import_graph(PKG)
    upper = ("dasslab.lit", "dasslab.callbacks", "dasslab.workflow", "dasslab.commands", "dasslab.export")
    for low in ("dasslab.diffusion", "dasslab.guidance", "dasslab.data"):
        for m, deps in graph.items():
            if m.startswith(low):
                bad = [d for d in deps if d.startswith(upper)]
                assert not bad, f"{m} imports {bad}"
    assert not any(d.startswith(("dasslab.segmentation", "dasslab.lit")) for m, deps in graph.items()
                   if m.startswith("dasslab.diffusion") for d in deps)


def test_the_entry_points_are_the_top_and_nothing_imports_them():
    """dasslab/commands/ holds the apps; the library below never imports from it (only ``python -m dasslab``
    starts an app), and an app imports the library, not another app (besides their shared decorator, app.py)."""
    graph = import_graph(PKG)
    for m, deps in graph.items():
        if m == "dasslab.__main__":
            continue
        if m.startswith("dasslab.commands"):
            apps = [d for d in deps if d.startswith("dasslab.commands.") and d != "dasslab.commands.app"]
            assert not apps, f"{m} imports the app(s) {apps}"
        else:
            assert not any(d.startswith("dasslab.commands") for d in deps), f"{m} imports from dasslab.commands"


STAGE = """\
# @package stage
name: both_domains
kind: fit
datamodule:
  _target_: dasslab.data.datamodule.build
  dataset: ${dataset}
  data: ${data}
  eval: ${eval}
  seed: ${seed}
  train_domains: [source, target_train_labeled]
  batch_size: 4
module:
  _target_: dasslab.lit.build.segmenter
  backbone: ${backbone}
  segmenter: ${segmenter}
  augment: {enabled: false}
  dataset: ${dataset}
  diffusion: ${diffusion}
  eval: ${eval}
  train_keys: [source, target_train_labeled]
max_steps: 2
val_every: null
paper_batch_size: 2
checkpoint_every: null
callbacks: {}
evaluate: true
ignore: []
"""


def test_a_stage_defined_only_in_a_test_config_runs_through_run_stage(compose, tmp_path):
    from dasslab.commands.train import run

    extra = tmp_path / "extra_conf"
    (extra / "stage").mkdir(parents=True)
    (extra / "stage" / "both_domains.yaml").write_text(STAGE)
    out = tmp_path / "run"
    cfg = compose("debug=smoke", "stage=both_domains", f"hydra.searchpath=[file://{extra}]",
                  f"paths.output_dir={out}")
    rec = run(cfg)
    assert rec["stage"] == "both_domains" and rec["train_on"] == ["source", "target_train_labeled"]
    assert rec["steps"] == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["miou"] == rec["miou"] and (out / "checkpoints" / "last.ckpt").is_file()


def _pipeline_args(tmp_path, log, sleep=0.0):
    job = "{stage:{name:counted,kind:run,ignore:[],run:{_target_:stage_fixtures.slow_count,_partial_:true}}}"
    return ["debug=smoke", "stage=pipeline", "pipeline.rows=[counted]",
            f"+pipeline.jobs.counted={job}",
            f"+pipeline_test.log={log}", f"+pipeline_test.sleep={sleep}"]


def test_pipeline_runs_a_job_once_and_reuses_it(compose, tmp_path, monkeypatch, capsys):
    from dasslab.commands.train import run

    monkeypatch.syspath_prepend(str(TESTS))
    log = tmp_path / "runs.log"
    first = run(compose(*_pipeline_args(tmp_path, log), f"paths.output_dir={tmp_path / 'a'}"))
    second = run(compose(*_pipeline_args(tmp_path, log), f"paths.output_dir={tmp_path / 'b'}"))
    assert len(log.read_text().splitlines()) == 1
    assert "reusing" in capsys.readouterr().out
    assert first["counted"]["run_dir"] == second["counted"]["run_dir"]
    # a setting the job reads changes its key: a new run
    run(compose(*_pipeline_args(tmp_path, log), "seed=3", f"paths.output_dir={tmp_path / 'c'}"))
    assert len(log.read_text().splitlines()) == 2
    # what cannot change the result (pipeline.ignore) does not
    run(compose(*_pipeline_args(tmp_path, log), "data.num_workers=1", f"paths.output_dir={tmp_path / 'd'}"))
    assert len(log.read_text().splitlines()) == 2


def test_parallel_pipeline_runs_ready_jobs_side_by_side_and_waits_for_needs(compose, tmp_path, monkeypatch):
    from dasslab.commands.train import run

    monkeypatch.syspath_prepend(str(TESTS))          # spawned job processes inherit sys.path
    log = tmp_path / "times.log"
    stage = "{name:timed,kind:run,ignore:[],run:{_target_:stage_fixtures.timed,_partial_:true}}"
    cfg = compose("debug=smoke", "stage=pipeline", "pipeline.rows=[c]", "pipeline.parallel=2",
                  f"+pipeline.jobs.a={{stage:{stage}}}", f"+pipeline.jobs.b={{stage:{stage},set:{{seed:1}}}}",
                  f"+pipeline.jobs.c={{stage:{stage},needs:{{up_a:a,up_b:b}}}}",
                  f"+pipeline_test.log={log}", "+pipeline_test.sleep=2.0", f"paths.output_dir={tmp_path / 'p'}")
    run(cfg)
    t = {r["job"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert sorted(t) == ["a", "b", "c"]
    assert max(t["a"]["start"], t["b"]["start"]) < min(t["a"]["end"], t["b"]["end"])   # a and b overlapped
    assert t["c"]["start"] >= max(t["a"]["end"], t["b"]["end"])                        # c waited for both
    from dasslab.workflow.execute import job_log
    from dasslab.workflow.plan import plan

    planned, _ = plan(cfg, ["c"])
    assert all("running stage=timed" in job_log(j).read_text() for j in planned.values())   # each its own log
    timings = json.loads((tmp_path / "p" / "timings.json").read_text())
    assert all(timings[j]["seconds"] >= 2.0 and not timings[j]["reused"] for j in "abc")


def test_ready_jobs_start_highest_priority_first_and_finished_jobs_are_read_in_place(compose, tmp_path, monkeypatch):
    from dasslab.workflow.execute import execute
    from dasslab.workflow.plan import plan

    monkeypatch.syspath_prepend(str(TESTS))
    log = tmp_path / "times.log"
    stage = "{name:timed,kind:run,ignore:[],run:{_target_:stage_fixtures.timed,_partial_:true}}"
    cfg = compose("debug=smoke", "stage=pipeline", f"+pipeline.jobs.a={{stage:{stage}}}",
                  f"+pipeline.jobs.b={{stage:{stage},set:{{seed:1}}}}",
                  f"+pipeline.jobs.c={{stage:{stage},set:{{seed:2}},priority:5}}",
                  f"+pipeline_test.log={log}", "+pipeline_test.sleep=1.5", f"paths.output_dir={tmp_path}")
    planned, _ = plan(cfg, ["a", "b", "c"])
    done = execute(planned, reuse=True, parallel=2)
    t = {r["job"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert t["c"]["start"] < t["b"]["start"]                              # c (priority 5) took a first slot
    assert t["b"]["start"] >= min(t["a"]["end"], t["c"]["end"])            # b waited for a free slot
    assert list(done) == ["a", "b", "c"] and not any(d.get("reused") for d in done.values())
    again = execute(planned, reuse=True, parallel=2)                      # all finished: no process started
    assert all(d["reused"] for d in again.values()) and len(log.read_text().splitlines()) == 3


def test_a_failing_job_in_a_parallel_pipeline_stops_it_with_its_log(compose, tmp_path, monkeypatch, capsys):
    from dasslab.workflow.execute import execute, job_log
    from dasslab.workflow.plan import plan

    monkeypatch.syspath_prepend(str(TESTS))
    stage = "{name:failing,kind:run,ignore:[],run:{_target_:stage_fixtures.fail,_partial_:true}}"
    cfg = compose("debug=smoke", "stage=pipeline", f"+pipeline.jobs.bad={{stage:{stage}}}",
                  f"paths.output_dir={tmp_path}")
    planned, _ = plan(cfg, ["bad"])
    with pytest.raises(RuntimeError, match="planted failure in bad"):
        execute(planned, reuse=True, parallel=2)
    assert "planted failure" in job_log(planned["bad"]).read_text()      # the traceback is in the job's log
    assert f"bad: failed (RuntimeError: planted failure in bad); its output: {job_log(planned['bad'])}" \
        in capsys.readouterr().out
    assert not (planned["bad"].out / "DONE.json").exists()


def test_two_processes_wanting_one_job_run_it_once(tmp_path, digits_data_dir):
    log = tmp_path / "runs.log"
    env = dict(os.environ, DASSLAB_ROOT=str(tmp_path), DASSLAB_DATA=str(digits_data_dir),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-m", "dasslab.commands.train",
                               *_pipeline_args(tmp_path, log, sleep=2.0),
                               f"paths.output_dir={tmp_path / f'job{i}'}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(log.read_text().splitlines()) == 1
    assert sum("reusing" in o for o in outs) == 1
    for i in range(2):
        assert json.loads((tmp_path / f"job{i}" / "results.json").read_text())["counted"]["run_dir"]


def test_dry_run_plans_without_running(compose, tmp_path, capsys):
    from dasslab.commands.train import run

    out = run(compose("debug=smoke", "stage=pipeline", "pipeline.rows=[source_only,baseline]",
                      "pipeline.dry_run=true", f"paths.output_dir={tmp_path / 'plan'}"))
    plan = out["plan"]
    calib = next(n for n in plan if n.startswith("calibrate"))                # its settings left at auto
    assert list(plan) == ["source_only", "diffusion", calib, "judge", "baseline"]     # judge: its optional watch
    assert plan["baseline"]["needs"] == ["source_only", "diffusion", calib, "judge"]
    assert not any(Path(p["run_dir"]).exists() for p in plan.values())
    text = capsys.readouterr().out
    assert f"waits for: source_only, diffusion, {calib}, judge" in text


def test_rows_needing_target_labels_are_skipped_with_the_reason(compose, tmp_path, capsys):
    from dasslab.commands.train import run

    cfg = compose("debug=smoke", "stage=pipeline", "pipeline.rows=[oracle]", "pipeline.dry_run=true",
                  "~dataset.target_train_labeled", f"paths.output_dir={tmp_path / 'p'}")
    run(cfg)
    assert "oracle: skipped (needs dataset.target_train_labeled" in capsys.readouterr().out


def test_pipeline_job_config_swaps_groups_and_fills_upstream_checkpoints(compose, tmp_path):
    from dasslab.workflow.plan import plan

    cfg = compose("debug=smoke", "stage=pipeline", "guidance=sgg", "guidance.shift=0.2", "ptl.N=7",
                  f"paths.output_dir={tmp_path}")
    planned, skipped = plan(cfg, ["baseline", "wo_lcg"])
    job = planned["baseline"].cfg
    assert not (job.guidance.lcg or job.guidance.gsg) and job.stage.name == "adapt" and job.ptl.name == "direct"
    assert job.ptl.N == 7                                  # the experiment's settings carry over
    wo_lcg = planned["wo_lcg"].cfg.guidance
    assert (wo_lcg.lcg, wo_lcg.gsg, wo_lcg.shift) == (False, True, 0.2)
    assert job.segmenter.init_ckpt == str(planned["source_only"].checkpoint)
    assert job.diffusion_ckpt == str(planned["diffusion"].checkpoint)
    assert skipped == {}


def test_seeds_repeat_a_per_seed_upstream_with_the_same_seed_and_share_the_others(compose, tmp_path):
    from dasslab.workflow.plan import plan

    shared, _ = plan(compose("debug=smoke", "stage=pipeline", "pipeline.seeds=[0,1]",
                             f"paths.output_dir={tmp_path}"), ["source_only", "full"])
    assert sorted(shared) == ["calibrate", "diffusion", "full@seed0", "full@seed1", "judge", "source_only"]
    cfg = compose("debug=smoke", "stage=pipeline", "pipeline.seeds=[0,1]", "+pipeline.jobs.source_only.per_seed=true",
                  f"paths.output_dir={tmp_path}")
    planned, _ = plan(cfg, ["source_only", "full"])
    # the calibration made with a seed's source model is that seed's too
    assert sorted(planned) == ["calibrate@seed0", "calibrate@seed1", "diffusion", "full@seed0", "full@seed1",
                               "judge", "source_only@seed0", "source_only@seed1"]
    for s in (0, 1):
        full = planned[f"full@seed{s}"]
        assert full.cfg.segmenter.init_ckpt == str(planned[f"source_only@seed{s}"].checkpoint)
        assert planned[f"calibrate@seed{s}"].cfg.guide_ckpt == full.cfg.segmenter.init_ckpt
        assert full.needs == [f"source_only@seed{s}", "diffusion", f"calibrate@seed{s}", "judge"]   # one judge
        assert planned[f"source_only@seed{s}"].cfg.seed == s
    assert planned["source_only@seed0"].key != planned["source_only@seed1"].key


@pytest.mark.parametrize("bad, match", [
    ("pipeline.rows=[nope]", "nope"),
])
def test_unknown_rows_are_config_errors(compose, tmp_path, bad, match):
    from dasslab.checks.settings import validate_config
    from dasslab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        validate_config(compose("debug=smoke", "stage=pipeline", bad, f"paths.output_dir={tmp_path}"))


def test_summary_gap_closed_and_seed_statistics():
    from dasslab.workflow.results import summarize

    res = {"source_only": {"miou": 20.0}, "oracle": {"miou": 60.0},
           "full@seed0": {"miou": 30.0}, "full@seed1": {"miou": 34.0}, "full@seed2": {"miou": 32.0}}
    out = summarize(res)
    assert out["full"]["miou"] == 32.0 and out["full"]["std"] == 2.0 and out["full"]["seeds"] == [0, 1, 2]
    assert out["full"]["gap_closed"] == 0.3                           # (32 - 20) / (60 - 20)
    close = summarize({"source_only": {"miou": 20.0}, "oracle": {"miou": 20.5}, "full": {"miou": 21.0}})
    assert "gap_closed" not in close["full"] and "not 1 points above" in close["oracle"]["note"]


def test_each_builder_gets_its_own_node_and_nothing_else():
    """A fit stage's datamodule and module builders take the sections their stage file lists (no root config):
    every key of the node is a parameter, every required parameter is in the node (the module also gets the
    datamodule)."""
    import inspect

    from hydra.utils import get_object
    from omegaconf import OmegaConf

    conf = PKG.parent / "conf" / "stage"
    seen = 0
    for path in sorted(conf.glob("*.yaml")):
        stage = OmegaConf.load(path)
        if stage.get("kind") != "fit":
            continue
        for part, given in (("datamodule", set()), ("module", {"datamodule"})):
            node = stage[part]
            params = inspect.signature(get_object(node._target_)).parameters
            keys = {k for k in node if not k.startswith("_")}
            assert "cfg" not in params, f"{path.name}: {part} builder takes the root config"
            assert keys <= set(params), f"{path.name}: {part} lists {keys - set(params)}, not builder parameters"
            required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
            assert required <= keys | given, f"{path.name}: {part} builder needs {required - keys - given}"
            seen += 1
    assert seen == 10            # source, oracle, judge, diffusion, adapt: a datamodule and a module each


def test_the_ddpm_key_is_the_same_for_two_sources_of_one_target(compose, tmp_path):
    """The stage file's builder nodes name whole sections (``dataset: ${dataset}``); they are hashed as written,
    so what a stage ignores (the DDPM: the source side of the pair) still cannot change its key."""
    from dasslab.workflow.plan import plan

    keys = []
    for seed in (0, 5):          # another source set (its own generation seed), the same target
        cfg = compose("debug=smoke", "stage=pipeline", f"dataset.source.seed={seed}", f"paths.output_dir={tmp_path}")
        planned, _ = plan(cfg, ["diffusion", "source_only"])
        keys.append((planned["diffusion"].key, planned["source_only"].key))
    assert keys[0][0] == keys[1][0] and keys[0][1] != keys[1][1]
