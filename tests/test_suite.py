"""experiment=suite: the rows of several pairs in one run, one table with the pairs as columns (smoke sizes)."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from dasslab.commands.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_suite_runs_every_pair_and_writes_one_table(tmp_path, digits_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("DASSLAB_ROOT", str(tmp_path))
    monkeypatch.setenv("DASSLAB_DATA", str(tmp_path / "data"))
    out = tmp_path / "suite"
    rows = "[source_only,oracle,ceiling_m,ptl_none,baseline,full]"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["experiment=suite", "debug=smoke", "pipeline.pairs=[streets,fog]",
                                f"pipeline.rows={rows}", "pipeline.seeds=[0,1]", f"paths.output_dir={out}"])
    cfg.pipeline.pair_dataset = {"generate": {"n_train": 40, "n_val": 12, "n_test": 10}}     # every pair, small
    result = run(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["split"] == "target test"
    assert set(saved["pairs"]) == {"streets", "fog"}
    for pair in ("streets", "fog"):
        table = saved["pairs"][pair]
        assert set(table) == set(rows[1:-1].split(","))
        for row in ("full", "ceiling_m", "ptl_none", "baseline"):
            e = table[row]
            assert len(e["seeds"]) == 2 and e["mean"] == sum(e["seeds"]) / 2 and e["std"] is not None
            assert 0 <= e["val_miou"] <= 100       # chosen on val, reported on test: both kept
        assert len(table["source_only"]["seeds"]) == 1        # one source model per pair, shared by the seeds
        assert table["ceiling_m"]["distinct_images"]["target_train_labeled"] > 0
        assert table["full"]["distinct_images"]["translated"] > 0
        per_pair = json.loads((out / pair / "results.json").read_text())
        assert per_pair["full"]["miou"] == table["full"]["mean"] and per_pair["full"]["split"] == "target_test"
        assert (out / pair / "calibration.json").is_file()
        assert saved["calibration"][pair]["calibrate"]["t_max"] > 0
        assert saved["regime"][pair]["baseline_minus_source_only"] == (table["baseline"]["mean"]
                                                                     - table["source_only"]["mean"])
    md = (out / "results.md").read_text()
    assert md.index("regime") < md.index("Rows x pairs") and "| row | streets | fog |" in md
    assert (out / "suite_results.png").is_file()
    said = capsys.readouterr().out
    assert "[pipeline] streets/calibrate" in said or "streets/calibrate: done" in said
