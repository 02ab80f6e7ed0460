"""What made an output: file identities, data fingerprints, and the records outputs keep of them.

Every output that a later run may reuse records what made it, and is reused only when that
record equals what the new run would use (otherwise the run recomputes or refuses with one line
naming what changed):

* **files** (checkpoints, weights): :func:`file_identity` -- path, size, mtime and a SHA-256 of
  the content. Two identities are the same file when their digests agree (a moved or touched
  checkpoint is still the same model); without digests, when path, size and mtime agree.
* **data** (a dataset entry a run reads): :func:`samples_fingerprint` -- the root, the number of
  samples and labels, the class names, and a digest of every image and label file's path
  (relative to the root), size and mtime. A label edited in place, another folder with the same
  file names, an added or removed file: each changes it. It costs one ``stat`` per file (25 k
  files: well under a second) and reads no pixel. A dataset whose files are *generated* from
  its settings (``dataset=digits``: the cache is regenerated when they differ) is identified by
  those settings (:func:`entry_fingerprint`), which are part of every config it appears in.
* **records** on disk (``manifest.json``, ``predict.json``, ``DONE.json``): :func:`read_record`
  reads one, or fails with one line naming the file when it is damaged.

:func:`differences` compares two records key by key (file identities by content) and
:func:`describe_change` says in words what changed, for the one-line refusals.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dasslab.errors import DasslabError
from dasslab.utils.paths import real_path

__all__ = ["RecordError", "add_data_inputs", "data_fingerprints", "dataset_fingerprint", "describe_change",
           "differences", "entry_fingerprint", "file_identity", "read_record", "same_file", "samples_fingerprint"]

DATASET_KEYS = ("source", "source_val", "target", "target_train_labeled", "target_val")
_DIGESTS: dict[tuple, str] = {}        # (path, size, mtime_ns) -> sha256: a file is hashed once per process


class RecordError(DasslabError, ValueError):
    """A record an output keeps of what made it (manifest, predict.json, DONE.json) is damaged."""


# --------------------------------------------------------------------------- files
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    key = (str(path), size, mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[key]


def file_identity(path: str | os.PathLike | None, digest: bool = True) -> dict | None:
    """``{path, size, mtime_ns[, sha256]}`` of an input file (None for no path; a missing file: ``missing``)."""
    if not path:
        return None
    p = Path(real_path(path))
    try:
        st = p.stat()
    except OSError:
        return {"path": str(p), "missing": True}
    out = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if digest:
        out["sha256"] = _sha256(p, st.st_size, st.st_mtime_ns)
    return out


def _is_identity(value: Any) -> bool:
    return isinstance(value, Mapping) and "path" in value and ("size" in value or "missing" in value)


def same_file(a: Mapping | None, b: Mapping | None) -> bool:
    """Two :func:`file_identity` records name the same content (see the module docstring)."""
    if a is None or b is None:
        return a is b
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return all(a.get(k) == b.get(k) for k in ("path", "size", "mtime_ns", "missing"))


# --------------------------------------------------------------------------- data
def samples_fingerprint(samples: Iterable[tuple], root: str | os.PathLike | None = None,
                        class_names: Iterable[str] | None = None) -> dict:
    """The fingerprint of a list of ``(image, label or None)`` samples (see the module docstring)."""
    samples = list(samples)
    paths = [p for s in samples for p in s if p is not None]
    if root is None and paths:
        root = os.path.commonpath([os.path.dirname(str(p)) for p in paths])
    base = str(Path(root).expanduser().resolve()) if root is not None else ""
    h = hashlib.sha1()
    for p in paths:
        full = os.path.realpath(str(p))
        rel = os.path.relpath(full, base) if base else full
        try:
            st = os.stat(full)
            h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}|missing\n".encode())
    return {"root": base, "samples": len(samples), "labels": sum(1 for s in samples if s[1] is not None),
            "classes": list(class_names) if class_names is not None else None, "files": h.hexdigest()[:20]}


def _base(ds):
    while not hasattr(ds, "read_label") and hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


def dataset_fingerprint(ds) -> dict:
    """:func:`samples_fingerprint` of a built dataset (a ``SegmentationDataset`` or a limited subset of one)."""
    base = _base(ds)
    samples = getattr(ds, "samples", None) or base.samples
    return samples_fingerprint(samples, getattr(base, "root", None), getattr(ds, "class_names", None))


def entry_fingerprint(dataset_cfg, key: str) -> dict:
    """The fingerprint of ``dataset.<key>``: its files (the dataset is listed, not read), or for a generated
    dataset (a class with ``GENERATED = True``) its generation settings, which the config already holds.
    A dataset that cannot be listed here (no data on this machine) is recorded with the reason."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    entry = dataset_cfg.get(key)
    try:
        cls = get_class(str(entry._target_))
        args = {k: v for k, v in OmegaConf.to_container(entry, resolve=True).items() if not k.startswith("_")}
        if getattr(cls, "GENERATED", False):
            return {"generated": args}
        return dataset_fingerprint(cls(**args, transform=None))
    except Exception as e:  # noqa: BLE001 - no data here: the job itself will say why, in one line
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return {"unavailable": " ".join(str(cause).split())[:300]}


def data_fingerprints(cfg, tree: Mapping | None = None, generated: bool = True) -> dict:
    """``{key: fingerprint}`` for every dataset entry of ``cfg`` that ``tree`` (the job's resolved config after
    its ``ignore`` lists were applied) still holds: the data a pipeline job reads. ``generated=False`` leaves
    out generated datasets (their settings are in the config already)."""
    dataset = (tree or {}).get("dataset") if tree is not None else None
    out = {}
    for key in DATASET_KEYS:
        node = cfg.dataset.get(key) if cfg.get("dataset") is not None else None
        if node is None or not node.get("_target_"):
            continue
        if tree is not None and not (isinstance(dataset, Mapping) and isinstance(dataset.get(key), Mapping)):
            continue
        fp = entry_fingerprint(cfg.dataset, key)
        if generated or "generated" not in fp:
            out[key] = fp
    return out


def add_data_inputs(sub, tree: Mapping, inputs: dict) -> None:
    """What a pipeline job's cache key adds for its data (``dasslab.workflow.plan.stage_key``): ``inputs["data"]`` =
    the fingerprint of every dataset entry the job reads (left out of ``tree`` by no ``ignore`` list), so that a
    label edited in place or another folder behind the same setting is another job, never a stale reuse.
    Generated datasets (digits) add nothing: their settings are in ``tree``, and a key stays what it was."""
    data = data_fingerprints(sub, tree, generated=False)
    if data:
        inputs["data"] = data


# --------------------------------------------------------------------------- records
def read_record(path: str | os.PathLike, what: str, remedy: str) -> dict:
    """The JSON object in ``path``; :class:`RecordError` (one line naming the file and ``remedy``) if damaged."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        detail = " ".join(str(e).split())[:120]
        raise RecordError(f"{path}: unreadable {what} ({type(e).__name__}: {detail}); expected the JSON file "
                          f"dasslab writes; {remedy}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: unreadable {what} (holds a {type(data).__name__}); expected a JSON object; "
                          f"{remedy}")
    return data


def _equal(a: Any, b: Any) -> bool:
    if _is_identity(a) or _is_identity(b):
        return _is_identity(a) and _is_identity(b) and same_file(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def differences(old: Mapping, new: Mapping) -> list[str]:
    """The keys whose values differ between two records (file identities compared by content), in the new
    record's order (its most telling keys first), then those only the old one has."""
    keys = list(new) + [k for k in old if k not in new]
    return [k for k in keys if not _equal(old.get(k), new.get(k))]


def _short(value: Any) -> str:
    if _is_identity(value):
        sha = value.get("sha256")
        return f"{value['path']}" + (f" (sha256 {sha[:10]}…)" if sha else
                                     f" (size {value.get('size')}, mtime {value.get('mtime_ns')})")
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def _data_change(old: Any, new: Any) -> str | None:
    """Words for a change of a data fingerprint (or a ``{key: fingerprint}`` map of them)."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return None
    if "files" in old and "files" in new:
        if old.get("root") != new.get("root"):
            return f"the data is another folder ({old.get('root')} there, {new.get('root')} now)"
        if old.get("classes") != new.get("classes"):
            return f"the class list changed ({old.get('classes')} there, {new.get('classes')} now)"
        if (old.get("samples"), old.get("labels")) != (new.get("samples"), new.get("labels")):
            return (f"the files under {new.get('root')} changed ({old.get('samples')} images, {old.get('labels')} "
                    f"labels there, {new.get('samples')} and {new.get('labels')} now)")
        return (f"files under {new.get('root')} changed since (same names, other sizes or modification times: "
                f"edited in place or replaced)")
    for key in sorted(set(old) | set(new)):
        if not _equal(old.get(key), new.get(key)):
            inner = _data_change(old.get(key), new.get(key))
            if inner:
                return f"dataset.{key}: {inner}"
    return None


def describe_change(key: str, old: Any, new: Any) -> str:
    """``key: <old> there, <new> now`` in words (data fingerprints say which folder or files changed)."""
    if key in ("data", "dataset") or (isinstance(old, Mapping) and "files" in old):
        words = _data_change(old, new)
        if words:
            return f"{key}: {words}"
    return f"{key}: {_short(old)} there, {_short(new)} now"
