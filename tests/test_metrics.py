"""IoU from the confusion matrix against a direct computation."""

import json
import math

import numpy as np
import torch

from dasslab.segmentation.metrics import SegmentationMetrics, metrics_record, write_metrics


def reference_iou(pred, target, k, ignore=255):
    out = []
    for c in range(k):
        valid = target != ignore
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        out.append(float("nan") if union == 0 else 100.0 * (p & t).sum() / union)
    return out


def test_iou_matches_reference_and_ignores_255():
    rng = np.random.default_rng(0)
    k = 5
    m = SegmentationMetrics(k, subsets={"first3": [0, 1, 2]})
    preds, targets = [], []
    for _ in range(3):
        t = rng.integers(0, k - 1, (2, 9, 11))          # class 4 never in the labels
        t[:, :2] = 255
        p = rng.integers(0, k - 1, (2, 9, 11))           # ... nor in the predictions
        m.update(torch.from_numpy(p), torch.from_numpy(t))
        preds.append(p)
        targets.append(t)
    ref = reference_iou(np.concatenate(preds), np.concatenate(targets), k)
    got = m.iou().tolist()
    assert math.isnan(got[4]) and math.isnan(ref[4])
    np.testing.assert_allclose(got[:4], ref[:4], rtol=1e-9)
    s = m.summary()
    assert math.isclose(s["miou"], np.nanmean(ref))
    assert math.isclose(s["first3"], np.mean(ref[:3]))


def test_logits_are_argmaxed():
    m = SegmentationMetrics(3)
    target = torch.tensor([[[0, 1, 2]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    m.update(logits, target)
    assert m.summary()["miou"] == 100.0


def test_metrics_json_record(tmp_path):
    m = SegmentationMetrics(3, subsets={"ab": [0, 1]})
    m.update(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 2, 255]]))
    rec = metrics_record(m, ["a", "b", "c"], "target_val", stage="source")
    write_metrics(tmp_path / "metrics.json", rec)
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["per_class_iou"] == {"a": 100.0, "b": 50.0, "c": 0.0}
    assert loaded["miou"] == 50.0 and loaded["ab"] == 75.0
    assert loaded["subsets"]["ab"]["classes"] == ["a", "b"]
    assert loaded["split"] == "target_val" and loaded["stage"] == "source"


def test_the_confusion_matrix_is_written_with_labels_as_rows_and_drawn(tmp_path):
    import csv

    from PIL import Image

    from dasslab.segmentation.evaluation import write_confusion
    from dasslab.segmentation.metrics import SegmentationMetrics

    metric = SegmentationMetrics(3, 255)
    label = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])                 # one 0 read as 1, one 2 read as 0, an ignore pixel
    metric.update(pred, label)
    write_confusion(tmp_path, metric.compute(), ["road", "car", "sky"], "target_val")
    rows = list(csv.reader((tmp_path / "confusion_matrix.csv").open()))
    assert rows[0] == ["label \\ prediction", "road", "car", "sky"]
    assert rows[1:] == [["road", "1", "1", "0"], ["car", "0", "2", "0"], ["sky", "1", "0", "0"]]
    picture = np.asarray(Image.open(tmp_path / "confusion_matrix.png").convert("RGB"))
    assert picture.shape[0] > 100 and picture.std() > 0
