"""A self-supervised detector trained from scratch on the normal images alone: a small residual CNN
learns which geometric transformation (4 rotations, optionally times a horizontal flip) was applied
to an image; an image it cannot read the transformations of is anomalous.

Golan & El-Yaniv, "Deep Anomaly Detection Using Geometric Transformations" (NeurIPS 2018, "GEOM");
Hendrycks, Mazeika, Kadavath & Song, "Using Self-Supervised Learning Can Improve Model Robustness and
Uncertainty" (NeurIPS 2019): score = the summed cross-entropy of the true transformations. Not from
the Skip-GANomaly++ paper.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ..base import AnomalyModel, LossStep, Phase, saliency_map
from ..neighbours import smallest_k
from ..registry import register
from ..transforms import transform_all, transformation_cross_entropy


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


SCORES = ("ce", "knn", "ce+knn")


@register("rotation")
class RotationNet(AnomalyModel):
    """Residual CNN (a stem conv, then one block per width, each after the first halving the map),
    global average pooling, a linear head over the T transformations. Trained with cross-entropy
    on every transformation of every normal image.

    Scores (eval mode, so batch-independent): `ce`, the summed cross-entropy of the true
    transformations; `knn`, the mean cosine distance of the image's pooled features (averaged over
    its T transformations) to its `k` nearest training normals; `ce+knn`, the sum of the two after
    standardising each by its mean and standard deviation on the training normals (the default:
    chosen on the validate protocol, see README.md). The feature bank
    and those statistics are fitted after training (`fit_statistics`), whichever score is used."""

    fits_statistics = True
    param_attributes = {"score": "score_name"}
    fitted_buffers = ("bank",)
    CHUNK = 4096  # bank rows compared at a time

    def __init__(self, in_channels: int = 3, image_size: int = 32, widths: Sequence[int] = (32, 64, 128),
                 flips: bool = False, score: str = "ce+knn", k: int = 5) -> None:
        super().__init__(in_channels, image_size)
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError(f"widths must be positive, got {widths}")
        if image_size % (2 ** (len(widths) - 1)):
            raise ConfigError(f"image size {image_size} does not halve {len(widths) - 1} times")
        if score not in SCORES:
            raise ConfigError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.widths, self.flips, self.score_name, self.k = widths, flips, score, k
        self.n_transforms = 8 if flips else 4
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*[_Block(cin, cout, 1 if i == 0 else 2)
                                      for i, (cin, cout) in enumerate(zip([widths[0], *widths], widths))])
        self.bn = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], self.n_transforms)
        # L2-normalised features of the training normals (float16: half the checkpoint, cosine exact to ~1e-3)
        self.register_buffer("bank", torch.zeros(0, widths[-1], dtype=torch.float16))
        # mean and std of the ce and knn scores on the training normals (knn leaving each image itself out)
        self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))


    def pooled(self, x: Tensor) -> Tensor:
        """Globally pooled features [B, D] (the input of the transformation head)."""
        return F.relu(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Transformation logits [B, T]."""
        return self.head(self.pooled(x))

    # --- training ---------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"net": list(self.parameters())}

    def training_phases(self) -> list[Phase]:
        return [Phase("net", self._loss, "loss")]

    def _outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B] the summed cross-entropy of the true transformation over the T transformations, and [B, D]
        the L2-normalised mean over the T transformations of the L2-normalised pooled features."""
        h = self.pooled(transform_all(x, self.flips))
        ce = transformation_cross_entropy(self.head(h), self.n_transforms)
        feats = F.normalize(h.float(), dim=1).reshape(self.n_transforms, -1, h.shape[1]).mean(0)
        return ce, F.normalize(feats, dim=1)

    def _per_image_loss(self, x: Tensor) -> Tensor:
        return self._outputs(x)[0]

    def _loss(self, x: Tensor, cache: dict[str, Tensor]) -> LossStep:
        loss = self._per_image_loss(x).mean() / self.n_transforms
        return LossStep(loss)

    # --- statistics of the training normals -------------------------------------------------
    def fit_statistics(self, x: Tensor) -> None:
        if len(x) <= self.k:
            raise ConfigError(f"rotation with k={self.k} needs more than {self.k} training images, got {len(x)}")
        outs = [self._outputs(x[i:i + 512]) for i in range(0, len(x), 512)]
        ce = torch.cat([o[0] for o in outs])
        self.bank = torch.cat([o[1] for o in outs]).to(torch.float16)
        dist = self._knn_distance(torch.cat([o[1] for o in outs]), leave_self_out=True)
        # A floor on the spreads: normals that all look alike must not turn rounding noise into score.
        self.score_stats = torch.stack([ce.mean(), ce.std().clamp_min(1e-3),
                                        dist.mean(), dist.std().clamp_min(1e-3)]).to(self.score_stats)

    def _knn_distance(self, feats: Tensor, leave_self_out: bool = False) -> Tensor:
        """Mean cosine distance [B] to the k nearest bank rows (k + 1, dropping the nearest, for rows
        of the bank itself)."""
        if len(self.bank) == 0:
            raise ConfigError("model 'rotation' has no feature bank yet; train it first")
        k = self.k + int(leave_self_out)
        feats = feats.float()
        with torch.autocast(feats.device.type, enabled=False):  # distances near 0 need float32, not bf16
            best, _ = smallest_k(lambda start, stop: 1.0 - feats @ self.bank[start:stop].float().T,
                                 len(self.bank), k, self.CHUNK)
        return best[:, int(leave_self_out):].mean(1)

    # --- evaluation -------------------------------------------------------------------------
    def score(self, x: Tensor) -> Tensor:
        ce, feats = self._outputs(x)
        if self.score_name == "ce":
            return ce
        dist = self._knn_distance(feats)
        if self.score_name == "knn":
            return dist
        m_ce, s_ce, m_d, s_d = self.score_stats
        return (ce - m_ce) / s_ce + (dist - m_d) / s_d

    def validation_loss(self, x: Tensor) -> Tensor:
        return self._per_image_loss(x) / self.n_transforms

    def reconstruct(self, x: Tensor) -> Tensor:
        """This model reconstructs nothing: the reports show the input itself in that column."""
        return x

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Where the score is sensitive: |d score / d x|, averaged over channels (a saliency map)."""
        return saliency_map(self.score, x)
