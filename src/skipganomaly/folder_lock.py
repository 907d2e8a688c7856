"""One command at a time per output folder.

Two commands writing one run, demo or benchmark folder at once (a second terminal, a job started twice) would
interleave their epochs, cells and reports into files that look whole. `claim_folder` holds an advisory lock on
a file in the folder for as long as the command writes there; a second command that claims it is refused in one
line naming the first. The operating system drops the lock when its process ends, however it ends, so a killed
command never leaves the folder claimed. Where locks are not available (Windows, some network file systems) the
folder is written unclaimed, as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from .errors import PACKAGE_LOGGER, ConfigError
from .provenance import command_line

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".skipganomaly.lock"  # hidden: not an image, so never read as data; removed when the command ends

log = logging.getLogger(PACKAGE_LOGGER)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that creating `folder` would create, outermost first."""
    missing = []
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        missing.append(path)
    return missing[::-1]


def _holder(path: Path) -> str:
    """Who holds the lock file, as it wrote itself there."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _take(path: Path) -> int | None:
    """An open descriptor of `path` holding its exclusive lock; None where this file system cannot lock.
    The lock is taken on the file that is at `path` afterwards: a file its previous holder removed while
    this process waited to open it is let go, and the new one taken."""
    assert fcntl is not None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # a read-only folder, or a lock file another user's killed command left
            raise ConfigError(f"cannot write {path}, which holds the folder for one command at a time (permission "
                              "denied): give an output folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{path.parent} is in use by another skipganomaly command ({_holder(path)}); wait "
                              "for it to end, or give another output folder") from None
        except OSError as err:  # e.g. ENOLCK on a network file system
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            log.debug("no lock on %s (%s): written unclaimed", path, err)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def claim_folder(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Hold `folder` (created if missing) for the block: a second claim, from any process, is a ConfigError
    naming the holder. Folders created here and left empty (a command refused before writing) are removed at
    the end. `enabled=False` (the processes of a torchrun group other than rank 0, which write nothing) claims
    nothing."""
    if not enabled or fcntl is None:
        yield
        return
    created = _missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        fd = _take(path)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": command_line()}).encode())
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held, so no process locks a file that is about to go
            os.close(fd)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # not empty: the command wrote there
            break


def in_use(folder: Path) -> bool:
    """Whether a command holds `folder` now (probed with a shared lock, let go at once)."""
    path = folder / LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing lets go of a shared lock taken here
    return False
