"""Random-state helpers shared by the training modules and their callbacks."""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["own_rng"]


@contextmanager
def own_rng(device: torch.device | str | None = None):
    """Run a block without touching the global torch RNG (CPU, and the CUDA device in use)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
