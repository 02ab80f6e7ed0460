"""Where segmenter weights come from: library ImageNet checkpoints or a local file.

ImageNet weights (``pretrained=True``):

=================  ==========================================================
deeplabv2_r101     torchvision ``ResNet101_Weights.IMAGENET1K_V1`` (classic
                   ResNet-101, ``resnet101-63fe2227.pth``)
fcn8s_vgg16        torchvision ``VGG16_Weights.IMAGENET1K_V1``
                   (``vgg16-397923af.pth``; fc6/fc7 reshaped into convolutions)
daformer_mitb5     segmentation-models-pytorch ``mit_b5`` / ``imagenet``
                   (Hugging Face repo ``smp-hub/mit_b5.imagenet``,
                   ``model.safetensors``)
small              none: ``pretrained=True`` without a file is an error
=================  ==========================================================

Note: the DASS literature's DeepLab-V2 often starts from a COCO-pretrained Caffe
model (AdaptSegNet's ``DeepLab_resnet_pretrained_init``); DAFormer uses ImageNet.
Any such file can be given with ``weights=PATH`` (``backbone.weights=PATH``).

The cache is looked up first (torchvision: ``$TORCH_HOME/hub/checkpoints``; HF:
``$HF_HUB_CACHE`` or ``$HF_HOME/hub``, read at call time). If the file is not
there, the offline switches ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` and
``DASSLAB_OFFLINE`` are honoured before any network access; otherwise a TCP
connection to the host is tried with a short timeout
(``DASSLAB_DOWNLOAD_TIMEOUT`` seconds, default 10) and the download runs with
that socket timeout, without retries. Every failure is a :class:`WeightsError`
whose one-line message names both ways out: ``backbone.weights=PATH`` or
``backbone.pretrained=false``.

Local files (``weights=PATH``): a ``.safetensors`` file (e.g. written by
``dasslab-export-weights``), or anything ``torch.load(weights_only=True)`` reads
(tensors and plain containers: no code runs; other pickles are refused unless
``trust_checkpoint=true``, see :mod:`dasslab.checkpoints`) that is a state dict or a dict holding one under
``state_dict`` / ``model`` / ``model_state_dict`` / ``module`` (Lightning and
most training scripts). Keys may be the full Segmenter's (``backbone.*``,
``head.*``) or the encoder's alone (library naming); the wrapper prefixes
``module.``, ``model.``, ``_orig_mod.``, ``segmenter.``, ``net.`` and
``encoder.`` are stripped. Tensors whose names match but whose shapes differ
(e.g. a classifier for another number of classes) are skipped and reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from dasslab.errors import CheckpointError, UnsafeCheckpointError, WeightsError
from dasslab.utils.paths import link_problem

__all__ = [
    "IMAGENET_SOURCES",
    "LoadReport",
    "WeightsError",
    "fetch_imagenet_weights",
    "load_imagenet",
    "load_imagenet_state",
    "load_state_into",
    "load_weights",
    "match_weights",
    "offline_reason",
    "read_state_dict",
]

log = logging.getLogger(__name__)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DASSLAB_OFFLINE")
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "segmenter.", "net.", "encoder.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
_HOW_TO = (
    "put the file locally and set backbone.weights=PATH, "
    "or set backbone.pretrained=false to start from random initialisation"
)


@dataclass(frozen=True)
class TorchvisionFile:
    url: str

    @property
    def filename(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    def describe(self) -> str:
        return f"torchvision {self.filename}"


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    revision: str
    filename: str = "model.safetensors"

    def describe(self) -> str:
        return f"Hugging Face {self.repo_id}/{self.filename}"


def _smp_mit_b5() -> HubFile:
    import segmentation_models_pytorch as smp

    s = smp.encoders.encoders["mit_b5"]["pretrained_settings"]["imagenet"]
    return HubFile(repo_id=s["repo_id"], revision=s["revision"])


IMAGENET_SOURCES = {
    "deeplabv2_r101": lambda: TorchvisionFile("https://download.pytorch.org/models/resnet101-63fe2227.pth"),
    "fcn8s_vgg16": lambda: TorchvisionFile("https://download.pytorch.org/models/vgg16-397923af.pth"),
    "daformer_mitb5": _smp_mit_b5,
}


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}


def offline_reason() -> str | None:
    """The first offline switch that is set, as ``"VAR=value"``, else None."""
    for var in OFFLINE_VARS:
        if _truthy(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    return None


def _timeout() -> float:
    try:
        return float(os.environ.get("DASSLAB_DOWNLOAD_TIMEOUT", "10"))
    except ValueError:
        return 10.0


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _check_reachable(url: str, timeout: float) -> None:
    """Open (and close) a TCP connection to the host, or to the proxy urllib would use."""
    from urllib.request import getproxies, proxy_bypass

    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = getproxies().get(parsed.scheme)
    if proxy and not proxy_bypass(host):
        pp = urlparse(proxy if "://" in proxy else "http://" + proxy)
        host, port = pp.hostname, pp.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"{host}:{port} unreachable ({e.__class__.__name__}: {e})") from None


def _fail(name: str, src, reason: str) -> WeightsError:
    reason = " ".join(str(reason).split())  # keep the message on one line
    return WeightsError(
        f"ImageNet weights for segmenter {name!r} ({src.describe()}) are unavailable: {reason}. "
        f"Either {_HOW_TO}."
    )


def _torchvision_file(name: str, src: TorchvisionFile) -> Path:
    cache = Path(torch.hub.get_dir()) / "checkpoints" / src.filename
    if cache.is_file():
        return cache
    off = offline_reason()
    if off:
        raise _fail(name, src, f"not in the local cache {cache} and downloads are disabled ({off})")
    timeout = _timeout()
    try:
        _check_reachable(src.url, timeout)
        cache.parent.mkdir(parents=True, exist_ok=True)
        m = re.search(r"-([a-f0-9]+)\.", src.filename)
        with _socket_timeout(timeout):
            torch.hub.download_url_to_file(src.url, str(cache), hash_prefix=m.group(1) if m else None, progress=False)
    except Exception as e:  # noqa: BLE001 - any failure becomes one clear error
        raise _fail(name, src, f"not in the local cache {cache} and the download failed ({e})") from None
    return cache


def _hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_file(name: str, src: HubFile) -> Path:
    from huggingface_hub import hf_hub_download

    cache_dir = _hf_cache_dir()
    kw = dict(repo_id=src.repo_id, filename=src.filename, revision=src.revision, cache_dir=cache_dir)
    try:
        return Path(hf_hub_download(**kw, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or cache unreadable): try the network below
        pass
    off = offline_reason()
    if off:
        raise _fail(name, src, f"not in the local cache {cache_dir} and downloads are disabled ({off})")
    timeout = _timeout()
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        _check_reachable(endpoint, timeout)
        with _socket_timeout(timeout):
            return Path(hf_hub_download(**kw, etag_timeout=timeout))
    except Exception as e:  # noqa: BLE001
        raise _fail(name, src, f"not in the local cache {cache_dir} and the download failed ({e})") from None


def fetch_imagenet_weights(name: str) -> Path:
    """Path of the ImageNet checkpoint of segmenter ``name`` (cached or downloaded).

    Raises :class:`WeightsError` fast when it is neither cached nor downloadable.
    """
    if name not in IMAGENET_SOURCES:
        raise WeightsError(
            f"segmenter {name!r} has no ImageNet weights; give a file with backbone.weights=PATH "
            f"or set backbone.pretrained=false."
        )
    src = IMAGENET_SOURCES[name]()
    if isinstance(src, TorchvisionFile):
        return _torchvision_file(name, src)
    return _hub_file(name, src)


# --------------------------------------------------------------------------------------------------
# Local files


def read_state_dict(path: str | os.PathLike, setting: str = "backbone.weights",
                    trust: bool | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict (possibly nested in a checkpoint) from ``path`` without running code from it.

    ``.safetensors`` files are read by safetensors, anything else by
    :func:`dasslab.checkpoints.safe_torch_load` (``weights_only=True``). A file that only full
    unpickling could read raises :class:`~dasslab.errors.UnsafeCheckpointError` naming ``setting``
    and ``trust_checkpoint`` unless ``trust`` (or the ambient
    :func:`~dasslab.checkpoints.trust_checkpoints`) allows it.
    """
    from dasslab.utils.safe_load import safe_torch_load

    p = Path(path).expanduser()
    problem = link_problem(p)
    if problem:
        raise WeightsError(f"{setting}={path}: {problem}; expected a weights file (a state dict or a checkpoint)")
    if not p.is_file():
        raise WeightsError(
            f"weights file {str(p)!r} does not exist: set {setting} to an existing file "
            f"(a state dict or a checkpoint with 'state_dict'), or {setting}=null."
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(p), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"weights file {str(p)!r} could not be read ({e.__class__.__name__}: {e}).") from None
    else:
        try:
            obj = safe_torch_load(p, setting, map_location="cpu", trust=trust)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            raise WeightsError(str(e)) from None
    for _ in range(4):  # unwrap {"state_dict": {...}} and similar
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
        elif hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, dict):
            obj = obj.state_dict()  # a pickled nn.Module
        else:
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {str(p)!r} holds a {type(obj).__name__}, not a state dict.")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for pre in WRAPPER_PREFIXES:
            if key.startswith(pre):
                key, changed = key[len(pre) :], True
    return key


@dataclass
class LoadReport:
    """What :func:`load_state_into` loaded."""

    source: str
    loaded: list[str] = field(default_factory=list)  # model keys that received a tensor
    missing: list[str] = field(default_factory=list)  # model keys left as they were
    unused: list[str] = field(default_factory=list)  # file keys that matched nothing
    shape_mismatch: list[str] = field(default_factory=list)  # "key: file shape vs model shape"
    file_tensors: int = 0

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} model tensors not in the "
            f"file, {len(self.unused)} file tensors unused, {len(self.shape_mismatch)} shape mismatches"
        )


def match_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                  setting: str = "backbone.weights") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Which tensors of a (full-model or encoder-only) state dict go where in a Segmenter, nothing loaded:
    ``(model key -> tensor, report)``. Names are matched (wrapper prefixes stripped, the encoder's library
    names remapped), then each matched tensor's dtype is checked against the model's
    (:func:`dasslab.checks.tensors.check_tensors`: a non-float file is one line naming ``setting``; float64 is
    cast). ``model`` may live on the meta device (a check before any work)."""
    from dasslab.checks.tensors import cast_to, check_tensors, spec

    target = model.state_dict()
    report = LoadReport(source=source, file_tensors=len(state))
    stripped: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        stripped.setdefault(_strip(k), v)
    full = {k: v for k, v in stripped.items() if k in target}
    encoder = {k: v for k, v in stripped.items() if k not in target}
    remap = getattr(model.backbone, "remap_state_dict", None)
    if remap is not None:
        encoder = remap(encoder)
    candidates = [(k, k, v) for k, v in full.items()] + [(k, "backbone." + k, v) for k, v in encoder.items()]
    matched: dict[str, torch.Tensor] = {}
    for file_key, k, v in candidates:
        if k not in target or k in matched:
            report.unused.append(file_key)
        elif tuple(v.shape) != tuple(target[k].shape):
            report.shape_mismatch.append(f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}")
        else:
            matched[k] = v
    report.loaded = sorted(matched)
    report.missing = sorted(k for k in target if k not in matched)
    if not matched:
        extra = f", {len(report.shape_mismatch)} with the right name but another shape" if report.shape_mismatch else ""
        raise WeightsError(
            f"weights file {source!r}: 0 of its {len(state)} tensors match the "
            f"{getattr(model, 'name', type(model).__name__)} segmenter ({len(target)} tensors){extra}; "
            f"expected a state dict of this Segmenter or of its encoder. Set backbone.weights to a matching "
            f"file, or backbone.weights=null."
        )
    want = spec(target)
    cast = check_tensors(spec(matched), want, source, setting,
                         f"the {getattr(model, 'name', type(model).__name__)} segmenter")
    return cast_to(matched, want, cast, source, setting), report


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load a (full-model or encoder-only) state dict into a Segmenter, non-strictly (:func:`match_weights`).

    ``model`` must have ``backbone`` (and may have ``remap_state_dict`` on it to
    translate library names, e.g. VGG's fc layers). Raises :class:`WeightsError`
    when nothing matches.
    """
    matched, report = match_weights(model, state, source)
    model.load_state_dict(matched, strict=False)
    log.info(report.summary())
    return report


def load_weights(
    model: nn.Module, path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None
) -> LoadReport:
    """Load a local weights file into ``model`` (see module docstring for formats).

    ``state`` may hold the already read contents of ``path``. Warns when part of
    the backbone is left uninitialised or shapes mismatched.
    """
    if state is None:
        state = read_state_dict(path)
    report = load_state_into(model, state, source=str(path))
    missing_bb = [k for k in report.missing if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    if missing_bb or report.shape_mismatch:
        warnings.warn(
            f"{report.summary()}; backbone tensors not loaded: {missing_bb[:3]}{'...' if len(missing_bb) > 3 else ''}"
            f" shape mismatches: {report.shape_mismatch[:3]}",
            stacklevel=2,
        )
    return report


def load_imagenet(model: nn.Module, name: str, path: Path) -> LoadReport:
    """Load a library ImageNet checkpoint into the backbone; all backbone tensors must be covered."""
    return load_imagenet_state(model, name, read_state_dict(path, setting="backbone.pretrained cache file"),
                               source=str(path))


def load_imagenet_state(model: nn.Module, name: str, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """:func:`load_imagenet` for an already read state dict."""
    report = load_state_into(model, state, source=source)
    missing = [k for k in report.missing if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    if missing or report.shape_mismatch:
        raise WeightsError(
            f"ImageNet file {source!r} does not fit segmenter {name!r}: {len(missing)} backbone tensors "
            f"missing (e.g. {missing[:2]}), {len(report.shape_mismatch)} shape mismatches. Either {_HOW_TO}."
        )
    return report
