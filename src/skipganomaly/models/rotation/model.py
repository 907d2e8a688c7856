"""A self-supervised detector trained from scratch on the normal images alone: a small residual CNN
learns which geometric transformation (4 rotations, optionally times a horizontal flip) was applied
to an image; an image it cannot read the transformations of is anomalous.

Golan & El-Yaniv, "Deep Anomaly Detection Using Geometric Transformations" (NeurIPS 2018, "GEOM");
Hendrycks, Mazeika, Kadavath & Song, "Using Self-Supervised Learning Can Improve Model Robustness and
Uncertainty" (NeurIPS 2019): score = the summed cross-entropy of the true transformations. Not from
the Skip-GANomaly++ paper.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ..base import AnomalyModel, LossStep, Phase
from ..registry import register


def rotate(x: Tensor, k: int) -> Tensor:
    """`torch.rot90(x, k, dims=(2, 3))` of square images, written with transpose and flip, which ONNX exports."""
    return [x, x.transpose(2, 3).flip(2), x.flip(2).flip(3), x.transpose(2, 3).flip(3)][k % 4]


def transform_all(x: Tensor, flips: bool) -> Tensor:
    """Every transformation of every image, transformation-major: [T * B, C, H, W] with T = 4 or 8
    (rotations by 0, 90, 180, 270 degrees, then the same of the mirrored image)."""
    sources = [x, x.flip(3)] if flips else [x]
    return torch.cat([rotate(s, k) for s in sources for k in range(4)])


class _Block(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv3x3, twice) with a 1x1 shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout
                         else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(h))) + self.shortcut(x)


@register("rotation")
class RotationNet(AnomalyModel):
    """Residual CNN (a stem conv, then one block per width, each after the first halving the map),
    global average pooling, a linear head over the T transformations. Trained with cross-entropy
    on every transformation of every normal image; score = sum over the T transformations of the
    cross-entropy of the true one (eval mode, so batch-independent)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, widths: Sequence[int] = (32, 64, 128),
                 flips: bool = False) -> None:
        super().__init__(in_channels, image_size)
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError(f"widths must be positive, got {widths}")
        if image_size % (2 ** (len(widths) - 1)):
            raise ConfigError(f"image size {image_size} does not halve {len(widths) - 1} times")
        self.widths, self.flips = widths, flips
        self.n_transforms = 8 if flips else 4
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*[_Block(cin, cout, 1 if i == 0 else 2)
                                      for i, (cin, cout) in enumerate(zip([widths[0], *widths], widths))])
        self.bn = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], self.n_transforms)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "image_size": self.image_size, "widths": list(self.widths),
                "flips": self.flips}

    def forward(self, x: Tensor) -> Tensor:
        """Transformation logits [B, T]."""
        h = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))

    # --- training ---------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"net": list(self.parameters())}

    def training_phases(self) -> list[Phase]:
        return [Phase("net", self._loss, "loss")]

    def _per_image_loss(self, x: Tensor) -> Tensor:
        """[B]: the summed cross-entropy of the true transformation over the T transformations."""
        # Written without the batch size, so that an ONNX export keeps a dynamic batch axis.
        logits = self(transform_all(x, self.flips)).float()
        log_p = F.log_softmax(logits.reshape(self.n_transforms, -1, self.n_transforms), dim=-1)  # [T, B, T]
        return -log_p.diagonal(dim1=0, dim2=2).sum(-1)  # log p(t | t(x)) summed over t

    def _loss(self, x: Tensor, cache: dict[str, Tensor]) -> LossStep:
        loss = self._per_image_loss(x).mean() / self.n_transforms
        return LossStep(loss)

    # --- evaluation -------------------------------------------------------------------------
    def score(self, x: Tensor) -> Tensor:
        return self._per_image_loss(x)

    def validation_loss(self, x: Tensor) -> Tensor:
        return self._per_image_loss(x) / self.n_transforms

    def reconstruct(self, x: Tensor) -> Tensor:
        """This model reconstructs nothing: the reports show the input itself in that column."""
        return x

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Where the score is sensitive: |d score / d x|, averaged over channels (a saliency map)."""
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._per_image_loss(xg).sum(), xg)
        return grad.abs().mean(1)
