"""Single-layer features learned without labels from the training normals' small patches: contrast-normalised,
ZCA-whitened patches, a k-means dictionary, triangle encoding, mean pooling over a coarse grid.

After Coates, Lee & Ng, "An Analysis of Single-Layer Networks in Unsupervised Feature Learning" (AISTATS 2011).
Written here from the paper's description. It costs one k-means on sampled patches (no gradient steps), and
describes texture and colour at every place in the image, which a few epochs of a small CNN learn poorly.
Every operation is an unfold, a matrix product, slicing or arithmetic, so the encoder exports to ONNX with the
model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .neighbours import SPREAD_FLOOR, in_chunks, squared_distances

# Coates et al.'s constants, for pixels in [0, 255]: the variance added before the contrast normalisation
# (so flat patches are not blown up into noise), and the eigenvalue floor of the ZCA whitening.
CONTRAST_EPS = 10.0
WHITEN_EPS = 0.1
PATCHES_PER_IMAGE = 10  # the fewest patches drawn from each sampled image for the k-means fit
# Elements of the largest intermediate tensor per chunk when fitting ([images, positions, atoms] distances; about
# 150 MB in float32): the chunk of images shrinks as images or the dictionary grow.
CHUNK_ELEMENTS = 128 * 27 * 27 * 400


class PatchDictionary(nn.Module):
    """Encodes an image [B, C, H, W] in [-1, 1] as [B, grid * grid * atoms]: for each `patch` x `patch` window
    (stride 1), the triangle activation max(0, mean_k z_k - z_j) of its distances z to the `atoms` centroids,
    averaged over each of grid x grid regions, then each feature standardised by its mean and spread on the
    training normals (so that no atom dominates a Euclidean distance). `fit` learns the whitening, the
    centroids and those statistics from the images given (the training normals), drawing from torch's global
    generator (the detector's seed)."""

    def __init__(self, in_channels: int, image_size: int, atoms: int, patch: int = 6, grid: int = 2,
                 samples: int = 100_000, iterations: int = 10) -> None:
        super().__init__()
        if atoms < 1 or not 1 <= patch <= image_size or samples < atoms or iterations < 1:
            raise ConfigError(f"the patch dictionary needs atoms >= 1, 1 <= patch <= image size ({image_size}), "
                              f"samples >= atoms and iterations >= 1; got atoms={atoms}, patch={patch}, "
                              f"samples={samples}, iterations={iterations}")
        positions = image_size - patch + 1
        if not 1 <= grid <= positions:
            raise ConfigError(f"grid must be between 1 and {positions} (the patch positions per side), got {grid}")
        self.atoms, self.patch, self.grid, self.samples, self.iterations = atoms, patch, grid, samples, iterations
        dim = in_channels * patch * patch
        self.register_buffer("centre", torch.zeros(dim))  # mean of the normalised patches
        self.register_buffer("whiten", torch.zeros(dim, dim))  # ZCA matrix, applied on the right
        self.register_buffer("centroids", torch.zeros(atoms, dim))  # in the whitened space
        self.register_buffer("feature_mean", torch.zeros(self.dim))
        self.register_buffer("feature_std", torch.ones(self.dim))

    @property
    def dim(self) -> int:
        return self.grid * self.grid * self.atoms

    def _normalised_patches(self, x: Tensor) -> Tensor:
        """[B, L, D]: every patch (unfolded), contrast-normalised, in Coates et al.'s [0, 255] scale."""
        u = F.unfold((x.float().to(self.centre.device) + 1.0) * 127.5, self.patch).transpose(1, 2)
        u = u - u.mean(-1, keepdim=True)
        return u / torch.sqrt(u.var(-1, keepdim=True) + CONTRAST_EPS)

    def _chunk(self, positions: int, width: int) -> int:
        """Images per chunk so that a [images, positions, width] tensor stays near CHUNK_ELEMENTS."""
        return max(1, CHUNK_ELEMENTS // (positions * width))

    def fit(self, x: Tensor) -> Tensor:
        """Whitening and k-means centroids from `samples` patches of the images x [N, C, H, W], then the
        features' statistics over all of x; returns the (standardised) features of x [N, dim]. In float32
        whatever autocast is on: k-means assignments from bf16 distances would be noise."""
        with torch.autocast(x.device.type, enabled=False):
            return self._fit(x)

    def _fit(self, x: Tensor) -> Tensor:
        positions = (int(x.shape[-1]) - self.patch + 1) ** 2
        if len(x) * positions <= self.samples:  # few images: every patch of every one
            picks, per_image = torch.arange(len(x)), positions
        else:  # distinct images, at least PATCHES_PER_IMAGE random patches from each
            per_image = min(positions, max(PATCHES_PER_IMAGE, -(-self.samples // len(x))))
            picks = torch.randperm(len(x))[:-(-self.samples // per_image)]
        chunks = []
        step = self._chunk(positions, int(self.centre.numel()))
        for start in range(0, len(picks), step):
            u = self._normalised_patches(x[picks[start:start + step]])
            if per_image < positions:
                where = torch.randint(positions, (len(u), per_image), device=u.device)
                u = torch.gather(u, 1, where[..., None].expand(-1, -1, u.shape[-1]))
            chunks.append(u.flatten(0, 1))
        sample = torch.cat(chunks).double()
        if len(sample) < self.atoms:
            raise ConfigError(f"the patch dictionary needs at least {self.atoms} patches (patch_atoms) and the "
                              f"training images give {len(sample)}: use fewer atoms or more images")
        centre = sample.mean(0)
        values, vectors = torch.linalg.eigh(torch.cov((sample - centre).T))
        whiten = vectors @ torch.diag((values.clamp_min(0) + WHITEN_EPS).rsqrt()) @ vectors.T
        points = ((sample - centre) @ whiten).float()
        centroids = points[torch.randperm(len(points), device=points.device)[:self.atoms]].clone()
        for _ in range(self.iterations):  # Lloyd's k-means; an emptied centroid restarts at a random patch
            nearest = ((centroids * centroids).sum(1) - 2 * points @ centroids.T).argmin(1)
            counts = torch.bincount(nearest, minlength=self.atoms).float()
            sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
            restart = points[torch.randint(len(points), (self.atoms,), device=points.device)]
            centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], restart)
        self.centre, self.whiten, self.centroids = centre.float(), whiten.float(), centroids
        self.feature_mean.zero_()
        self.feature_std.fill_(1.0)
        raw = torch.cat(in_chunks(self, x, self._chunk(positions, self.atoms)))
        # a floor on the spread, so that a feature constant on the normals does not divide by zero: a test image
        # that activates it lies far away (a kind of patch the normals never show where it is)
        self.feature_mean, self.feature_std = raw.mean(0), raw.std(0).clamp_min(SPREAD_FLOOR)
        return (raw - self.feature_mean) / self.feature_std

    def forward(self, x: Tensor) -> Tensor:
        """[B, grid * grid * atoms] float32, standardised."""
        with torch.autocast(x.device.type, enabled=False):
            u = self._normalised_patches(x)
            w = (u - self.centre) @ self.whiten
            z = squared_distances(w, self.centroids).clamp_min(1e-12).sqrt()  # [B, L, K]; > 0: a finite gradient
            f = (z.mean(-1, keepdim=True) - z).clamp_min(0)
            side = int(x.shape[-1]) - self.patch + 1
            f = f.transpose(1, 2).reshape(-1, self.atoms, side, side)  # no batch size: ONNX keeps it dynamic
            # grid x grid regions, split at (i * side) // grid: slices with fixed bounds, which export to ONNX
            # where adaptive pooling of sizes that do not divide does not
            cuts = [i * side // self.grid for i in range(self.grid + 1)]
            regions = [f[:, :, cuts[i]:cuts[i + 1], cuts[j]:cuts[j + 1]].mean((2, 3))
                       for i in range(self.grid) for j in range(self.grid)]
            return (torch.stack(regions, -1).flatten(1) - self.feature_mean) / self.feature_std
