"""Every experiment config runs end to end (tiny: debug=smoke on the digits benchmark)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dasslab.commands.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory, digits_data_dir):
    """One cache for the module: experiments reuse each other's source and diffusion runs."""
    return tmp_path_factory.mktemp("experiments"), digits_data_dir


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_a_few_steps(experiment, shared_root, monkeypatch):
    root, data = shared_root
    monkeypatch.setenv("DASSLAB_ROOT", str(root))
    monkeypatch.setenv("DASSLAB_DATA", str(data))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}", "dataset=digits", "debug=smoke",
                                "dataset.generate.n_train=120", "dataset.generate.n_val=40",
                                f"paths.output_dir={root / experiment}"])
    if cfg.pipeline.get("seeds"):      # a few steps: one seed exercises the seeded rows (the study lists 3)
        cfg.pipeline.seeds = list(cfg.pipeline.seeds)[:1]
    if cfg.pipeline.get("pairs"):      # a suite: its digits pair here (tests/test_suite.py runs several pairs)
        cfg.pipeline.pairs = ["digits"]
        summary = run(cfg)["pairs"]["digits"]
        assert (root / experiment / "digits" / "results.json").is_file()
        summary = {r: {"miou": e["mean"]} for r, e in summary.items()}
    else:
        summary = run(cfg)
    rows = list(cfg.pipeline.rows)
    assert set(summary) == {r for r in rows if r != "translation_quality"}
    for row in summary.values():
        assert 0.0 <= row["miou"] <= 100.0
    assert (root / experiment / "results.json").is_file() and (root / experiment / "results.md").is_file()
    if "translation_quality" in rows:
        assert (root / experiment / "translation_quality.json").is_file()
        assert (root / experiment / "quality_consistency.png").is_file()
