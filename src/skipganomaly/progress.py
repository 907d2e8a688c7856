"""Progress bars: one constructor, so every bar of the package behaves alike in a terminal and in a log file."""

from __future__ import annotations

import sys
from typing import IO, Any

LOG_INTERVAL_S = 30.0  # the least time between two redraws of a bar written to a file or a pipe


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A `tqdm.auto` bar. When its stream is not a terminal (`train ... > log 2>&1`, a batch job), it redraws at
    most every `LOG_INTERVAL_S` seconds: a long run's log gets a line per half minute, not ten a second.
    Notebook bars and an explicit `mininterval` are left alone."""
    from tqdm.auto import tqdm

    if "mininterval" not in kwargs and "notebook" not in tqdm.__module__ and not _terminal(kwargs.get("file")):
        kwargs["mininterval"] = LOG_INTERVAL_S
    return tqdm(*args, **kwargs)


def _terminal(stream: IO[str] | None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
