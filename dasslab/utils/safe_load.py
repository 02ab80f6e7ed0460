"""Reading tensor files without running code from them (the primitives under :mod:`dasslab.checkpoints`).

A ``.ckpt``/``.pth`` file is a pickle, and unpickling may call any function the
file names. Every tensor file the project reads goes through :func:`safe_torch_load`:
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only and
refuses anything else *before* calling it, or safetensors (no code at all). The project's
own checkpoints need nothing more (hyper-parameters are saved as plain dicts and lists),
so there is no allow-list. A file that needs more is refused with an
:class:`~dasslab.errors.UnsafeCheckpointError` naming the file, the setting and the opt-in:

* ``trust=True`` (argument), or
* ``with trust_checkpoints(True):`` around a run: the entry points enter it with the
  config's ``trust_checkpoint`` (off by default), so that every read of the run — including
  ``backbone.weights``, read deep inside model construction — sees the user's choice.

An explicit ``trust`` argument wins over the ambient setting. A trusted file is still read
with ``weights_only=True`` first; only when that fails is it unpickled fully, with a warning.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch

from dasslab.errors import CheckpointError, UnsafeCheckpointError
from dasslab.utils.paths import link_problem

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_trusted",
    "read_checkpoint",
    "safe_torch_load",
    "trust_checkpoints",
]

log = logging.getLogger(__name__)

TRUST_SETTING = "trust_checkpoint"
SAFETENSORS_SUFFIX = ".safetensors"
META_KEY = "dasslab"  # safetensors metadata: JSON {"kind", "hyper_parameters", ...} (dasslab.export.weights)

_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("dasslab_trust_checkpoint", default=False)


@contextlib.contextmanager
def trust_checkpoints(enabled: bool | None = True):
    """Within the block, loaders called without ``trust=`` unpickle files they cannot read safely.

    Entry points: ``with trust_checkpoints(cfg.get("trust_checkpoint")): …``.
    """
    token = _TRUST.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST.reset(token)


def checkpoint_trusted(trust: bool | None = None) -> bool:
    """``trust`` if given, else the ambient :func:`trust_checkpoints` setting (default False)."""
    return _TRUST.get() if trust is None else bool(trust)


def _unsafe_globals(path: Path, error: Exception) -> str:
    """Why the safe reader refused the file: the callables the pickle names (read statically, none called)."""
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - e.g. the legacy (non-zip) format: fall back to torch's message
        pass
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    names = list(dict.fromkeys(names))
    if names:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return f"unpickling it would call {', '.join(names[:3])}{more}, i.e. run code from the file"
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))
    reason = m.group(1).strip()[:120] if m else "not tensors and plain containers"
    return f"the weights-only reader cannot read it ({reason}): it is damaged or needs code to unpickle"


def unsafe_message(setting: str, path: str | Path, what: str) -> str:
    """The one-line refusal: file, setting, why, and the opt-in."""
    return (f"{setting}={path}: refused to load: {what}; a weights file or checkpoint needs only tensors and "
            f"plain containers. If you trust this file, rerun with {TRUST_SETTING}=true")


def safe_torch_load(path: str | Path, setting: str, map_location="cpu", trust: bool | None = None,
                    mmap: bool = False):
    """``torch.load`` that runs no code from the file (see the module docstring).

    Raises :class:`CheckpointError` (missing/unreadable) or :class:`UnsafeCheckpointError`
    (readable only by running code, and not trusted), each one line naming ``setting``.
    """
    p = Path(path).expanduser() if path else None
    if p is None or not p.is_file():
        raise CheckpointError(not_found(setting, path))
    try:
        # mmap: tensors stay on disk (a cheap check of a large resume checkpoint); zip-format files only
        return torch.load(str(p), map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(p))
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # a damaged pickle, not a refused one
            raise CheckpointError(f"{setting}={path}: cannot read the file ({_one_line(e)})") from None
        what = _unsafe_globals(p, e)
        if not checkpoint_trusted(trust):
            raise UnsafeCheckpointError(unsafe_message(setting, path, what)) from None
        log.warning("%s=%s: %s; loading it anyway because %s=true", setting, path, what, TRUST_SETTING)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise CheckpointError(f"{setting}={path}: cannot read the file ({_one_line(e)})") from None
    try:
        return torch.load(str(p), map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{setting}={path}: cannot read the file even trusted ({_one_line(e)})") from None


def not_found(setting: str, path) -> str:
    """The line for a checkpoint path that is not a file: a symlink loop or a dangling link says so."""
    problem = link_problem(Path(path).expanduser()) if path else None
    return f"{setting}={path}: {f'{problem}; expected a checkpoint file' if problem else 'file not found'}"


def _one_line(e: Exception) -> str:
    first = next((line for line in str(e).splitlines() if line.strip()), "").strip()
    if len(first) > 160 and ". " in first:      # a library's explanation after its first sentence: dropped
        first = first.split(". ", 1)[0]
    return f"{type(e).__name__}: {first}"[:300]


def _read_safetensors(p: Path, setting: str, map_location="cpu") -> dict:
    """An exported ``.safetensors`` file as a checkpoint-shaped dict (``state_dict``, ``hyper_parameters``)."""
    from safetensors import safe_open

    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(p), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{setting}={p}: cannot read the safetensors file ({_one_line(e)})") from None
    try:
        info = json.loads(meta.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        info = {}
    if info.get("kind") == "segmenter":  # exported under the Segmenter's own names
        state = {f"model.{k}": v for k, v in state.items()}
    return {"state_dict": state, "hyper_parameters": info.get("hyper_parameters", {}), "dasslab": info}


def read_checkpoint(path: str | Path, setting: str, map_location="cpu", trust: bool | None = None,
                    mmap: bool = False) -> dict:
    """The dict stored in a checkpoint file (``.ckpt`` or an exported ``.safetensors``), read safely
    (``mmap``: a ``.ckpt``'s tensors stay on disk until touched)."""
    p = Path(path).expanduser() if path else None
    if p is None or not p.is_file():
        raise CheckpointError(not_found(setting, path))
    if p.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(p, setting, map_location)
    ckpt = safe_torch_load(p, setting, map_location, trust=trust, mmap=mmap)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{setting}={path}: not a checkpoint (holds a {type(ckpt).__name__})")
    return ckpt
