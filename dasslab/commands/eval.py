"""``dasslab-eval ckpt=PATH dataset=…``: evaluate a trained segmenter (mIoU, per-class IoU, confusion, overlays)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dasslab.commands.app import entry_point


def run(cfg: DictConfig) -> dict:
    """Check the settings, the split (labelled, pre-scanned) and the checkpoint before anything is evaluated or
    written; then ``metrics.json`` (with the checkpoint's identity and the data's fingerprint), the confusion
    matrix (``confusion_matrix.csv`` and ``.png``) and overlays."""
    from torch.utils.data import DataLoader

    from dasslab.checkpoints import load_segmenter
    from dasslab.checks.files import check_eval_inputs
    from dasslab.checks.settings import validate_eval
    from dasslab.data.datamodule import eval_collate
    from dasslab.provenance import dataset_fingerprint, file_identity
    from dasslab.segmentation.evaluation import evaluate_segmenter
    from dasslab.utils.runinfo import save_config

    validate_eval(cfg)
    ds = check_eval_inputs(cfg)
    out = Path(cfg.paths.output_dir)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    module = load_segmenter(cfg.ckpt, setting="ckpt").to(device)
    module.inference = OmegaConf.to_container(cfg.eval.inference, resolve=True)
    save_config(cfg, out)
    loader = DataLoader(ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                        collate_fn=eval_collate)
    return evaluate_segmenter(module, loader, list(ds.class_names), out,
                              subsets=cfg.dataset.eval_subsets, split=cfg.eval.split, overlays=cfg.eval.overlays,
                              progress=bool(cfg.get("progress", True)), confusion_png=True,
                              extra={"checkpoint": str(cfg.ckpt), "dataset": cfg.dataset.name,
                                     "inference": OmegaConf.to_container(cfg.eval.inference),
                                     "made_by": {"checkpoint": file_identity(cfg.ckpt),
                                                 "data": dataset_fingerprint(ds)}})


@entry_point("eval")  # hydra.main + one-line errors, one folder per job (dasslab/commands/app.py)
def main(cfg: DictConfig) -> None:
    record = run(cfg)
    print(f"mIoU {record['miou']} on {record['split']}; metrics: {Path(cfg.paths.output_dir) / 'metrics.json'}")


if __name__ == "__main__":
    main()
