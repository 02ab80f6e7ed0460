"""Whole-image and sliding-window inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "whole",
                   crop: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> torch.Tensor:
    """Logits (N,K,H,W) for images ``x`` (N,3,H,W).

    ``whole`` runs the model once. ``slide`` runs it on ``crop``-sized windows placed
    every ``stride`` pixels (the last window flush with the border) and averages the
    logits where windows overlap.
    """
    if mode == "whole":
        return model(x)
    if mode != "slide":
        raise ValueError(f"eval.inference.mode={mode!r}: expected 'whole' or 'slide'")
    if crop is None:
        raise ValueError("eval.inference.crop must be set for mode=slide")
    ch, cw = int(crop[0]), int(crop[1])
    sh, sw = (int(stride[0]), int(stride[1])) if stride is not None else (ch // 2, cw // 2)
    n, _, h, w = x.shape
    if h < ch or w < cw:
        raise ValueError(f"eval.inference.crop={list(crop)} is larger than the image {h}x{w}")
    ys = _starts(h, ch, sh)
    xs = _starts(w, cw, sw)
    out = None
    count = torch.zeros(1, 1, h, w, device=x.device)
    for y0 in ys:
        for x0 in xs:
            logits = model(x[:, :, y0:y0 + ch, x0:x0 + cw])
            if out is None:
                out = torch.zeros(n, logits.shape[1], h, w, device=x.device, dtype=logits.dtype)
            out[:, :, y0:y0 + ch, x0:x0 + cw] += logits
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    return out / count


def _starts(size: int, crop: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - crop, 0) + 1, max(stride, 1)))
    if starts[-1] + crop < size:
        starts.append(size - crop)
    return starts


def upsample_to(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
