"""What a path the user gave turns out to be when it is not a plain file or folder: a symlink loop, a dangling link.

``Path.is_file()`` and ``Path.is_dir()`` answer False for both (and ``Path.resolve()`` raises ``RuntimeError`` on a
loop in Python 3.11), so a loop used to be reported as "not found", or as an error naming no file.
:func:`link_problem` says what it is, for a message that names the file.
"""

from __future__ import annotations

import errno
import os

__all__ = ["link_problem", "real_path"]


def link_problem(path: str | os.PathLike) -> str | None:
    """``"a symlink loop"`` / ``"a dangling symlink (to …)"`` when ``path`` (or a link on the way to it) cannot be
    followed; None for anything else (an existing file or folder, a plain missing path)."""
    try:
        os.stat(path)
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (following it never reaches a file)"
    try:
        if os.path.islink(path):
            return f"a dangling symlink (to {os.readlink(path)}, which does not exist)"
    except OSError:
        pass
    return None


def real_path(path: str | os.PathLike) -> str:
    """The absolute path with links followed where they lead somewhere (never raises on a loop)."""
    return os.path.realpath(os.path.expanduser(os.fspath(path)))
