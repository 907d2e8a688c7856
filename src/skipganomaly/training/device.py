"""Where and how tensors run: device choice, the channels-last layout, opt-in bf16 autocast and compilation."""

from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager

import torch
from torch import Tensor, nn

from ..data.images import to_unit_range
from ..errors import ConfigError


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
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use cpu (--device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {name!r} requested but Apple MPS is not available here; use cpu (--device cpu)")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device` with channels-last weights, the layout `prepare_batch` feeds it."""
    return model.to(device, memory_format=torch.channels_last)


def prepare_batch(images: Tensor, device: torch.device) -> Tensor:
    """uint8 images -> float [-1, 1] on `device`, channels-last: faster than the default layout for these
    convolutions, in training and scoring (README, Speed and memory)."""
    return to_unit_range(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, enabled: bool) -> ContextManager[object]:
    """bf16 autocast where asked (`--amp`). Off by default on every device: bf16 rounding changes results,
    and on GPUs cuDNN already runs float32 convolutions as TF32 while these layers are too small for bf16
    to repay its casts. Speeds on a CPU with AMX and on a GPU: README, Speed and memory."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a CPU that computes bf16 natively (AVX512-BF16 or AMX), where `--amp` halves
    these models' training time (README, Speed and memory). GPUs: False, since bf16 does not repay its
    casts on layers this small there; nor other CPUs, which have no bf16 arithmetic to gain from."""
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private: probed, not assumed
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def warn_emulated_bf16(device: torch.device, amp: bool) -> None:
    """Warn when bf16 autocast is asked for on a CPU that has no bf16 arithmetic: torch then emulates it,
    and a training pass of the default model took about 10 times as long as in float32 (an AVX2-only AMD
    EPYC, README, Speed and memory)."""
    if amp and device.type == "cpu" and not native_bf16(device):
        warnings.warn("--amp (bf16 autocast) on a CPU without AVX512-BF16 or AMX is emulated and many times "
                      "slower than float32 here; drop --amp", RuntimeWarning, stacklevel=3)


def compile_blocks(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> None:
    """torch.compile each part of `model` (generator, discriminator, ...) and each block of each part.

    Parts give whole-network graphs where a part is called as a module (G(x)); blocks cover the parts
    whose other methods the model calls instead (D.classify runs D's feature stack). A block called
    inside a compiled part is inlined into the part's graph, so nothing is compiled twice. `mode` is
    torch.compile's (e.g. "reduce-overhead": CUDA graphs, against kernel-launch overhead on GPUs).
    Off by default: compiling takes minutes before the first step, which only long runs repay (README,
    Speed and memory).
    """
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:  # said before training, not as torch's error at the first step
        raise ConfigError(f"compile: unknown torch.compile backend {backend!r}; this torch has {', '.join(known)}")
    for part in model.children():
        part.compile(backend=backend, mode=mode)
        for block in part.children():
            block.compile(backend=backend, mode=mode)
