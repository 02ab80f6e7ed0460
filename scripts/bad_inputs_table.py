"""Print the table of tests/test_inputs_checked.py: input | command | line printed (Markdown).

    .venv/bin/python scripts/bad_inputs_table.py > table.md

Runs every case of tests/bad_inputs.py as the test does (one child process, the real entry points) in a
temporary folder, shown as ``T``; about two minutes on one core (167 cases, seven commands).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bad_inputs import CONF_DIR, cases, make_world, plant_damaged_done, run_cases, table  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = make_world(tmp)
        plant_damaged_done(world, CONF_DIR)
        cs = cases(world)
        print(table(cs, run_cases(cs, tmp), tmp), end="")


if __name__ == "__main__":
    main()
