"""DCGAN discriminator shared by Skip-GANomaly and Skip-GANomaly++ (spec section B)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicDiscriminator(nn.Module):
    """DCGAN encoder to an `nz`-d feature vector, plus a real/fake head.

    At 32x32 this is exactly the reference: 64-128-256 convolutions, a 4x4 conv to 100 features and a
    3x3 conv head on the 1x1 map (1,069,700 parameters). Larger images get more stride-2 layers until
    the map is at most 7x7; the feature conv then spans the whole map.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, ndf: int = 64, nz: int = 100,
                 n_rotations: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width, size = ndf, image_size // 2
        for _ in range(2):
            layers += _down(width, width * 2)
            width, size = width * 2, size // 2
        while size > 7:
            layers += _down(width, width * 2)
            width, size = width * 2, size // 2
        layers.append(nn.Conv2d(width, nz, size, 1, 0, bias=False))
        self.features = nn.Sequential(*layers)
        # Reference form: a 3x3 conv on a 1x1 map. Only its centre tap ever sees data.
        self.classifier = nn.Conv2d(nz, 1, 3, 1, 1, bias=False)
        # Self-supervised GAN head (Chen et al., CVPR 2019): which rotation a real image shows.
        self.rotation_head = nn.Linear(nz, n_rotations) if n_rotations else None

    def rotation_logits(self, x: Tensor) -> Tensor:
        """Logits [B, n_rotations] of the rotation head on D's features."""
        if self.rotation_head is None:
            raise RuntimeError("this discriminator has no rotation head (n_rotations=0)")
        return self.rotation_head(self.features(x).flatten(1))

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (real/fake logit [B], features [B, nz, 1, 1])."""
        feat = self.features(x)
        # Equal to self.classifier(feat) on a 1x1 map (tested), without 8 multiplications by padding.
        logit = F.linear(feat.flatten(1), self.classifier.weight[:, :, 1, 1])
        return logit.squeeze(1), feat

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (probability of being real [B], features [B, nz, 1, 1]), as the reference does."""
        logit, feat = self.classify(x)
        return logit.sigmoid(), feat


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
