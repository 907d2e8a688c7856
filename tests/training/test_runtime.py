"""Runtime helpers: device choice with clear errors; handing freed heap back to the OS lowers the resident set."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from skipganomaly.errors import ConfigError
from skipganomaly.training.inference import default_eval_batch
from skipganomaly.training.device import resolve_device

# Freed 16 KiB tensors between live ones leave holes in the C heap that glibc keeps; malloc_trim(0)
# hands their whole pages back. Prints the RSS drop in MiB, or "no-glibc".
CODE = """
import torch
from skipganomaly.training.memory import release_free_memory

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


def test_eval_batch_keeps_pixels_per_batch_not_images() -> None:
    """The default keeps the pixels of 64 (CPU) or 256 (GPU) images of 32x32 per batch, so large images
    do not multiply the memory of a scoring pass."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [default_eval_batch(cpu, size) for size in (32, 64, 128, 256, 512)] == [64, 16, 4, 1, 1]
    assert [default_eval_batch(gpu, size) for size in (32, 64, 128, 256)] == [256, 64, 16, 4]


def test_detector_scores_large_images_in_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from skipganomaly import detector as detector_module
    from skipganomaly.detector import Detector

    seen: list[int] = []
    real = detector_module.batched_apply

    def recording(fn, model, images, batch_size, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(batch_size)
        return real(fn, model, images, batch_size, *args, **kwargs)

    monkeypatch.setattr(detector_module, "batched_apply", recording)
    det = Detector(model="ganomaly", image_size=128, in_channels=1, epochs=1, batch_size=4, device="cpu",
                   progress=False, ngf=8, ndf=8)  # narrow: the batch sizes are the point, not the network
    det.fit(torch.randint(0, 256, (40, 1, 128, 128), dtype=torch.uint8))
    scores = det.decision_function(torch.randint(0, 256, (10, 1, 128, 128), dtype=torch.uint8))
    assert len(scores) == 10 and seen and set(seen) == {4}
