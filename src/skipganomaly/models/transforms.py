"""The geometric transformations self-supervised heads learn to recognise (rotations, mirror images,
translations), and the random views and loss of contrastive learning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

N_ROTATIONS = 4  # by 0, 90, 180 and 270 degrees


def rotate(x: Tensor, k: int) -> Tensor:
    """`torch.rot90(x, k, dims=(2, 3))` of square images, written with transpose and flip, which ONNX exports."""
    return [x, x.transpose(2, 3).flip(2), x.flip(2).flip(3), x.transpose(2, 3).flip(3)][k % N_ROTATIONS]


def transform_all(x: Tensor, flips: bool) -> Tensor:
    """Every transformation of every image, transformation-major: [T * B, C, H, W] with T = N_ROTATIONS, or
    twice that with `flips` (the rotations by 0, 90, 180, 270 degrees, then the same of the mirrored image)."""
    sources = [x, x.flip(3)] if flips else [x]
    return torch.cat([rotate(s, k) for s in sources for k in range(N_ROTATIONS)])


def translate(x: Tensor, ix: Tensor, iy: Tensor, shift: int) -> Tensor:
    """Each image of `x` [B, C, H, W] moved by (ix - 1) * shift pixels to the right and (iy - 1) * shift
    down (ix, iy [B] in {0, 1, 2}), the uncovered border filled by reflection, as Hendrycks et al. (2019)
    translate their images."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, mode="reflect").to(x.dtype)  # autocast pads in float32
    out = torch.empty_like(x)
    for a in range(3):
        for b in range(3):
            chosen = (ix == a) & (iy == b)
            top, left = shift - (b - 1) * shift, shift - (a - 1) * shift
            out[chosen] = padded[chosen, :, top:top + h, left:left + w]
    return out


def transformation_cross_entropy(logits: Tensor, n_transforms: int) -> Tensor:
    """[B]: the summed cross-entropy of the true transformation, from logits [T * B, T] of
    `transform_all`'s transformation-major batch. Written without the batch size, so that an ONNX
    export keeps a dynamic batch axis."""
    log_p = F.log_softmax(logits.float().reshape(n_transforms, -1, n_transforms), dim=-1)  # [T, B, T]
    return -log_p.diagonal(dim1=0, dim2=2).sum(-1)  # log p(t | t(x)) summed over t


def random_view(x: Tensor) -> Tensor:
    """A random view of each image of `x` ([B, C, H, W] in [-1, 1]), drawn as SimCLR draws its views
    (Chen et al. 2020; CSI, Tack et al. 2020, for anomaly detection): a resized crop of 20-100% of the
    area at an aspect ratio of 3/4 to 4/3, mirrored with probability 1/2, then with probability 0.8 a
    colour jitter (brightness, contrast and, for colour images, saturation each scaled by 0.6-1.4) and
    with probability 0.2 a colour image turned grey. Each image has its own draw, from torch's generator."""
    b, c = x.shape[0], x.shape[1]

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.empty(b, device=x.device).uniform_(lo, hi)

    area, ratio = uniform(0.2, 1.0), torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx, sy = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    mirror = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = sx * mirror, sy
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = (F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False) + 1) / 2

    def per_image(t: Tensor) -> Tensor:
        return t.view(b, 1, 1, 1)

    def grey(t: Tensor) -> Tensor:
        if c != 3:
            return t.mean(1, keepdim=True)
        return (0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])

    jitter = per_image((torch.rand(b, device=x.device) < 0.8).float())
    scaled = v * per_image(uniform(0.6, 1.4))
    mean = scaled.mean(dim=(1, 2, 3), keepdim=True)
    scaled = (scaled - mean) * per_image(uniform(0.6, 1.4)) + mean
    if c == 3:
        g = grey(scaled)
        scaled = (scaled - g) * per_image(uniform(0.6, 1.4)) + g
    v = (jitter * scaled + (1 - jitter) * v).clamp(0, 1)
    if c == 3:
        to_grey = per_image((torch.rand(b, device=x.device) < 0.2).float())
        v = to_grey * grey(v).expand_as(v) + (1 - to_grey) * v
    return (v * 2 - 1).to(x.dtype)


def contrastive_loss(z: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR) over z [2, N, D], L2-normalised: z[0, i] and z[1, i] are two views of instance i,
    every other row of the 2N a negative; the mean over the 2N rows."""
    n = z.shape[1]
    flat = z.reshape(2 * n, -1).float()
    sim = flat @ flat.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(sim, target)
