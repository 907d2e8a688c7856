"""Errors the tool raises on bad input; the CLI turns each into a one-line message."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Iterator


# The one logger every module writes to, so that what is set on it reaches every record: the warnings a report
# lists (a filter) and torchrun's quiet ranks (a level).
PACKAGE_LOGGER = "skipganomaly"

# Exit code of a command that wrote what it could while some of its work failed (benchmark cells, unreadable files
# given to predict), each named; 2 is bad input (every error below), 3 a benchmark stopped by its time limit,
# 130/143 Ctrl-C/SIGTERM, BUG_EXIT an unexpected exception (Python's own 1 would read as "partly failed").
PARTLY_FAILED_EXIT = 1
BUG_EXIT = 70  # EX_SOFTWARE of sysexits.h: an internal error


@contextlib.contextmanager
def warnings_said() -> Iterator[list[str]]:
    """The package's warnings (and errors) logged inside the block, their messages in order, each once: what a run's
    report lists beside its numbers (a terminal's lines are gone once it closes). A filter, not a handler, reads
    them: where no handler is set up (a library user, a benchmark's worker process) Python's last-resort handler
    still prints them."""
    said: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and (message := record.getMessage()) not in said:
            said.append(message)
        return True

    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.addFilter(keep)
    try:
        yield said
    finally:
        logger.removeFilter(keep)


class SkipGanomalyError(Exception):
    """Base class: anything the user can fix by changing the input or the options."""

    exit_code = 2  # what the CLI exits with after printing the message


class DataError(SkipGanomalyError):
    """A folder, image or array that cannot be used."""


class CheckpointError(SkipGanomalyError):
    """A saved detector that is missing, truncated, foreign or of another format version."""


class ConfigError(SkipGanomalyError):
    """An option value outside what a model or the training loop supports."""


class StatisticsMissing(ConfigError):
    """A score that compares with statistics of the training normals (a feature bank), asked before they were
    fitted: they are fitted after the last epoch, so a checkpoint of an unfinished run has none."""


class ModelError(SkipGanomalyError):
    """A model whose outputs break the `AnomalyModel` contract (one finite score per image, results batch by
    batch): a defect of the model's code, named in one line rather than as a wrong threshold or an index error
    further on."""


def not_fitted(message: str) -> ConfigError:
    """A `NotFittedError`: a ConfigError that is also scikit-learn's NotFittedError, so that both the
    project's handlers and scikit-learn's helpers recognise it."""
    return _not_fitted_class()(message)


@functools.cache
def _not_fitted_class() -> type[ConfigError]:
    # Built on first use: importing scikit-learn is heavy (it brings scipy), and only an unfitted
    # detector needs its exception class.
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    class NotFittedError(ConfigError, SklearnNotFittedError):
        """A detector (or model) used before `fit()` or `Detector.load()`."""

    NotFittedError.__module__, NotFittedError.__qualname__ = __name__, "NotFittedError"
    return NotFittedError


def __getattr__(name: str) -> Any:
    if name == "NotFittedError":  # `from skipganomaly.errors import NotFittedError` builds it
        return _not_fitted_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
