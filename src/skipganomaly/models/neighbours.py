"""Exact k-nearest-neighbour search against a bank of training rows, a chunk of the bank at a time, and
the bank of learned features that the feature-space scores compare with."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, StatisticsMissing

T = TypeVar("T")
SPREAD_FLOOR = 1e-3  # the least standard deviation a score term is divided by (a term almost constant on the
# training normals must not turn rounding noise into large scores)
BANK_CHUNK = 4096  # bank rows compared at a time, so memory stays bounded at any training-set size
STATISTICS_CHUNK = 512  # training images per pass when fitting banks: activation memory bounded at any set size


def in_chunks(fn: Callable[[Tensor], T], x: Tensor, size: int = STATISTICS_CHUNK) -> list[T]:
    """`fn` of `x` a chunk of rows at a time, so that fitting statistics holds one chunk's activations."""
    return [fn(x[i:i + size]) for i in range(0, len(x), size)]


def squared_distances(query: Tensor, rows: Tensor, query_sq: Tensor | None = None) -> Tensor:
    """[..., R]: squared Euclidean distances of query [..., D] to rows [R, D], by |q|^2 + |r|^2 - 2 q.r (one
    matrix product), floored at 0 against rounding. `query_sq` ([..., 1]) saves recomputing |q|^2 per block."""
    if query_sq is None:
        query_sq = query.pow(2).sum(-1, keepdim=True)
    return (query_sq + rows.pow(2).sum(1) - 2.0 * query @ rows.T).clamp_min(0.0)


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


def pooled_map(feature_map: Tensor, grid: int) -> Tensor:
    """[B, C * grid * grid]: a feature map [B, C, H, W] average-pooled to grid x grid and L2-normalised:
    what is where, at a coarse scale (global pooling, grid 1, keeps what but not where)."""
    h, w = int(feature_map.shape[-2]), int(feature_map.shape[-1])
    if h % grid == 0 and w % grid == 0:  # the same as adaptive pooling, and exported to ONNX at any batch size
        pooled = F.avg_pool2d(feature_map.float(), (h // grid, w // grid))
    else:
        pooled = F.adaptive_avg_pool2d(feature_map.float(), grid)
    return F.normalize(pooled.flatten(1), dim=1)


class FeatureBank(nn.Module):
    """Features of the training normals (L2-normalised for the cosine metric), and the mean cosine (or
    Euclidean) distance of a query to its `k` nearest rows, standardised by that distance's mean and spread
    on the training normals themselves (each left out of its own neighbours), so that it adds to other
    standardised scores.

    The rows are float16 (half the checkpoint; cosine exact to ~1e-3) and their number is known only
    after fitting: loading a state dict resizes them to the saved shape (tensors only, so checkpoints
    load with `weights_only=True`)."""


    METRICS = ("cosine", "euclidean")

    def __init__(self, dim: int, k: int, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in self.METRICS:
            raise ConfigError(f"metric must be one of {', '.join(self.METRICS)}, got {metric!r}")
        self.k, self.metric = k, metric
        self.register_buffer("rows", torch.zeros(0, dim, dtype=torch.float16))
        self.register_buffer("stats", torch.tensor([0.0, 1.0]))  # mean, std of the leave-one-out distance

    def fit(self, feats: Tensor) -> None:
        """feats: [N, dim] (L2-normalised for the cosine metric), N > k."""
        self.rows = feats.to(torch.float16)
        own = self.distance(feats, leave_self_out=True)
        # A floor on the spread: normals that all look alike must not turn rounding noise into score.
        self.stats = torch.stack([own.mean(), own.std().clamp_min(SPREAD_FLOOR)]).to(self.stats)

    def distance(self, feats: Tensor, leave_self_out: bool = False) -> Tensor:
        """Mean distance [B] (cosine, or Euclidean) to the k nearest rows (k + 1, dropping the nearest, for
        rows of the bank itself)."""
        if len(self.rows) == 0:
            raise StatisticsMissing("this model has no feature bank yet; train it first")
        k = self.k + int(leave_self_out)
        feats = feats.float()
        sq = feats.pow(2).sum(1, keepdim=True)

        def block(start: int, stop: int) -> Tensor:
            rows = self.rows[start:stop].float()
            if self.metric == "cosine":
                return 1.0 - feats @ rows.T
            return squared_distances(feats, rows, sq)  # the root after the top-k

        with torch.autocast(feats.device.type, enabled=False):  # distances near 0 need float32, not bf16
            best, _ = smallest_k(block, len(self.rows), k, BANK_CHUNK)
        best = best[:, int(leave_self_out):]
        # the Euclidean root of a floor above 0: a finite gradient (saliency maps) where a query sits on a row
        return (best.clamp_min(1e-12).sqrt() if self.metric == "euclidean" else best).mean(1)

    def standardised(self, feats: Tensor) -> Tensor:
        """[B]: the distance in standard deviations of the training normals' own distances, from their mean."""
        return (self.distance(feats) - self.stats[0]) / self.stats[1]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "rows")
        if isinstance(saved, Tensor) and saved.shape != self.rows.shape:
            self.rows = torch.empty(saved.shape, dtype=self.rows.dtype, device=self.rows.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
