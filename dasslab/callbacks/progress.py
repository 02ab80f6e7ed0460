"""The progress display of Lightning's loops: :class:`StepProgressBar`, the ``callbacks.progress`` of every stage.

Lightning's ``TQDMProgressBar`` whose training bar counts the global step out of ``max_steps`` (over epochs,
from the resumed step), and shows, for PTL, the domain n/N and its depth t_n; ``trainer.test`` and
``trainer.predict`` (``dasslab-eval``, ``dasslab-predict``) use it too. Its bars are
:class:`dasslab.utils.progress.Bar`: a tqdm bar on a terminal, a plain line every few percent in a log file.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from dasslab.utils.progress import LOG_EVERY_PERCENT, Bar


class LightningBar(Bar, Tqdm):
    """:class:`Bar` with Lightning's padding of the numbers it shows (a steady postfix)."""


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar counting the global step out of ``max_steps``; PTL adds n/N and t_n."""

    def __init__(self, refresh_rate: int = 1, every: float = LOG_EVERY_PERCENT, name: str | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.every, self.name = float(every), name     # name: the stage (make_trainer sets it)

    def _bar(self, desc: str, position: int = 0, leave: bool = True, every: float | None = None, **kw) -> Bar:
        return LightningBar(desc=desc, position=2 * self.process_position + position, disable=self.is_disabled,
                            leave=leave, dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT,
                            every=every or self.every, **kw)

    # -------------------------------------------------------------- the bars
    def init_sanity_tqdm(self) -> Bar:
        return self._bar(self.sanity_check_description, leave=False, every=100)

    def init_train_tqdm(self) -> Bar:
        return self._bar(self.train_description, smoothing=0)

    def init_validation_tqdm(self) -> Bar:
        during_fit = self.trainer.state.fn != "validate"
        # inside a training run a log gets one line per validation, not one every few percent
        return self._bar(self.validation_description, position=int(during_fit), leave=not during_fit,
                         every=100 if during_fit else None)

    def init_test_tqdm(self) -> Bar:
        return self._bar(self.test_description)

    def init_predict_tqdm(self) -> Bar:
        return self._bar(self.predict_description, smoothing=0)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if self.name and batch_idx == 0:
            self.test_progress_bar.set_description(self.name)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if self.name and batch_idx == 0:
            self.predict_progress_bar.set_description(self.name)

    # -------------------------------------------------------------- training: the global step
    def on_train_start(self, trainer, pl_module) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        bar.initial = bar.n = trainer.global_step          # a resumed run starts where it stopped
        bar.set_description(f"{self.name or 'train'} step")
        bar.refresh()

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        pass                                                # one bar over all epochs: no reset

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total):
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.n = step
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = {k.split("/")[-1]: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}
        domains = getattr(pl_module, "domains", None)
        if domains is not None and getattr(domains, "num_domains", 0) > 0:
            n = domains.domain(max(trainer.global_step - 1, 0))     # the domain of the step just done
            metrics = {"n": f"{n}/{domains.N}", "t_n": domains.depth(n), **metrics}
        return metrics

