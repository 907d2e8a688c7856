"""SIGTERM (`kill`, a scheduler's stop, a container's shutdown) handled as Ctrl-C is: a long command stops
where it stands, keeps what it finished, and says how to continue, instead of vanishing without a word."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a KeyboardInterrupt, so every Ctrl-C clean-up runs for it too."""

    exit_code = 128 + signal.SIGTERM  # what a process killed by SIGTERM exits with, by the shell's convention


INTERRUPTED_EXIT = 128 + signal.SIGINT  # a command stopped by Ctrl-C, by the same convention


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal fired
        fired = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated(f"signal {signum}")

    interrupt.stops_as_ctrl_c = True  # type: ignore[attr-defined]
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        # Within an outer block of the same kind (the CLI around a sweep), a fired signal keeps SIGTERM ignored
        # while the outer clean-up runs (it prints what is kept); the outermost block restores the original.
        if not (fired and getattr(previous, "stops_as_ctrl_c", False)):
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM are ignored (main thread only): a clean-up that writes what an
    interrupt kept (a benchmark's tables) finishes whole, not cut in half by a second Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

