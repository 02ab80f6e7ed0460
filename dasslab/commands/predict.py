"""``dasslab-predict ckpt=PATH input=DIR output=DIR``: segment a folder of images.

The library behind it: :mod:`dasslab.export.predictions`.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from dasslab.commands.app import entry_point
from dasslab.export.predictions import run


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    print(f"{summary.written} segmented, {summary.existing} already done, {len(summary.failed)} failed; "
          f"outputs in {cfg.output}")
    if summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
