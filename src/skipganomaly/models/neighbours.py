"""Exact k-nearest-neighbour search against a bank of training rows, a chunk of the bank at a time."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def smallest_k(block_distances: Callable[[int, int], Tensor], n_rows: int, k: int,
               chunk: int) -> tuple[Tensor, Tensor]:
    """The k smallest distances [B, k] (ascending) and their bank indices [B, k], from
    `block_distances(start, stop)` -> [B, stop - start]: a running top-k, so memory stays bounded at any
    bank size. `n_rows` must be at least 1."""
    best_d: Tensor | None = None
    best_i: Tensor | None = None
    for start in range(0, n_rows, chunk):
        d = block_distances(start, min(start + chunk, n_rows))
        idx = torch.arange(start, start + d.shape[1], device=d.device).expand(len(d), -1)
        if best_d is not None and best_i is not None:
            d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
        best_d, pos = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
        best_i = idx.gather(1, pos)
    assert best_d is not None and best_i is not None, "empty bank"
    return best_d, best_i
