"""``dasslab-export-weights ckpt=PATH [out=PATH.safetensors]``: a checkpoint's weights as safetensors, for sharing.

A safetensors file holds tensors and a string-to-string header only; reading it runs no
code, whoever made it. The export keeps what a reader needs and nothing else:

* segmenter checkpoints (``stage=source|oracle|adapt|ptl``): the Segmenter's tensors, named as
  in the model (``backbone.*``, ``head.*``), so ``backbone.weights=FILE.safetensors`` loads it;
* diffusion checkpoints (``stage=diffusion``): the module's tensors (the EMA weights).

The header entry ``dasslab`` is JSON: ``format``, ``kind`` (segmenter | diffusion),
``hyper_parameters`` (how to rebuild the module; local paths removed), and for segmenters
``class_names`` and ``backbone``. :func:`dasslab.checkpoints.load_segmenter` /
:func:`~dasslab.checkpoints.load_diffusion` read the file like the checkpoint it came from,
so it can be given as ``ckpt=`` (eval), ``guide_ckpt=``, ``segmenter.init_ckpt=`` or
``diffusion_ckpt=``. Optimiser, scheduler and callback states are not exported: an export
is for using a model, ``resume=`` needs the checkpoint.

Exporting a checkpoint you trust that the safe reader refuses (``trust_checkpoint=true``)
turns it into a file anyone can load safely.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dasslab.checkpoints import META_KEY, SAFETENSORS_SUFFIX, check_architecture, read_checkpoint
from dasslab.errors import CheckpointError
from dasslab.utils.io import atomic_write_bytes, check_output_file

__all__ = ["FORMAT", "export_weights"]

FORMAT = 1


def _kind(hp: dict) -> str | None:
    if "backbone" in hp and "num_classes" in hp:
        return "segmenter"
    if "preset" in hp:
        return "diffusion"
    return None


def export_weights(ckpt: str | Path, out: str | Path | None = None, trust: bool | None = None) -> Path:
    """Write the weights of checkpoint ``ckpt`` to ``out`` (default: next to it, ``.safetensors``)."""
    from safetensors.torch import save

    ckpt = Path(ckpt)
    out = Path(out) if out else ckpt.with_suffix(SAFETENSORS_SUFFIX)
    if out.suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(f"out={out}: expected a file name ending in {SAFETENSORS_SUFFIX}")
    check_output_file(out, "out")                  # before the checkpoint is read
    check_architecture(ckpt, "ckpt", trust=trust)  # every tensor's dtype and shape: a bad file is not passed on
    data = read_checkpoint(ckpt, "ckpt", trust=trust)
    hp = dict(data.get("hyper_parameters") or {})
    kind = _kind(hp)
    if kind is None or "state_dict" not in data:
        raise CheckpointError(f"ckpt={ckpt}: not a dasslab segmenter or diffusion checkpoint (expected "
                              f"…/checkpoints/last.ckpt of a `dasslab-train` run)")
    state = data["state_dict"]
    info: dict = {"format": FORMAT, "kind": kind}
    if kind == "segmenter":
        state = {k: v for k, v in state.items() if k.startswith("model.")}
        # the weights are in the file: the reader must not fetch or look for others (nor see our paths)
        hp["backbone"] = {**hp["backbone"], "pretrained": False, "weights": None}
        info.update(class_names=list(hp.get("class_names") or []), backbone=hp["backbone"])
    info["hyper_parameters"] = hp
    try:
        header = json.dumps(info)
    except TypeError as e:
        raise CheckpointError(f"ckpt={ckpt}: hyper-parameters are not plain values ({e})") from None
    # one tensor per name, contiguous and not sharing storage: what safetensors stores
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if kind == "segmenter":
        tensors = {k[len("model."):]: v for k, v in tensors.items()}
    return atomic_write_bytes(out, save(tensors, metadata={META_KEY: header}))
