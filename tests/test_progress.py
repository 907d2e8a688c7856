"""Progress bars: sparse in log files, live in terminals, and every bar of the package made in one place."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import skipganomaly
from skipganomaly.progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_written_to_a_file_redraws_rarely_and_one_in_a_terminal_live() -> None:
    with progress_bar(total=3, file=io.StringIO()) as log_bar:
        assert log_bar.mininterval == LOG_INTERVAL_S and log_bar.maxinterval == LOG_INTERVAL_S
    log = io.StringIO()
    with progress_bar(total=300, file=log) as busy:  # updates over most of a second: the first and last lines only
        for _ in range(300):
            time.sleep(0.003)
            busy.update(1)
    assert log.getvalue().count("\r") <= 3
    with progress_bar(total=3, file=_Terminal()) as live_bar:
        assert live_bar.mininterval < 1
    with progress_bar(total=3, file=io.StringIO(), mininterval=0.5) as chosen:
        assert chosen.mininterval == 0.5
    log = io.StringIO()
    with progress_bar(total=3, file=log, leave=False) as transient:  # a short pass: no stale line in a file
        transient.update(3)
    assert transient.delay == LOG_INTERVAL_S and log.getvalue() == ""
    with progress_bar(total=3, file=_Terminal(), leave=False) as live_transient:
        assert not live_transient.disable and live_transient.delay == 0


def test_every_bar_of_the_package_is_made_by_progress_bar() -> None:
    package = Path(skipganomaly.__file__).parent
    direct = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py") if path.name != "progress.py"
              for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
              if re.search(r"\btqdm\(|import tqdm\b|tqdm import tqdm", line)]
    assert not direct, f"bars made without progress_bar: {direct}"
