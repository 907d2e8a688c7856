"""Data-parallel training across processes started by `torchrun` (gloo on CPUs, NCCL on GPUs).

Each process trains on its slice of every global batch; gradients are averaged with one all_reduce
per optimiser step, which is the sum DistributedDataParallel's reducer computes. The DDP wrapper
itself is not used because its gradient hooks are armed by `forward()` calls, while a GAN step calls
sub-network methods (D.classify), runs D three times, and freezes D during G's step; the explicit
all_reduce gives the same averaged gradients without depending on those call patterns.
"""

from __future__ import annotations

import logging
import os
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import PACKAGE_LOGGER

T = TypeVar("T")


def init_from_environment() -> bool:
    """Join the process group that torchrun describes (WORLD_SIZE > 1); no-op otherwise.

    Returns True when this process is part of a multi-process run. Every process but rank 0 then logs errors
    only: rank 0 speaks for the run, so its information and warnings are not printed once per process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if not is_main_process():
        logging.getLogger(PACKAGE_LOGGER).setLevel(logging.ERROR)
    return True


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, logs and reports."""
    return world()[0] == 0


def average_gradients(params: list[nn.Parameter]) -> None:
    """Replace each gradient by its mean over processes (one flat all_reduce)."""
    _, size = world()
    grads = [p.grad for p in params if p.grad is not None]
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_tensor(value: Tensor) -> Tensor:
    """Mean of a tensor over processes (e.g. the D-reset value, so that all ranks decide alike)."""
    _, size = world()
    if size == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / size


def sync_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes, so evaluation
    and the checkpoint do not depend on which rank wrote them."""
    _, size = world()
    if size == 1:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= size


def broadcast_parameters(model: nn.Module) -> None:
    """Start every rank from rank 0's weights (they are seeded alike; this makes it certain)."""
    if world()[1] == 1:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dense = tensor.data.contiguous()  # channels-last weights: collectives want dense memory
        dist.broadcast(dense, src=0)
        tensor.data.copy_(dense)


def rank_zeros(value: T) -> T:
    """Rank 0's `value` on every rank (a choice each rank could make differently, such as the first free run
    folder once rank 0 holds one); `value` itself outside a process group."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
