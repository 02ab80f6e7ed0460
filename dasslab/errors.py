"""The project's own errors: each message is one line naming the file or setting and what was expected.

Entry points print these as one line (the traceback only with ``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations


class DasslabError(Exception):
    """Base of every error whose message is meant for the user as it is."""


class CheckpointError(DasslabError, ValueError):
    """A checkpoint file is missing, unreadable, unsafe, or of the wrong kind."""


class DataError(DasslabError, ValueError):
    """Bad dataset input (a missing, unpaired, corrupt or mislabeled file, an empty split)."""


class OutputError(DasslabError, OSError):
    """An output folder cannot be created or written (the message names the setting)."""


class WeightsError(DasslabError, RuntimeError):
    """Pretrained weights could not be obtained or do not fit the model."""


class ConfigError(DasslabError, ValueError):
    """A config value is invalid; the message names the setting and what was expected."""


class StaleOutputError(DasslabError):
    """An output folder holds files made from other inputs or settings (reusing them would pass old results as new)."""


class UnsafeCheckpointError(CheckpointError):
    """A weights file or checkpoint that only unpickling with code execution could read (``trust_checkpoint``)."""
