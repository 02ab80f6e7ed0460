"""Atomic file writes: a file is either absent or complete, never half-written.

The temporary file is created by ``tempfile`` beside the target with mode 0600; it is given the mode a
plain ``open()`` would have (0666 minus the user's umask) before it is renamed into place.

A write that fails (a full disk, a quota, a file-size limit such as ``ulimit -f``, a read-only folder) is
one :class:`~dasslab.errors.OutputError` line naming the file (:func:`write_fault`); the temporary file is
removed and whatever was at the path before is left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dasslab.errors import OutputError


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_SPACE = "free space or raise the limit"
_PLACE = "choose a folder you can write to"
_WHY = {errno.ENOSPC: ("the disk is full", _SPACE), errno.EDQUOT: ("the disk quota is used up", _SPACE),
        errno.EFBIG: ("over the file-size limit, see ulimit -f", _SPACE),
        errno.EROFS: ("a read-only file system", _PLACE), errno.EACCES: ("no permission", _PLACE),
        errno.ENOTDIR: ("a file stands where a folder is needed", _PLACE),
        errno.EEXIST: ("a file stands where a folder is needed", _PLACE)}


def write_fault(path: str | Path, exc: OSError, kept: str = "") -> OutputError:
    """The one-line error for a write to ``path`` that failed: the file, why, what was kept (``kept``, e.g. "the
    last complete checkpoint X is kept"), what to do."""
    why, action = _WHY.get(exc.errno, ("", _SPACE))
    reason = f"{exc.strerror or type(exc).__name__}{f', {why}' if why else ''}"
    return OutputError(f"{path}: cannot write ({reason}); {kept or 'no half-written file is left'}; {action}, "
                       f"then rerun")


def make_output_folder(path: str | Path, setting: str) -> Path:
    """Before any work: create the output folder ``path`` if needed and make sure files can be written there;
    :class:`OutputError` naming ``setting`` if not."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{setting}={path}: cannot create the folder ({e.strerror or e}); "
                          f"expected a writable folder") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{setting}={path}: folder is not writable; expected a writable folder")
    return out


def check_output_file(path: str | Path, setting: str) -> Path:
    """Before any work: ``path`` can become a file -- not a folder itself, and no file stands where one of its
    folders must be; :class:`OutputError` naming ``setting`` if not."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{setting}={path}: a folder; expected a file path (e.g. {path / 'model.safetensors'})")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"{setting}={path}: {parent} is a file, not a folder; expected a path inside a "
                                  f"folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{setting}={path}: {parent} is not writable; expected a folder you can write to")
            break
    return path


def atomic_write_bytes(path: str | Path, data: bytes, kept: str = "") -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place; a failed write is
    :func:`write_fault` (``kept``: what the message says was kept)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_fault(path, e, kept) from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_fault(path, e, kept) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(array) -> bytes:
    """Encode an HxW or HxWx3 uint8 array as PNG."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def atomic_write_png(path: str | Path, array) -> Path:
    """Write a uint8 image (HxWx3) or label map (HxW) as PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(array))


@contextmanager
def locked(path: str | Path):
    """An exclusive ``flock`` on ``path`` (created): processes that want one thing at once (a pipeline job, a
    generated dataset) serialise here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
