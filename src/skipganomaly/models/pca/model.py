"""Raw-pixel PCA reconstruction error: the first yardstick a learned detector has to beat."""

from __future__ import annotations


import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError
from ..base import ClosedFormModel
from ..registry import register


@register("pca")
class Pca(ClosedFormModel):
    """Fit the principal subspace of the training normals (pixels in [-1, 1], flattened), keeping the
    fewest components that explain `explained_variance` of their variance; score = mean squared
    residual of an image outside that subspace. Fitted by scikit-learn's PCA."""

    fitted_buffers = ("mean", "components")

    def __init__(self, in_channels: int = 3, image_size: int = 32, explained_variance: float = 0.95) -> None:
        super().__init__(in_channels, image_size)
        if not 0.0 < explained_variance < 1.0:
            raise ConfigError(f"explained_variance must be in (0, 1), got {explained_variance}")
        self.explained_variance = explained_variance
        dim = in_channels * image_size * image_size
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(0, dim))  # [K, D], orthonormal rows


    @property
    def is_fitted(self) -> bool:
        return len(self.components) > 0

    def fit_closed_form(self, x: Tensor) -> None:
        from sklearn.decomposition import PCA

        flat = x.flatten(1).float().cpu().numpy()
        # Where images outnumber pixels, the D x D covariance is far cheaper than an SVD of the data.
        solver = "covariance_eigh" if len(flat) >= flat.shape[1] else "full"
        pca = PCA(n_components=self.explained_variance, svd_solver=solver).fit(flat)
        self.mean = torch.from_numpy(np.ascontiguousarray(pca.mean_)).float().to(self.mean.device)
        self.components = torch.from_numpy(np.ascontiguousarray(pca.components_)).float().to(self.mean.device)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(centred image, its projection onto the subspace), both [B, D] float32."""
        self.check_fitted()
        with torch.autocast(x.device.type, enabled=False):  # a residual is a small difference: float32
            centred = x.flatten(1).float() - self.mean
            return centred, (centred @ self.components.T) @ self.components

    def score(self, x: Tensor) -> Tensor:
        centred, projected = self._project(x)
        return (centred - projected).pow(2).mean(1)

    def reconstruct(self, x: Tensor) -> Tensor:
        _, projected = self._project(x)
        return (projected + self.mean).view(x.shape).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def output_name(self) -> str:
        return "PCA reconstruction"
