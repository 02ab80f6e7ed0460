"""Label-free calibration of the translation settings per pair (docs/method.md §3; beyond the paper).

* :mod:`.plan`      which settings are ``auto`` and what a translation at depth t uses (:class:`TranslationPlan`);
* :mod:`.choose`    the choices as pure functions of measured numbers;
* :mod:`.measure`   one setting applied to the calibration images, scored without a target label (:class:`Probe`);
* :mod:`.calibrate` the calibration of one pair, ``calibration.json`` / ``.png``, the pipeline's job.
"""

from .plan import AUTO, TranslationPlan, TranslationSettings, calibration_mode, load_calibration

__all__ = ["AUTO", "TranslationPlan", "TranslationSettings", "calibration_mode", "load_calibration"]
