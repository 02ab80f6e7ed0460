"""Translation as a library call: SGG(phi^n(x), g) for a batch, and the one seed rule.

Every user of translation — the ``dasslab-translate`` export, the translation-quality
measurement, the Table 2 (a)/(c) baselines and PTL's per-domain pools — calls
:func:`translate_batch` (one batch) or :func:`translate_images` (many, in chunks), so
the same (seed, depth, chunk) always draws the same noise whatever the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Translation", "chunk_seed", "guidance_enabled", "translate_batch", "translate_images"]


def chunk_seed(seed: int, depth: int, chunk: int) -> int:
    """The generator seed of one chunk of a translation: fixed by (seed, depth, chunk index) alone."""
    return (int(seed) * 1_000_003 + int(depth) * 7_919 + int(chunk)) % (2**63 - 1)


def guidance_enabled(guidance) -> bool:
    """Whether a ``guidance`` config group (or validated ``GuidanceSettings``) asks for guidance at all."""
    if not guidance:
        return False
    if not hasattr(guidance, "enabled"):   # a config group: the one check of the settings decides
        from dasslab.guidance import validate_guidance

        guidance = validate_guidance(guidance)
    return bool(guidance.enabled)


@dataclass
class Translation:
    """A translated batch with what the sampler recorded on the way."""

    images: Tensor
    stats: list[dict] = field(default_factory=list)   # one dict per reverse step (Sampler.stats)
    skipped: int = 0                                   # reverse steps whose guidance was not finite

    @property
    def shift_over_sigma(self) -> list[float]:
        """``||lambda Sigma grad|| / sigma_k`` (RMS) of each guided step."""
        return [float(s["shift_over_sigma"]) for s in self.stats if s.get("shift_rms", 0) > 0]


def translate_batch(sampler, images: Tensor, labels: Tensor | None, depth: int, num_steps: int | None = None,
                    guide: nn.Module | None = None, guidance: Mapping[str, Any] | None = None,
                    arrangement: Mapping[str, Any] | str | None = None,
                    generator: torch.Generator | None = None, variance: str | float = "beta") -> Translation:
    """SGG(phi^depth(images), guide) with ``labels`` as the guidance target (Sec. 4.1-4.2).

    ``sampler``: a :class:`~dasslab.diffusion.sampler.Sampler` of the target DDPM;
    ``guide``: a segmenter exposing ``normalize`` and ``forward_normalized`` (frozen);
    ``guidance`` / ``arrangement``: the config groups of the same names (plain dicts).
    ``variance``: Sigma of the reverse steps (``translate.variance``): ``beta`` (the paper),
    ``posterior`` or an interpolation weight, see :meth:`~dasslab.diffusion.schedule.NoiseSchedule.reverse_variances`.
    Without a guide, or with guidance off, this is the unguided phi^n.
    """
    from dasslab.guidance import make_guidance

    fn = None
    if guide is not None and guidance_enabled(guidance):
        if labels is None:
            raise ValueError("translate_batch: guided translation needs the source labels")
        fn = make_guidance(guide.normalize, guide.forward_normalized, labels, guidance, arrangement)
    out = sampler.translate(images, int(depth), num_steps, guidance=fn, generator=generator, variance=variance)
    return Translation(out, list(sampler.stats), int(sampler.skipped))


def translate_images(sampler, images: Tensor, labels: Tensor | None, depth: int, num_steps: int | None = None,
                     guide: nn.Module | None = None, guidance: Mapping[str, Any] | None = None,
                     arrangement: Mapping[str, Any] | str | None = None, batch_size: int = 8, seed: int = 0,
                     device: torch.device | str | None = None, first_chunk: int = 0,
                     variance: str | float = "beta") -> Iterator[tuple[int, Translation]]:
    """Translate ``images`` in chunks of ``batch_size``; yields ``(chunk index, Translation)``.

    Chunk ``c`` is drawn from a generator seeded with :func:`chunk_seed` (seed, depth, c), so a
    chunk's result does not depend on which other chunks run (resumable exports) nor on the caller.
    """
    device = torch.device(device) if device is not None else images.device
    for i, start in enumerate(range(0, len(images), batch_size)):
        ci = first_chunk + i
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device) if labels is not None else None
        gen = torch.Generator(device=device).manual_seed(chunk_seed(seed, depth, ci))
        yield ci, translate_batch(sampler, x, y, depth, num_steps, guide, guidance, arrangement, gen, variance)
