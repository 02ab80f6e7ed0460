"""Progressive Translation Learning (Sec. 4.3-4.4).

The segmenter g starts from the source-only model g_0 (``segmenter.init_ckpt``). For domain
n = 1 … N (``ptl=progressive``) the guide g_{n-1} is a frozen snapshot of the segmenter taken at the
domain's first step, the source images are translated as

    X^n = SGG(phi^{t_n}(X^S), g_{n-1})                                        (Eq. 11)

and the segmenter is fine-tuned for K iterations on

    L_ft = CE(g(X^n), Y^S) + CE(g(X^S), Y^S)                                  (Eq. 12)

(``adapt.loss=ada``: the first term alone, Table 3 (a)). ``ptl=direct`` is a single domain at n = N
guided by the source model (Table 2 (c); with ``guidance=none`` the phi^N baseline of Table 2 (a));
``ptl=none`` translates nothing (a control for the extra iterations); ``ptl=ceiling`` replaces X^n
by labelled target-train images (perfect translations, same budget: the ceiling of what translation
can give). ``adapt.self_training`` adds target self-training (beyond the paper).

Read in this order:

* :mod:`dasslab.ptl.schedule` — n of a step, its depth t_n, the learning-rate factor;
* :mod:`dasslab.ptl.data` — source (and target) batches as a function of the step;
* :mod:`dasslab.ptl.module` — one iteration: entering a domain (guide, pool, watch), Eq. 12;
* :mod:`dasslab.ptl.watch` — what each domain trains on, scored;
* :mod:`dasslab.ptl.config` — the settings' defaults and checks.

The mIoU-over-n curve is a callback (:mod:`dasslab.callbacks.ptl`); translating one batch is
:mod:`dasslab.guidance.translation` (shared with ``dasslab-translate``).
"""

from dasslab.ptl.config import validate_ptl, validate_self_training
from dasslab.ptl.data import PTLDataModule, SourceStream, build_datamodule
from dasslab.ptl.module import PTLModule, build
from dasslab.ptl.schedule import DomainSchedule, lr_factor

__all__ = ["DomainSchedule", "PTLDataModule", "PTLModule", "SourceStream", "build", "build_datamodule", "lr_factor",
           "validate_ptl", "validate_self_training"]
