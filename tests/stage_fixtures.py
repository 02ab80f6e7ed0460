"""Stage functions that exist only for the tests (targets of test-defined stage configs)."""

import json
import time
from pathlib import Path


def slow_count(cfg) -> dict:
    """A `kind: run` stage: record that it ran (one line per run), take a moment, return a checkpoint path."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.pipeline_test.log), "a") as fh:
        fh.write(json.dumps({"out": str(out)}) + "\n")
    time.sleep(float(cfg.pipeline_test.sleep))
    return {"checkpoint": str(out / "checkpoints" / "last.ckpt"), "value": int(cfg.seed)}


def timed(cfg) -> dict:
    """A `kind: run` stage that records when it ran (for the parallel pipeline test)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    time.sleep(float(cfg.pipeline_test.sleep))
    with open(Path(cfg.pipeline_test.log), "a") as fh:
        fh.write(json.dumps({"job": cfg.task_name, "start": start, "end": time.time()}) + "\n")
    return {"checkpoint": str(out / "checkpoints" / "last.ckpt")}


def fail(cfg) -> dict:
    """A `kind: run` stage that fails (the parallel pipeline's error path)."""
    raise RuntimeError(f"planted failure in {cfg.task_name}")
