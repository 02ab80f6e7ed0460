"""One progress display for every command: a terminal gets a tqdm bar, a log file plain lines.

:class:`Bar` is a tqdm bar: on a terminal the usual one; when its stream is not a terminal (``> run.log``, a
pipeline job's ``<key>.log``, a Slurm log) it writes one plain line every ``every`` percent
(:data:`LOG_EVERY_PERCENT`) and at the end, never a carriage return::

    adapt step: 10/40  25% [00:05<00:15,  1.99it/s, n=2/8, t_n=150, loss=3.530]

:func:`progress` gives it to the loops that are not Lightning's (``dasslab-translate``, the translation-quality
analysis, the sampler); Lightning's loops get it through :class:`dasslab.callbacks.progress.StepProgressBar`.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from tqdm import tqdm

LOG_EVERY_PERCENT = 5
LINE_FORMAT = "{desc}{n_fmt}/{total_fmt} {percentage:3.0f}% [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Bar(tqdm):
    """A tqdm bar on a terminal; one plain line every ``every`` percent elsewhere (see the module docstring)."""

    def __init__(self, *args: Any, every: float = LOG_EVERY_PERCENT, **kwargs: Any) -> None:
        kwargs.setdefault("file", sys.stdout)
        self.lines = not is_terminal(kwargs["file"])
        self.every, self._next, self._printed = float(every), 0.0, None
        if self.lines:
            kwargs.update(mininterval=0, miniters=1, position=0)
        super().__init__(*args, **kwargs)

    def _line(self) -> None:
        d = self.format_dict
        if self._printed == d["n"]:
            return
        d["bar_format"] = LINE_FORMAT if d["total"] else "{desc}{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        self.fp.write(self.format_meter(**d).strip() + "\n")
        self.fp.flush()
        self._printed = d["n"]

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self.lines:
            return super().display(msg, pos)
        if msg == "" or self.disable or not self.total:   # a clear; a count without a total prints at the end
            return True
        percent = 100.0 * self.n / self.total
        if percent >= self._next or self.n >= self.total:
            self._line()
            self._next = (percent // self.every + 1) * self.every
        return True

    def clear(self, *args: Any, **kwargs: Any) -> None:
        if not self.lines:
            super().clear(*args, **kwargs)

    def moveto(self, n: int) -> None:
        if not self.lines:
            super().moveto(n)

    def close(self) -> None:
        if self.lines and not self.disable:
            if self.n:
                self._line()
            self.fp = io.StringIO()        # tqdm ends a bar with "\n" or "\r": not in a log
        super().close()


def progress(iterable=None, total: int | None = None, desc: str = "", every: float = LOG_EVERY_PERCENT,
             **kwargs: Any) -> Bar:
    """The same display for a loop of ours: ``for x in progress(items, desc="translate n=200"): …``."""
    return Bar(iterable, total=total, desc=desc, every=every, dynamic_ncols=True, file=sys.stdout,
               bar_format=BAR_FORMAT, **kwargs)


