"""What an image or label file holds, whatever its name says, and how many pixels it decodes to.

A file's name is not its content: a label saved by a JPEG encoder and renamed ``.png`` decodes (OpenCV and
Pillow read by content) and silently loses classes to compression. So:

* **Labels** must hold PNG bytes (lossless; single-channel or palette, checked where they are decoded):
  :func:`check_label_bytes` names the format a label holds otherwise (JPEG, WebP, …).
* **Images** may hold any format Pillow or OpenCV decodes, lossy or not; :func:`format_note` says which format
  a file holds when it is not the one its extension names (the pre-scan reports it).
* **Pixel cap** (decompression bombs): a file's header is read before it is decoded, and an image or label
  larger than the cap (``data.max_pixels``, ``dasslab-predict max_pixels=``; default
  :data:`DEFAULT_MAX_PIXELS`) is refused in one line (:func:`check_pixels`). The cap is per process
  (:func:`set_max_pixels`, inherited by loader workers) and replaces Pillow's own bomb check, which would
  refuse without naming the setting (Pillow's ``MAX_IMAGE_PIXELS`` is therefore unset).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import NamedTuple

from PIL import Image

from dasslab.errors import ConfigError, DataError

__all__ = ["DEFAULT_MAX_PIXELS", "Header", "check_label_bytes", "check_pixels", "format_note", "header",
           "max_pixels", "set_max_pixels"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 100_000_000      # 10000 x 10000; a Cityscapes image is 2 million
FORMAT_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                    ".webp": "WEBP"}

Image.MAX_IMAGE_PIXELS = None         # the cap below is the one guard, and it names its setting
_cap = {"pixels": DEFAULT_MAX_PIXELS, "setting": "data.max_pixels"}


class Header(NamedTuple):
    """What a file's header says: Pillow's format name (``PNG``, ``JPEG``, ``WEBP`` …), size and mode."""

    format: str | None
    width: int
    height: int
    mode: str


def set_max_pixels(value=None, setting: str = "data.max_pixels") -> int:
    """Set this process's pixel cap (None: :data:`DEFAULT_MAX_PIXELS`); ``setting`` is named when it refuses."""
    if value is None:
        value = DEFAULT_MAX_PIXELS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{setting}={value!r}: expected an integer >= 1 (the most pixels an image may decode to)")
    _cap.update(pixels=int(value), setting=setting)
    return int(value)


def max_pixels() -> int:
    return _cap["pixels"]


def header(data: bytes | str | os.PathLike) -> Header | None:
    """The header of encoded image bytes (or of a file: only its first bytes are read), nothing decoded; None when
    Pillow does not know the format."""
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # e.g. a TIFF tag Pillow does not know
            with Image.open(source) as im:
                return Header(im.format, int(im.size[0]), int(im.size[1]), str(im.mode))
    except Exception:  # noqa: BLE001 - whatever Pillow raises for bytes it cannot identify
        return None


def check_pixels(path, head: Header | None) -> None:
    """:class:`DataError` naming the file and the setting when it would decode to more pixels than the cap."""
    if head is None:
        return
    n, cap = head.width * head.height, _cap["pixels"]
    if n > cap:
        raise DataError(f"{path}: {head.width}x{head.height} = {n} pixels, more than {_cap['setting']}={cap} (a "
                        f"guard against decompression bombs); shrink the image or raise {_cap['setting']}")


def format_note(path, head: Header | None) -> str | None:
    """``"holds JPEG data"`` when the content is not the format the extension names, else None."""
    suffix = str(path).lower().rsplit(".", 1)[-1]
    named = FORMAT_OF_SUFFIX.get(f".{suffix}")
    found = head.format if head is not None else None
    if found is None or named is None or found == named:
        return None
    return f"holds {found} data, not the {named} its extension names"


def check_label_bytes(path, data: bytes) -> Header | None:
    """A label must hold PNG bytes (lossless): else one :class:`DataError` line naming what it holds. Returns the
    header (pixel cap checked)."""
    head = header(data)
    if not data.startswith(PNG_SIGNATURE):
        what = f"{head.format} data" if head is not None and head.format else "no image Pillow knows"
        lossy = " (JPEG and WebP compression change class indices)" if what in ("JPEG data", "WEBP data") else ""
        raise DataError(f"{path}: holds {what}, not PNG{lossy}; expected a lossless single-channel or palette PNG "
                        f"label (re-save it as PNG from the original label)")
    check_pixels(path, head)
    return head
