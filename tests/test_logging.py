"""One logger for the whole package, so that a filter or level set on it reaches every module's records."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import skipganomaly
from skipganomaly import sweep
from skipganomaly.data import labelled


def test_every_module_logs_to_the_package_logger() -> None:
    package = Path(skipganomaly.__file__).parent
    other = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if "getLogger(" in line and not re.search(r"getLogger\(PACKAGE_LOGGER\)", line)]
    assert not other, f"loggers other than PACKAGE_LOGGER: {other}"


def test_a_sweep_prints_a_repeated_warning_of_any_module_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=skipganomaly.errors.PACKAGE_LOGGER), sweep._each_warning_once():
        for _ in range(3):
            labelled.log.warning("the same words from the data loader")
            sweep.log.warning("the same words from the sweep")
            labelled.log.info("information is not filtered")
    assert caplog.text.count("the same words from the data loader") == 1
    assert caplog.text.count("the same words from the sweep") == 1
    assert caplog.text.count("information is not filtered") == 3
