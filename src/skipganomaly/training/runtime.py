"""Where and how tensors run: device choice, opt-in bf16 autocast, memory hand-back, batched no-grad passes."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from ..data.images import to_unit_range
from ..errors import ConfigError


def reduce_heap_fragmentation(threshold: int = 4 << 20) -> bool:
    """Serve allocations of `threshold` bytes and more with mmap, so freed activations go back to the OS,
    and never trim the heap that holds the smaller ones.

    glibc otherwise raises its mmap threshold after the first large free and keeps later activations
    in a heap whose free holes it cannot reuse well: a Skip-GANomaly++ step at batch 64 then peaks
    ~200 MiB above what it holds. The price is fresh, zeroed pages for every large tensor: in 20-step
    runs after loading CIFAR-10 (2 threads), 4 MiB gave 918-931 MiB at 58-66 images/s against
    1,121-1,140 MiB at 74-79 by default, and 1 MiB (the earlier setting) about half the speed. So it
    is opt-in (`skipganomaly --low-memory ...`; README, Speed and memory). Process-wide.
    Returns False where there is no glibc.
    """
    libc = _glibc()
    # -3 = M_MMAP_THRESHOLD; -1 = M_TRIM_THRESHOLD (a fixed mmap threshold would otherwise also fix the
    # trim threshold at 128 KiB, and trimming the heap after every step refaults its pages).
    return libc is not None and bool(libc.mallopt(-3, threshold)) and bool(libc.mallopt(-1, 1 << 30))


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the OS (glibc `malloc_trim`); cheap, so call it between phases.

    Loading CIFAR-10 frees ~30 MB arrays that glibc keeps in its heap (78 MiB of RSS here), and a
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


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {name!r} requested but Apple MPS is not available here; use --device cpu")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def compile_blocks(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> None:
    """torch.compile each part of `model` (generator, discriminator, ...) and each block of each part.

    Parts give whole-network graphs where a part is called as a module (G(x)); blocks cover the parts
    whose other methods the model calls instead (D.classify runs D's feature stack). A block called
    inside a compiled part is inlined into the part's graph, so nothing is compiled twice. `mode` is
    torch.compile's (e.g. "reduce-overhead": CUDA graphs, against kernel-launch overhead on GPUs).
    Off by default: see the README's speed section for what it costs and gains on a CPU.
    """
    for part in model.children():
        part.compile(backend=backend, mode=mode)
        for block in part.children():
            block.compile(backend=backend, mode=mode)


def default_eval_batch(device: torch.device, image_size: int = 32) -> int:
    """Batch size for no-grad passes: 256 images of 32x32 on GPUs, 64 on CPUs (where 256 scored no
    faster here, Skip-GANomaly++ on 1 thread, and raised peak memory by about 300 MiB), and as many
    pixels per batch at other sizes (16 images of 128x128 on a GPU, 4 on a CPU), so that memory does not
    grow with the square of the image size (64 images of 256x256 would need ~64 times the 120-145 MiB
    measured for 64 of 32x32 with Skip-GANomaly++, about 8 GiB; an estimate, not measured)."""
    base = 256 if device.type == "cuda" else 64
    return max(1, base * 32 * 32 // (image_size * image_size))


def autocast(device: torch.device, enabled: bool) -> ContextManager[object]:
    """bf16 autocast where asked (`--amp`). Not by default, on GPUs either: on an H200 (torch 2.11),
    float32 Skip-GANomaly++ trained faster than under autocast (batch 64: 2,458 vs 2,067 images/s;
    batch 512: 16,752 vs 15,874; `benchmarks/gpu_check.sh`), since cuDNN already runs float32
    convolutions as TF32 and these layers are too small for bf16 to repay its casts. On CPUs with AMX it is
    1.6-2x faster, but bf16 rounding changes results."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare_batch(images: Tensor, device: torch.device) -> Tensor:
    """uint8 images -> float [-1, 1] on `device`, channels-last (measured here: ~15% faster training and
    ~28% faster scoring of Skip-GANomaly++ on the CPU than the default layout)."""
    return to_unit_range(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device` with channels-last weights, the layout `prepare_batch` feeds it."""
    return model.to(device, memory_format=torch.channels_last)


def batched_apply(
    fn: Callable[[Tensor], Tensor],
    model: nn.Module,
    images: Tensor,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    train_mode: bool = False,
) -> Tensor:
    """Run `fn` over uint8 images without gradients, in batches; returns float32 on the CPU.

    By default in eval mode, which makes each image's result independent of batch size and of its
    batch neighbours. `train_mode=True` reproduces the reference evaluation instead (BatchNorm uses
    each batch's statistics, so results depend on the batch); running statistics are restored after.
    """
    saved = ({k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
             if train_mode else {})
    was_training = model.training
    model.train(train_mode)
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = prepare_batch(images[start:start + batch_size], device)
                with autocast(device, amp):
                    outputs.append(fn(batch).float().cpu())
    finally:
        if train_mode:
            model.load_state_dict(saved, strict=False)
        model.train(was_training)
    return torch.cat(outputs)
