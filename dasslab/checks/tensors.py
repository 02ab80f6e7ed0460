"""Weights against the architecture that will hold them: every tensor's dtype and shape, one line naming the file.

``load_state_dict`` copies whatever it is given into the model's tensors: int32 weights are silently cast to
float (a model whose every pixel becomes class 0), a float64 file doubles the memory of nothing. So before any
weights are loaded -- and again when they are (:func:`dasslab.checkpoints.load_segmenter`,
:func:`~dasslab.checkpoints.load_diffusion`, ``backbone.weights``) -- each tensor that the architecture holds
is compared with it (:func:`check_tensors`):

* its shape must be the architecture's;
* where the architecture holds floating-point numbers, the file must hold float16, bfloat16 or float32
  (float64 is accepted and cast to the architecture's type, with one log line); integer, boolean, complex or
  8-bit float tensors are refused;
* where the architecture holds integers (a BatchNorm's ``num_batches_tracked``), the file must hold integers.

Tensors the architecture does not hold are not read by the loaders and are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from dasslab.errors import CheckpointError

__all__ = ["FLOAT_DTYPES", "cast_to", "check_tensors", "describe", "spec"]

log = logging.getLogger("dasslab")

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CAST = (torch.float64,)        # accepted for floating-point weights, cast to the architecture's type


def describe(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def spec(tensors: Mapping) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``name -> (shape, dtype)`` of a state dict (a model's, possibly on the meta device, or a file's)."""
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def _problem(key: str, have: tuple, want: tuple) -> str | None:
    """What is wrong with one tensor (``(shape, dtype)`` pairs), or None."""
    (have_shape, have_dtype), (want_shape, want_dtype) = have, want
    if tuple(have_shape) != tuple(want_shape):
        return f"{key} has shape {list(have_shape)} where the architecture has {list(want_shape)}"
    if want_dtype.is_floating_point:
        if have_dtype in FLOAT_DTYPES or have_dtype == want_dtype or have_dtype in _CAST:
            return None
        return f"{key} holds {describe(have_dtype)} numbers, not float16, bfloat16 or float32 (float64 is cast)"
    kind_differs = (have_dtype == torch.bool) != (want_dtype == torch.bool)
    if have_dtype.is_floating_point or have_dtype.is_complex or kind_differs:
        return f"{key} holds {describe(have_dtype)} numbers where the architecture has {describe(want_dtype)}"
    return None


def check_tensors(found: Mapping, expected: Mapping, path, setting: str, what: str = "its architecture") -> list[str]:
    """Compare ``found`` (``name -> (shape, dtype)`` of the file, see :func:`spec`) with ``expected`` (the
    architecture's); :class:`CheckpointError` naming ``setting``, the file, the first bad tensor and how many
    are bad. Returns the names of the float64 tensors, which the loaders cast."""
    bad, cast = [], []
    for key, have in found.items():
        want = expected.get(key)
        if want is None:
            continue
        problem = _problem(key, have, want)
        if problem:
            bad.append(problem)
        elif have[1] in _CAST and want[1] not in _CAST:
            cast.append(key)
    if bad:
        more = f"; {len(bad)} of its {len(found)} tensors are wrong" if len(bad) > 1 else ""
        raise CheckpointError(f"{setting}={path}: {bad[0]}{more}; expected weights that fit {what}")
    return cast


def cast_to(state: dict, expected: Mapping, keys: list[str], path, setting: str) -> dict:
    """``state`` with the tensors ``keys`` (float64) cast to the architecture's dtype, said in one log line."""
    if not keys:
        return state
    log.warning("%s=%s: %d float64 tensors (e.g. %s) cast to %s, the architecture's type", setting, path, len(keys),
                keys[0], describe(expected[keys[0]][1]))
    return {k: (v.to(expected[k][1]) if k in keys else v) for k, v in state.items()}
