"""Writing result files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .errors import PACKAGE_LOGGER, CheckpointError


TEXT_ENCODING = dict(encoding="utf-8", errors="surrogateescape")
"""How text files are written and read: UTF-8, with a file name that is not UTF-8 (e.g. Latin-1 from a Windows
share, which Python reads as lone surrogates) kept as its original bytes, so the path written is the path on disk."""


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write (its own name, so two writers never share one), flushed to disk and
    renamed over `path` when the block ends, removed when it fails (a full disk, an interrupt): `path` is then the old
    file or the whole new one, never a part-written one, even after a crash of the machine."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:  # said with the file the caller writes, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        with contextlib.suppress(OSError):  # some mounts (vfat, SMB) refuse chmod; the file is still good
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private (0600); results are shared like any file
        try:
            os.replace(tmp, path)
        except OSError as err:  # a folder of that name, say
            raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    with replacing(path) as tmp:
        tmp.write_text(text, **TEXT_ENCODING)


def readable_name(name: str) -> str:
    """A file name for display (HTML, figure captions): bytes that are not UTF-8 shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def few_names(paths: Sequence[str | os.PathLike[str]], shown: int = 3, whole: bool = False) -> str:
    """The first few file names of a list, readably, for a log line ("a.png, b.png, c.png ..."); `whole`: the
    whole paths (where the folder says which file it is)."""
    return (", ".join(readable_name(str(p) if whole else Path(p).name) for p in paths[:shown])
            + (" ..." if len(paths) > shown else ""))


def say_if_not_utf8(names: Sequence[str], written: Path) -> None:
    """Warn where file names that are not UTF-8 go into a text file: it keeps their bytes, so the path is exact, but
    a reader that expects UTF-8 (Python's csv by default, pandas, a spreadsheet) refuses the whole file."""
    odd = [name for name in names if not _utf8(name)]
    if odd:
        logging.getLogger(PACKAGE_LOGGER).warning(
            "%d file names are not valid UTF-8; %s keeps their bytes as they are, so a reader that expects UTF-8 "
            "refuses it (in Python: open(..., encoding='utf-8', errors='surrogateescape')): %s", len(odd), written,
            few_names(odd, whole=True))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def file_digest(path: str | os.PathLike[str], algorithm: str) -> Any:
    """A hashlib digest of a file's bytes, read in 1 MiB blocks (data sets and image files alike)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def json_text(data: Any, indent: int | None = None) -> str:
    """JSON that every parser reads: a value that is not a finite number (a closed-form model's validation
    loss, the AUROC of a test set with one label) is written as null, since NaN and Infinity are not JSON."""
    def finite(value: Any) -> Any:
        if isinstance(value, float):  # numpy's float64 is a float too
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=indent, allow_nan=False)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while `path` is written (a read-only folder, a full disk) as one CheckpointError naming that
    file, not the temporary file it is written through."""
    try:
        yield
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from None


def save_torch_atomic(path: Path, payload: Any) -> None:
    """torch.save through `replacing`: a crash at any moment leaves either the old file or the new one, never a
    truncated one."""
    with replacing(path) as tmp, tmp.open("wb") as fh:
        try:
            torch.save(payload, fh)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as this
            raise OSError(errno.EIO, f"could not write it ({str(err).splitlines()[0][:120]}; is the disk "
                                     "full?)", str(path)) from None


def load_torch_checked(path: Path, fmt: str, version: int | tuple[int, ...], readable_as: str,
                       kind: str) -> dict[str, Any]:
    """torch.load with weights_only=True (tensors and plain values only: a file cannot run code), then
    check its format tag and version; every failure is one CheckpointError line, e.g.
    "<path> is not a readable <readable_as> (...)" or "<path> is not a <kind>"."""
    if path.is_file() and not os.access(path, os.R_OK):  # is_zipfile below would call it a damaged file
        raise CheckpointError(f"{path} cannot be read: permission denied")
    if path.is_file() and not zipfile.is_zipfile(path):  # torch's own error for this is a paragraph about pickles
        raise CheckpointError(f"{path} is not a readable {readable_as} (not a complete PyTorch file: truncated, or "
                              "another kind of file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path} is not a readable {readable_as} ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not a {kind}")
    versions = version if isinstance(version, tuple) else (version,)
    if payload.get("format_version") not in versions:
        raise CheckpointError(f"{path} has format version {payload.get('format_version')}; "
                              f"this version reads {' and '.join(map(str, versions))}")
    return payload
