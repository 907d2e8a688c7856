"""Runtime helpers: device choice with clear errors; handing freed heap back to the OS lowers the resident set."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from skipganomaly.errors import ConfigError
from skipganomaly.training.runtime import resolve_device

# Freed 16 KiB tensors between live ones leave holes in the C heap that glibc keeps; malloc_trim(0)
# hands their whole pages back. Prints the RSS drop in MiB, or "no-glibc".
CODE = """
import torch
from skipganomaly.training.runtime import release_free_memory

def rss_mib():
    import resource
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20

blocks = [torch.ones(4096) for _ in range(4000)]   # 4000 x 16 KiB in the heap, touched
del blocks[::2]                                    # every other one freed: holes, not a free top
before = rss_mib()
if not release_free_memory():
    print("no-glibc")
else:
    print(before - rss_mib())
"""


def test_release_free_memory_returns_heap_holes_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.strip()
    if out == "no-glibc":
        pytest.skip("no glibc malloc_trim on this platform")
    assert float(out) > 16, f"RSS fell by only {out} MiB of ~31 MiB freed"


@pytest.mark.parametrize("name", ["tpu", "cuda:abc", "xpu", "meta", ""])
def test_unknown_or_unsupported_devices_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(name)


def test_absent_accelerators_are_config_errors_not_tracebacks() -> None:
    """Asking for a GPU this machine lacks (CUDA, a CUDA index past the last GPU, Apple MPS) is one
    clear error naming the device."""
    absent = [] if torch.cuda.is_available() else ["cuda", "cuda:0"]
    absent.append(f"cuda:{torch.cuda.device_count() + 1}")
    if not torch.backends.mps.is_available():
        absent.append("mps")
    for name in absent:
        with pytest.raises(ConfigError, match=f"device '{name}' requested but"):
            resolve_device(name)
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda", "mps")
