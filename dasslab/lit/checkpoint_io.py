"""Checkpoints written so that a fault while saving loses nothing: :class:`AtomicCheckpointIO`.

Lightning's own writer stages a checkpoint in the system's temporary folder and moves it into place; where
that folder is another file system the move is a copy straight into the target, so a full disk there could
truncate the last good ``last.ckpt``, and the fault surfaced as a long traceback after training. Here the
checkpoint is serialised in memory, written to a temporary file beside its target, synced and renamed
(:func:`dasslab.utils.io.atomic_write_bytes`): the file is either the old one or the new one, complete. A
failed write (a full disk, a quota, ``ulimit -f``) is one line naming the file and the last complete
checkpoint of the folder, from which ``resume=auto`` continues.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from dasslab.utils.io import atomic_write_bytes

__all__ = ["AtomicCheckpointIO"]


def _kept(path: Path) -> str:
    last = path.parent / "last.ckpt"
    if last.is_file() and last != path:
        return f"the last complete checkpoint {last} is kept (resume=auto continues from it)"
    if path.is_file():
        return f"the previous {path.name} is kept complete (resume=auto continues from it)"
    return "no half-written checkpoint is left"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose save is atomic and whose write faults are one line (module docstring)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        atomic_write_bytes(path, buffer.getbuffer(), kept=_kept(path))
