"""Handing memory back to the OS between the phases of a run (glibc's allocator; no-ops elsewhere)."""

from __future__ import annotations

import ctypes


def reduce_heap_fragmentation(threshold: int = 4 << 20) -> bool:
    """Serve allocations of `threshold` bytes and more with mmap, so freed activations go back to the OS,
    and never trim the heap that holds the smaller ones.

    glibc otherwise raises its mmap threshold after the first large free and keeps later activations
    in a heap whose free holes it cannot reuse well, so a training step peaks well above what it holds.
    The price is fresh, zeroed pages for every large tensor, so steps are slower (a lower threshold
    slower still): it is opt-in (`skipganomaly --low-memory ...`; figures in README, Speed and memory).
    Process-wide. Returns False where there is no glibc.
    """
    libc = _glibc()
    # -3 = M_MMAP_THRESHOLD; -1 = M_TRIM_THRESHOLD (a fixed mmap threshold would otherwise also fix the
    # trim threshold at 128 KiB, and trimming the heap after every step refaults its pages).
    return libc is not None and bool(libc.mallopt(-3, threshold)) and bool(libc.mallopt(-1, 1 << 30))


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the OS (glibc `malloc_trim`); cheap, so call it between phases.

    Loading CIFAR-10 frees ~30 MB arrays that glibc keeps in its heap and a
    finished training run leaves its activations' heap behind; without this, the next phase's memory
    comes on top of them. Returns False where there is no glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
