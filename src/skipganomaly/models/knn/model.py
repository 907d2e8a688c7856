"""Raw-pixel k-nearest-neighbour distance: the second yardstick a learned detector has to beat."""

from __future__ import annotations


import torch
from torch import Tensor

from ...errors import ConfigError
from ..base import ClosedFormModel
from ..neighbours import BANK_CHUNK, smallest_k, squared_distances
from ..registry import register


@register("knn")
class Knn(ClosedFormModel):
    """Keep every training normal (pixels, flattened); score = mean Euclidean distance in [-1, 1] pixel
    space to the `k` nearest of them (exact, brute force). The bank is stored as uint8, which is exact
    for images that came as uint8 (every loader here gives those)."""

    fitted_buffers = ("bank",)


    def __init__(self, in_channels: int = 3, image_size: int = 32, k: int = 5) -> None:
        super().__init__(in_channels, image_size)
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.k = k
        self.register_buffer("bank", torch.zeros(0, in_channels * image_size * image_size, dtype=torch.uint8))


    @property
    def is_fitted(self) -> bool:
        return len(self.bank) > 0

    def min_training_images(self) -> int:
        return max(2, self.k)

    def fit_closed_form(self, x: Tensor) -> None:
        if len(x) < self.k:
            raise ConfigError(f"knn with k={self.k} needs at least {self.k} training images, got {len(x)}")
        self.bank = ((x.flatten(1).float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def _bank_rows(self, start: int, stop: int) -> Tensor:
        return self.bank[start:stop].float() / 127.5 - 1.0

    def neighbours(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Distances [B, k] and bank indices [B, k] of each image's k nearest training normals."""
        self.check_fitted()
        with torch.autocast(x.device.type, enabled=False):  # distances of ~1e3 terms need float32
            return self._neighbours(x.flatten(1).float())

    def _neighbours(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """query: [B, D] float32."""
        q_sq = query.pow(2).sum(1, keepdim=True)

        def block(start: int, stop: int) -> Tensor:
            rows = self._bank_rows(start, stop)
            return squared_distances(query, rows, q_sq)

        d_sq, idx = smallest_k(block, len(self.bank), self.k, BANK_CHUNK)
        return d_sq.sqrt(), idx

    def score(self, x: Tensor) -> Tensor:
        return self.neighbours(x)[0].mean(1)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The mean of the k nearest training normals (what the report shows beside the input)."""
        _, idx = self.neighbours(x)
        images = self.bank[idx.flatten()].float().view(len(x), self.k, -1) / 127.5 - 1.0
        return images.mean(1).view(x.shape).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def output_name(self) -> str:
        return f"mean of the {self.k} nearest normals"

    def map_name(self) -> str:
        return "|input - that mean|"
