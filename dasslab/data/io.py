"""Reading and writing images and label files, with errors that name the file.

Every reader returns numpy arrays and raises :class:`DataError` (a
``ValueError`` and a :class:`dasslab.errors.DasslabError`) with a one-line message
naming the file and what was expected when a file is missing, unreadable or of the
wrong kind. ``DataError`` lives in :mod:`dasslab.errors` and is re-exported here and
by :mod:`dasslab.data.base`.

Label formats (docs/method.md §6):

* :func:`read_index_label` -- 8-bit single-channel or *palette* PNGs whose pixel
  values are indices (GTA5, Cityscapes, ``folder``). Read with PIL so that a
  palette image yields its indices; OpenCV would return the palette colours.
* :func:`read_first_channel_label` -- 16-bit-per-channel PNGs whose class id is
  in the file's first (R) channel (SYNTHIA). Read with OpenCV
  ``IMREAD_UNCHANGED``; PIL silently truncates 16-bit RGB to 8 bits.

Labels are read by content, not by name: a label file must hold PNG bytes (JPEG or WebP bytes under a
``.png`` name are refused, naming what they are); images may hold any format OpenCV or Pillow decodes.
Every file's header is read before it is decoded: over the pixel cap it is refused
(:mod:`dasslab.data.formats`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dasslab.data.formats import Header, check_label_bytes, check_pixels, header
from dasslab.errors import DataError
from dasslab.utils.paths import link_problem

__all__ = ["DataError", "list_files", "read_first_channel_label", "read_image", "read_index_label", "write_png"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what read_image decodes
# files a data folder may hold that are not data (the pre-scan does not report them)
NOT_DATA = ("thumbs.db", "desktop.ini")


def read_bytes(path: str | os.PathLike, what: str = "image") -> bytes:
    """A data file's bytes; :class:`DataError` naming it when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {link_problem(path) or f'{what} file not found'}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None


def decode_image(data: bytes, path) -> tuple[np.ndarray, Header | None]:
    """Encoded image bytes as an ``HxWx3 uint8`` RGB array, and their header.

    Any format OpenCV or Pillow decodes, whatever the extension says; the header is read first and an image
    over the pixel cap (:mod:`dasslab.data.formats`) is refused before it is decoded."""
    head = header(data)
    check_pixels(path, head)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is not None:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), head
    if head is not None:                 # a format only Pillow decodes
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB")), head
        except Exception as e:  # noqa: BLE001 - whatever Pillow raises for a damaged file
            raise DataError(f"{path}: cannot decode image ({head.format} data: {type(e).__name__}: {e}); expected "
                            f"a complete image file") from None
    raise DataError(f"{path}: cannot decode image (corrupt or not an image); expected a PNG/JPEG file")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``HxWx3 uint8`` RGB array (grey and RGBA are converted; see :func:`decode_image`)."""
    return decode_image(read_bytes(path, "image"), path)[0]


def read_index_label(path: str | os.PathLike, lut: np.ndarray | None = None) -> np.ndarray:
    """Read an 8-bit index label (mode ``L`` or ``P``) as ``HxW uint8``; map through ``lut`` if given.

    The file must hold PNG bytes (:func:`~dasslab.data.formats.check_label_bytes`: JPEG or WebP bytes under
    a ``.png`` name are refused, naming what they are). Colour (RGB) label files are refused: their pixels
    are colours, not class ids. A plain greyscale PNG is decoded by OpenCV (several times faster than PIL on
    small files); palette PNGs and anything else go through PIL, which returns palette indices.
    """
    data = read_bytes(path, "label")
    head = check_label_bytes(path, data)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.ndim == 2:  # greyscale: the values are the indices
        return lut[arr] if lut is not None else arr
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            if mode not in ("L", "P", "I;16", "I"):
                raise DataError(
                    f"{path}: label image has mode {mode}"
                    f"{' (colours)' if mode in ('RGB', 'RGBA') else ''}; expected a single-channel or palette PNG "
                    "whose pixel values are class indices (not colours)"
                )
            arr = np.asarray(im)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for broken files
        fmt = f"{head.format} data, " if head is not None else ""
        raise DataError(f"{path}: cannot decode label image ({fmt}{type(exc).__name__}: {exc})") from None
    if lut is not None:
        return lut[arr]
    return arr


def read_first_channel_label(path: str | os.PathLike, lut: np.ndarray | None = None) -> np.ndarray:
    """Read a (16-bit) label PNG whose class id is in the first channel; map through ``lut`` if given.

    OpenCV returns channels in BGR order, so the file's first channel is ``[..., -1]``.
    A single-channel file is used as is.
    """
    data = read_bytes(path, "label")
    check_label_bytes(path, data)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(f"{path}: cannot decode label image (corrupt PNG)")
    if arr.ndim == 3:
        arr = arr[:, :, 2] if arr.shape[2] >= 3 else arr[:, :, 0]  # BGR(A): the file's R is index 2
    if lut is not None:
        return lut[arr]
    return arr


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an ``HxW`` (label) or ``HxWx3`` RGB ``uint8`` array as a PNG."""
    array = np.ascontiguousarray(array)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise DataError(f"{path}: could not write PNG")


def list_files(folder: str | os.PathLike, extensions=IMAGE_EXTENSIONS, skipped: list | None = None) -> dict[str, Path]:
    """Map file stem -> path for files in ``folder`` with one of ``extensions`` (case-insensitive).

    Two files with the same stem (``a.png`` and ``a.jpg``) are ambiguous and raise :class:`DataError`, as does a
    symlink that leads nowhere (a loop, a dangling link): named, not skipped.
    ``skipped`` (a list) receives the other files of the folder that look like data (not hidden, not
    ``Thumbs.db``): what the loader leaves out, which the pre-scan reports rather than drop silently.
    """
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in it:
            problem = link_problem(entry.path) if entry.is_symlink() else None
            if problem:
                raise DataError(f"{entry.path}: {problem}; expected a data file (remove the link or point it at "
                                f"the file)")
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in extensions or not entry.is_file():
                if (skipped is not None and entry.is_file() and not entry.name.startswith(".")
                        and entry.name.lower() not in NOT_DATA):
                    skipped.append(Path(entry.path))
                continue
            if stem in out:
                raise DataError(
                    f"{out[stem]} and {entry.path}: two files with the same stem; expected one per sample"
                )
            out[stem] = Path(entry.path)
    return dict(sorted(out.items()))
