"""The geometric transformations self-supervised heads learn to recognise (rotations, mirror images)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rotate(x: Tensor, k: int) -> Tensor:
    """`torch.rot90(x, k, dims=(2, 3))` of square images, written with transpose and flip, which ONNX exports."""
    return [x, x.transpose(2, 3).flip(2), x.flip(2).flip(3), x.transpose(2, 3).flip(3)][k % 4]


def transform_all(x: Tensor, flips: bool) -> Tensor:
    """Every transformation of every image, transformation-major: [T * B, C, H, W] with T = 4 or 8
    (rotations by 0, 90, 180, 270 degrees, then the same of the mirrored image)."""
    sources = [x, x.flip(3)] if flips else [x]
    return torch.cat([rotate(s, k) for s in sources for k in range(4)])


def transformation_cross_entropy(logits: Tensor, n_transforms: int) -> Tensor:
    """[B]: the summed cross-entropy of the true transformation, from logits [T * B, T] of
    `transform_all`'s transformation-major batch. Written without the batch size, so that an ONNX
    export keeps a dynamic batch axis."""
    log_p = F.log_softmax(logits.float().reshape(n_transforms, -1, n_transforms), dim=-1)  # [T, B, T]
    return -log_p.diagonal(dim1=0, dim2=2).sum(-1)  # log p(t | t(x)) summed over t
