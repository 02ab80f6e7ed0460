"""Stage functions for the Slurm tests (targets of test-defined stage configs; the Slurm jobs import them)."""

import json
import os
import time
from pathlib import Path


def attempts(cfg) -> dict:
    """A `kind: run` stage that records each attempt (its Slurm restart count and ``resume``), then waits
    ``pipeline_test.sleep`` seconds on the first attempt only: time for the test to preempt it."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    attempt = {"restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "resume": cfg.get("resume")}
    with open(Path(cfg.pipeline_test.log), "a") as fh:
        fh.write(json.dumps(attempt) + "\n")
    if attempt["restart"] == 0:
        time.sleep(float(cfg.pipeline_test.sleep))
    return {"checkpoint": str(out / "checkpoints" / "last.ckpt"), "attempt": attempt}
