"""`make demo ARGS='dataset=folder dataset.root=ROOT'`: any pair of domains, rows needing target labels skipped."""

import json

from test_stages import _folder_tree

from dasslab.commands.train import run


def test_demo_on_a_folder_pair_without_target_labels(compose, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DASSLAB_ROOT", str(tmp_path))
    root = _folder_tree(tmp_path / "pair", classes=4, size=(40, 56))     # another class count and size
    out = tmp_path / "demo"
    # the demo's rows + self-training alone and on top of the method (it needs no target labels either)
    rows = "[source_only,oracle,ceiling,ptl_none,baseline,full,self_training,full_st]"
    summary = run(compose("experiment=demo", "debug=smoke", "dataset=folder", f"dataset.root={root}",
                          f"paths.output_dir={out}", f"pipeline.rows={rows}"))
    saved = json.loads((out / "results.json").read_text())
    assert saved == summary
    for row in ("source_only", "baseline", "full", "self_training", "full_st"):
        assert 0.0 <= saved[row]["miou"] <= 100.0
    # the folder pair has no labeled target-train split: the oracle row is skipped with its reason
    assert "target_train_labeled" in saved["oracle"]["skipped"]
    md = (out / "results.md").read_text()
    assert "source_only" in md and "skipped" in md
    # the translation settings were chosen for this pair (no target label needed), printed and listed
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["dataset"] == "folder" and cal["t_max"]["chosen"] and cal["depths"]
    assert "## Calibration (folder" in md and (out / "calibration.png").is_file()
    assert f"t_max {cal['t_max']['value']} (chosen)" in capsys.readouterr().out
