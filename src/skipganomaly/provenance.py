"""What a reader needs to trust a number: the command, the code version, the machine, library versions."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> str:
    """The short commit of the code that runs, with `-dirty` when the package's tracked files differ
    from it (edits to tests or docs do not count); 'unknown' outside a git checkout (e.g. a wheel)."""
    here = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=30,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()  # never takes index.lock

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def program() -> str:
    """How this command was started, for the commands a message suggests and a record repeats: `skipganomaly`
    when run by that name, else `python -m skipganomaly` with the interpreter that ran it (the other may not be
    on PATH)."""
    if Path(sys.argv[0]).name == "skipganomaly":
        return "skipganomaly"
    return f"{shlex.quote(sys.executable)} -m skipganomaly"


def command_line() -> str:
    """The command that started this process: the CLI's as it was typed (`program()`), else the interpreter's
    arguments, which for a script that called the package rerun it (for a notebook they name its kernel, for
    `python -c` only the flag: not enough to rerun those)."""
    started_by = Path(sys.argv[0])
    as_module = started_by.name == "__main__.py" and started_by.parent.name == "skipganomaly"
    if started_by.name == "skipganomaly" or as_module:
        return " ".join(part for part in (program(), shlex.join(sys.argv[1:])) if part)
    return shlex.join([sys.executable, *sys.argv])


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform says: two machines of one family can round alike
    and differ from a third, so a number is recorded with the CPU it was computed on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Command (as it was started, and the folder it ran in: its paths may be relative), commit, torch, threads,
    CPU model, GPU and Python of this process."""
    import torch

    from . import __version__

    return {"command": command_line(), "cwd": os.getcwd(), "skipganomaly": __version__, "git_commit": git_commit(),
            "torch": str(torch.__version__), "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}
