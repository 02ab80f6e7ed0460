"""``dasslab-eval ckpt=PATH dataset=…``: evaluate a trained segmenter (mIoU, per-class IoU, overlays)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dasslab.cli import entry_point


def run(cfg: DictConfig) -> dict:
    from torch.utils.data import DataLoader

    from dasslab.checkpoints import load_segmenter
    from dasslab.data.base import DataError
    from dasslab.data.datamodule import build_dataset, eval_collate
    from dasslab.evaluate import evaluate_segmenter
    from dasslab.utils.runinfo import save_config

    out = Path(cfg.paths.output_dir)
    save_config(cfg, out)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    module = load_segmenter(cfg.ckpt, setting="ckpt").to(device)
    module.inference = OmegaConf.to_container(cfg.eval.inference, resolve=True)
    ds = build_dataset(cfg.dataset, cfg.eval.split, train=False, limit=cfg.data.get("limit_val"))
    if list(ds.class_names) != list(module.class_names):
        raise DataError(f"ckpt={cfg.ckpt} predicts {len(module.class_names)} classes {module.class_names[:5]}… but "
                        f"dataset.{cfg.eval.split} has {len(ds.class_names)} {list(ds.class_names)[:5]}…")
    loader = DataLoader(ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                        collate_fn=eval_collate)
    return evaluate_segmenter(module, loader, list(ds.class_names), out,
                              subsets=cfg.dataset.eval_subsets, split=cfg.eval.split, overlays=cfg.eval.overlays,
                              extra={"checkpoint": str(cfg.ckpt), "dataset": cfg.dataset.name,
                                     "inference": OmegaConf.to_container(cfg.eval.inference)})


@entry_point("eval")  # hydra.main + one-line errors, one folder per job (dasslab/cli.py)
def main(cfg: DictConfig) -> None:
    record = run(cfg)
    print(f"mIoU {record['miou']} on {record['split']}; metrics: {Path(cfg.paths.output_dir) / 'metrics.json'}")


if __name__ == "__main__":
    main()
