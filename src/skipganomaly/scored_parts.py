"""What an interrupted `predict` keeps: the parts of its images it had scored, in a hidden file beside its CSV, so
the same command continues where it stopped instead of scoring a large folder again.

The file (`.NAME.csv.partial`) is JSON lines: first the call's identity (the checkpoint's bytes, the files with their
sizes, modification and status-change times and inodes, the part size, the code), then one line per finished part (its
paths read, how each is stored, its scores). A call continues only from a file of the same identity; a torn last
line (a kill in mid-write) is dropped; the file is removed once the CSV is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.images import FileForm
from .errors import PACKAGE_LOGGER
from .files import file_digest, write_text_atomic

log = logging.getLogger(PACKAGE_LOGGER)

PARTIAL_SUFFIX = ".partial"


def partial_file(out: Path) -> Path:
    """Where a call that writes the CSV `out` keeps its finished parts."""
    return out.parent / f".{out.name}{PARTIAL_SUFFIX}"


@dataclass
class ScoredPart:
    """One part's result: the files read (unreadable ones left out), how each is stored, the files of several
    frames, the scores of those read, and the files narrower than the training files (`LoadedFiles.narrow`)."""
    kept: list[str]
    forms: list[FileForm | None]
    several: list[str]
    scores: np.ndarray
    narrow: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "forms": [f.as_dict() if f is not None else None for f in self.forms],
                "several": self.several, "scores": [float(s) for s in self.scores], "narrow": self.narrow}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "ScoredPart":
        kept, scores = [str(p) for p in saved["kept"]], np.asarray(saved["scores"], dtype=np.float64)
        if len(kept) != len(scores) or len(saved["forms"]) != len(kept):
            raise ValueError("a part's lists differ in length")
        return cls(kept, [FileForm.from_dict(f) for f in saved["forms"]], [str(p) for p in saved["several"]], scores,
                   [str(p) for p in saved["narrow"]])


def call_identity(checkpoint: Path, files: Sequence[Path], part: int) -> dict[str, Any]:
    """What must be equal for an earlier call's scores to be this call's: the checkpoint's bytes, the files in order
    with their sizes, modification and status-change times and inodes (a file rewritten in between, even with its
    old time kept by `cp -p`, or made readable by a `chmod`, is scored again), the part size, and the code. Not the
    threshold: the labels are made from the scores at the end."""
    from . import __version__
    from .provenance import git_commit

    listing = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
            listing.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_ino}\n"
                           .encode("utf-8", "surrogateescape"))
        except OSError:
            listing.update(f"{path}\0gone\n".encode("utf-8", "surrogateescape"))
    return {"checkpoint": file_digest(checkpoint, "sha256").hexdigest(), "files": listing.hexdigest(), "n_files": len(files), "part": part, "skipganomaly": __version__,
            "git_commit": git_commit()}


@dataclass
class PartLog:
    """The finished parts of one `predict` call, on disk as they finish (`add`), and those of an interrupted call
    of the same identity (`done`, read by `open`)."""
    path: Path
    identity: dict[str, Any]
    done: list[ScoredPart] = field(default_factory=list)

    @classmethod
    def open(cls, out: Path, identity: dict[str, Any]) -> "PartLog":
        """Continue the parts kept for `out` where their identity is this call's; otherwise start afresh."""
        log_ = cls(partial_file(out), identity)
        earlier = _read_lines(log_.path)
        if earlier and earlier[0] == {"identity": identity}:
            for line in earlier[1:]:
                try:
                    log_.done.append(ScoredPart.from_dict(line))
                except (KeyError, TypeError, ValueError):
                    break
        if log_.done:
            n = sum(len(p.kept) for p in log_.done)
            log.info("continuing an interrupted call: %d of its parts (%d images read) were scored, kept in %s",
                     len(log_.done), n, log_.path)
            log_._rewrite()  # without a torn or unreadable tail
        else:
            if earlier:
                log.info("%s holds an interrupted call's scores of other files, another checkpoint or code; they are "
                         "scored again", log_.path)
            log_._rewrite()
        return log_

    def add(self, part: ScoredPart) -> None:
        """Keep a finished part: appended and synced, so a kill loses at most the part being scored."""
        self.done.append(part)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(part.as_dict()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _rewrite(self) -> None:
        lines = [{"identity": self.identity}, *(p.as_dict() for p in self.done)]
        write_text_atomic(self.path, "".join(json.dumps(line) + "\n" for line in lines))


def _read_lines(path: Path) -> list[Any]:
    """The JSON lines of `path` up to the first that does not parse (a torn end); none where it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            break
    return lines


def kept_note(out: Path, since: float | None = None) -> str | None:
    """What an interrupted call kept for `out`, for the line printed at Ctrl-C; None where it kept nothing (with
    `since`, the call's start: a file last written before it is an earlier call's, not this one's)."""
    try:
        if since is not None and partial_file(out).stat().st_mtime < since:
            return None
    except OSError:
        return None
    lines = _read_lines(partial_file(out))
    n = sum(len(line.get("kept", ())) for line in lines[1:] if isinstance(line, dict))
    parts = len(lines) - 1
    if parts < 1:
        return None
    return (f"{parts} finished part{'s' if parts > 1 else ''} ({n} image{'s' if n != 1 else ''} read) kept in "
            f"{partial_file(out)}")
