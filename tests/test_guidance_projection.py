"""benchmarks/projection.py: the PTL cost model against closed forms (no timing involved)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def projection():
    spec = importlib.util.spec_from_file_location("projection", ROOT / "benchmarks" / "projection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COSTS = {"lcg_per_image_s": {2: 3.0, 8: 1.0}, "gsg_per_image_s": {2: 2.0, 8: 0.5}, "train_per_image_s": 0.25}


def test_step_cost_uses_the_nearest_measured_batch_not_above(projection):
    per_image = {2: 3.0, 8: 1.0}
    assert projection.step_cost(per_image, 2) == 6.0
    assert projection.step_cost(per_image, 4) == 12.0   # batch 2's per-image cost
    assert projection.step_cost(per_image, 32) == 32.0  # batch 8's
    assert projection.step_cost(per_image, 1) == 3.0    # below every measured batch: the smallest


def test_paper_schedule_closed_form(projection):
    N, K, B = 10, 3, 2
    it = projection.iteration_costs(COSTS, N, K, B, S=4, M=12, Bp=8)
    train = 0.25 * 2 * B
    for n in range(1, N + 1):
        paper = 6.0 * math.ceil(n / 2) + 4.0 * (n // 2) + train
        s = min(n, 4)
        assert it["paper"][n - 1] == pytest.approx(paper)
        assert it["respaced"][n - 1] == pytest.approx(6.0 * math.ceil(s / 2) + 4.0 * (s // 2) + train)
        # pool of 12 at batch 8: 2 chunks of 8 images, spread over K iterations
        pooled = 2 * (8.0 * math.ceil(s / 2) + 4.0 * (s // 2)) / K + train
        assert it["pooled"][n - 1] == pytest.approx(pooled)
    # respacing changes nothing while n <= S, and the paper's cost grows linearly in n beyond
    assert it["paper"][:4] == it["respaced"][:4]
    assert it["paper"][9] - it["paper"][7] == pytest.approx(6.0 + 4.0)


def test_main_writes_json_and_png(projection, tmp_path):
    guidance = {"device_name": "test", "setting": "digits", "image_size": [32, 32],
                "networks": "small denoiser, small guide (11 classes)",
                "batches": {"2": {"per_image_s": {"lcg": 3.0, "gsg": 2.0}},
                            "8": {"per_image_s": {"lcg": 1.0, "gsg": 0.5}}}}
    (tmp_path / "g.json").write_text(json.dumps(guidance))
    out = tmp_path / "p.json"
    assert projection.main(["--guidance-json", str(tmp_path / "g.json"), "--segmenter-json", str(tmp_path / "none"),
                            "--train-step-s", "0.25", "--N", "10", "--K", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["applies_to"] == ["digits (built-in benchmark)"]
    expected = 3 * sum(projection.iteration_costs(COSTS, 10, 3, 2, 25, 6, 8)["paper"])
    assert result["total_s"]["paper"] == pytest.approx(expected)
    assert result["total_s"]["pooled"] < result["total_s"]["paper"]
    assert out.with_suffix(".png").stat().st_size > 0
