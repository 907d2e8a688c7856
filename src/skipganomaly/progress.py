"""Progress bars: one constructor, so every bar of the package behaves alike in a terminal and in a log file."""

from __future__ import annotations

import sys
from typing import IO, Any

LOG_INTERVAL_S = 30.0  # the least time between two redraws of a bar written to a file or a pipe


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A `tqdm.auto` bar. When its stream is not a terminal (`train ... > log 2>&1`, a batch job), it redraws at
    most every `LOG_INTERVAL_S` seconds unless told otherwise (and where a caller sets a new postfix: once per
    epoch), so a long run's log gets a line per half minute, not ten a second; a bar that is removed at its end
    (`leave=False`: an epoch's, a scoring pass's, a folder's decoding) appears only once it has run that long, so a
    short pass leaves no stale line and a long epoch still shows its progress. Notebook bars are left alone."""
    from tqdm.auto import tqdm

    if "notebook" not in tqdm.__module__ and not _terminal(kwargs.get("file")):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)  # tqdm's monitor would otherwise redraw after 10 s
        if kwargs.get("leave") is False:
            kwargs.setdefault("delay", LOG_INTERVAL_S)
    return tqdm(*args, **kwargs)


def _terminal(stream: IO[str] | None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
