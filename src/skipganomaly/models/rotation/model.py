"""A self-supervised detector trained from scratch on the normal images alone: a small residual CNN
learns which geometric transformation (4 rotations, optionally times a horizontal flip) was applied
to an image; an image it cannot read the transformations of, or whose features are far from every
training normal's, is anomalous.

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
from ..base import SALIENCY_NAME, AnomalyModel, LossStep, Phase, is_whole_number, saliency_map
from ..layers import PointwiseConv
from ..neighbours import SPREAD_FLOOR, FeatureBank, in_chunks, pooled_map
from ..patch_dictionary import PatchDictionary
from ..registry import register
from ..transforms import (N_ROTATIONS, contrastive_loss, random_view, transform_all, transformation_cross_entropy,
                          translate)


class _Block(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv3x3, twice) with a 1x1 shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (PointwiseConv(cin, cout, stride, bias=False) if stride != 1 or cin != cout
                         else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(h))) + self.shortcut(x)


TERMS = ("ce", "knn", "map", "patch")
# Which transformed copies of an image the map term compares: the untransformed one, or each.
MAP_VIEWS = ("first", "all")


def parse_score(score: str) -> list[str]:
    """The terms of a score name: one of TERMS, or several joined by '+' (each standardised, then summed)."""
    terms = score.split("+")
    if not all(t in TERMS for t in terms) or len(set(terms)) != len(terms):
        raise ConfigError(f"score must be one of {', '.join(TERMS)} or several joined by '+' (e.g. ce+map), "
                          f"got {score!r}")
    return terms


@register("rotation")
class RotationNet(AnomalyModel):
    """Residual CNN (a stem conv, then one block per width, each after the first halving the map),
    global average pooling, a linear head over the T transformations. Trained with cross-entropy
    on every transformation of every normal image; with `contrastive` > 0, of two random views of it,
    with a contrastive loss (CSI-style) on a projection of the pooled features added; with
    `translations`, of a randomly moved copy of it, with two heads reading the move as well.

    Score terms (eval mode, so batch-independent): `ce`, the summed cross-entropy of the true
    transformations; `knn`, the mean cosine distance of the image's globally pooled features
    (averaged over its T transformations) to its `k` nearest training normals; `map`, the same
    distance for the output of each residual block in `map_layers` (negative: counted from the last), average-pooled to `map_grid` x
    `map_grid` (where things are as well as what they are), standardised and summed over the blocks;
    with `map_views="all"` each of the T transformed copies is compared with the same copy of the
    training normals and the standardised distances are averaged over the copies (a test-time ensemble).
    A score is one term, or several joined by '+': each standardised by its mean and standard
    deviation on the training normals, then summed. The
    default was chosen on the validate protocol (README.md). The feature banks and those statistics
    are fitted after training (`fit_statistics`), whichever score is used."""

    fits_statistics = True
    param_attributes = {"score": "score_name"}
    TERMS = TERMS  # the columns of score_terms

    def __init__(self, in_channels: int = 3, image_size: int = 32, widths: Sequence[int] = (32, 64, 128),
                 flips: bool = False, score: str = "map", k: int = 5, map_layers: Sequence[int] = (-2, -1),
                 map_grid: int = 4, map_views: str = "first", contrastive: float = 0.0,
                 temperature: float = 0.5, patch_atoms: int = 400, translations: bool = False) -> None:
        super().__init__(in_channels, image_size)
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError(f"widths must be positive, got {widths}")
        if image_size % (2 ** (len(widths) - 1)):
            raise ConfigError(f"image size {image_size} does not halve {len(widths) - 1} times")
        parse_score(score)
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if not map_layers or not all(-len(widths) <= int(i) < len(widths) for i in map_layers):
            raise ConfigError(f"map_layers must name residual blocks, each {-len(widths)} to {len(widths) - 1} "
                              f"(negative: counted from the last), got {list(map_layers)}")
        blocks = list(dict.fromkeys(int(i) % len(widths) for i in map_layers))  # the blocks, each once
        smallest = image_size // 2 ** max(blocks)
        if not 1 <= map_grid <= smallest:
            raise ConfigError(f"map_grid must be between 1 and the smallest map size of map_layers ({smallest}), "
                              f"got {map_grid}")
        if contrastive < 0 or temperature <= 0:
            raise ConfigError(f"contrastive must be >= 0 and temperature > 0, got {contrastive} and {temperature}")
        if not is_whole_number(patch_atoms) or patch_atoms < 1:
            raise ConfigError(f"patch_atoms (the k-means dictionary of the patch term) must be a whole number >= 1, "
                              f"got {patch_atoms!r}")
        if map_views not in MAP_VIEWS:
            raise ConfigError(f"map_views must be one of {', '.join(MAP_VIEWS)}, got {map_views!r}")
        self.widths, self.flips, self.score_name, self.k = widths, flips, score, k
        self.map_layers, self.map_grid, self._map_blocks = [int(i) for i in map_layers], map_grid, blocks
        self.n_transforms = 2 * N_ROTATIONS if flips else N_ROTATIONS
        self.map_views = map_views
        self._views = list(range(self.n_transforms)) if map_views == "all" else [0]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*[_Block(cin, cout, 1 if i == 0 else 2)
                                      for i, (cin, cout) in enumerate(zip([widths[0], *widths], widths))])
        self.bn = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], self.n_transforms)
        # Hendrycks et al. (2019): every training image is also moved by a quarter of its size (or not) along
        # each axis before its T transformations, and two 3-way heads read the horizontal and vertical moves
        self.translations, self.shift = bool(translations), image_size // 4
        self.translation_head = nn.Linear(widths[-1], 6) if translations else None
        self.contrastive, self.temperature = float(contrastive), float(temperature)
        # the projection of SimCLR / CSI: the contrastive loss acts on its output, the scores use the features below it
        self.projection = (nn.Sequential(nn.Linear(widths[-1], widths[-1]), nn.ReLU(), nn.Linear(widths[-1], 128))
                           if contrastive > 0 else None)
        self.pooled_bank = FeatureBank(widths[-1], k)
        # the `patch` term: a dictionary of the normals' pixel patches, independent of the network, fitted
        # only where the score uses it (a k-means and a bank of grid^2 x atoms values per training image)
        self.patch_atoms = int(patch_atoms)
        self.patches = PatchDictionary(in_channels, image_size, self.patch_atoms)
        self.patch_bank = FeatureBank(self.patches.dim, k, metric="euclidean")
        # one bank per (block, view), block-major
        self.map_banks = nn.ModuleList([FeatureBank(widths[i] * map_grid ** 2, k) for i in blocks for _ in self._views])
        # mean and std of the ce term on the training normals
        self.register_buffer("ce_stats", torch.tensor([0.0, 1.0]))

    def _features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Globally pooled features [B, D] (the input of the transformation head), and the outputs of
        the blocks `map_layers` [B, C, H, W]."""
        h, taps = self.stem(x), {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            taps[i] = h
        return F.relu(self.bn(h)).mean(dim=(2, 3)), [taps[i] for i in self._map_blocks]

    def pooled(self, x: Tensor) -> Tensor:
        """Globally pooled features [B, D] (the input of the transformation head)."""
        return self._features(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """Transformation logits [B, T]."""
        return self.head(self.pooled(x))

    # --- training ---------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"net": list(self.parameters())}

    def training_phases(self) -> list[Phase]:
        return [Phase("net", self._loss, "loss")]

    def _outputs(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """[B] the summed cross-entropy of the true transformation over the T transformations; [B, D]
        the L2-normalised mean over the T transformations of the L2-normalised pooled features; and
        the pooled maps of blocks `map_layers`, block-major, of the untransformed image or (`map_views="all"`)
        of each transformed copy (rotating a map moves its cells, so each copy has its own bank rather
        than an average)."""
        h, taps = self._features(transform_all(x, self.flips))
        ce = transformation_cross_entropy(self.head(h), self.n_transforms)
        feats = F.normalize(h.float(), dim=1).reshape(self.n_transforms, -1, h.shape[1]).mean(0)
        # the untransformed images' maps, written without the batch size so that ONNX keeps a dynamic batch axis
        views = [t.reshape(self.n_transforms, -1, *t.shape[1:])[v] for t in taps for v in self._views]
        return ce, F.normalize(feats, dim=1), [pooled_map(t, self.map_grid) for t in views]

    def _per_image_loss(self, x: Tensor) -> Tensor:
        return self._outputs(x)[0]

    def _loss(self, x: Tensor, cache: dict[str, Tensor]) -> LossStep:
        if self.projection is None and self.translation_head is None:
            return LossStep(self._per_image_loss(x).mean() / self.n_transforms)
        # CSI-style: two random views of each image, each in all T transformations; the head reads the
        # transformation of every copy, and each transformed copy is its own contrastive instance, so the
        # other transformations of the same image are among its negatives ("shifted" instances)
        views = x if self.projection is None else torch.cat([random_view(x), random_view(x)])
        if self.translation_head is not None:  # each image (or view) moved once, before its T transformations
            ix, iy = torch.randint(0, 3, (2, len(views)), device=x.device)
            views = translate(views, ix, iy, self.shift)
        h = self.pooled(transform_all(views, self.flips))
        ce = transformation_cross_entropy(self.head(h), self.n_transforms).mean() / self.n_transforms
        loss, logs = ce, {"transformation": ce.detach()}
        if self.translation_head is not None:
            # the mean of three cross-entropies, as Hendrycks et al. weigh their heads; all T copies of an
            # image share its move's labels
            moves = self.translation_head(h).float()
            move = (F.cross_entropy(moves[:, :3], ix.repeat(self.n_transforms))
                    + F.cross_entropy(moves[:, 3:], iy.repeat(self.n_transforms)))
            loss, logs["translation"] = (ce + move) / 3, move.detach() / 2
        if self.projection is not None:
            z = F.normalize(self.projection(h).float(), dim=1).reshape(self.n_transforms, 2, len(x), -1)
            nce = contrastive_loss(z.transpose(0, 1).reshape(2, self.n_transforms * len(x), -1), self.temperature)
            loss, logs["contrastive"] = loss + self.contrastive * nce, nce.detach()
        return LossStep(loss, logs=logs)

    # --- statistics of the training normals -------------------------------------------------
    def min_training_images(self) -> int:
        return max(2, self.k + 1)

    def fit_statistics(self, x: Tensor) -> None:
        if len(x) <= self.k:
            raise ConfigError(f"rotation with k={self.k} needs more than {self.k} training images, got {len(x)}")
        outs = in_chunks(self._outputs, x)
        ce = torch.cat([o[0] for o in outs])
        self.pooled_bank.fit(torch.cat([o[1] for o in outs]))
        for j, bank in enumerate(self.map_banks):
            bank.fit(torch.cat([o[2][j] for o in outs]))
        self.ce_stats = torch.stack([ce.mean(), ce.std().clamp_min(SPREAD_FLOOR)]).to(self.ce_stats)
        if "patch" in parse_score(self.score_name):
            self.patch_bank.fit(self.patches.fit(x))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Checkpoints from before the map term held the pooled bank as `bank` and both statistics in
        `score_stats`: they load, with an empty map bank (a `map` score then asks to retrain); those from
        before the patch term load with it unfitted."""
        if prefix + "bank" in state_dict and prefix + "score_stats" in state_dict:
            stats = state_dict.pop(prefix + "score_stats")
            state_dict[prefix + "pooled_bank.rows"] = state_dict.pop(prefix + "bank")
            state_dict[prefix + "pooled_bank.stats"], state_dict[prefix + "ce_stats"] = stats[2:], stats[:2]
            for j, bank in enumerate(self.map_banks):
                state_dict.setdefault(f"{prefix}map_banks.{j}.rows", bank.rows[:0])
                state_dict.setdefault(f"{prefix}map_banks.{j}.stats", bank.stats)
        # checkpoints from before the patch term: it loads unfitted (a score that uses it asks to retrain)
        for name, value in [*self.patches.state_dict(prefix="patches.").items(),
                            *self.patch_bank.state_dict(prefix="patch_bank.").items()]:
            state_dict.setdefault(prefix + name, value[:0] if name == "patch_bank.rows" else value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- evaluation -------------------------------------------------------------------------
    def _patch_term(self, x: Tensor, unfitted_nan: bool) -> Tensor:
        if len(self.patch_bank.rows) == 0:
            if unfitted_nan:
                return torch.full((len(x),), float("nan"), device=x.device)
            raise ConfigError("the patch term is fitted only when the score uses it; this model was trained with "
                              f"score={self.score_name!r}: train it again with a score that has patch")
        return self.patch_bank.standardised(self.patches(x))

    def _standardised(self, terms: Sequence[str], x: Tensor, unfitted_nan: bool = False) -> Tensor:
        """[B, len(terms)]: the given terms, each standardised on the training normals."""
        ce, feats, cells = self._outputs(x)
        parts = {"ce": lambda: (ce - self.ce_stats[0]) / self.ce_stats[1],
                 "patch": lambda: self._patch_term(x, unfitted_nan),
                 "knn": lambda: self.pooled_bank.standardised(feats),
                 "map": lambda: torch.stack([b.standardised(c) for b, c in zip(self.map_banks, cells)])
                 .reshape(len(self._map_blocks), len(self._views), -1).mean(1).sum(0)}
        return torch.stack([parts[t]() for t in terms], 1)

    def score_terms(self, x: Tensor) -> Tensor:
        """[B, len(TERMS)]: every term, standardised; a composite score is the sum of its columns (one
        pass gives every score, which the score ablation uses). The `patch` column is NaN unless the model's
        score uses it (only then is its dictionary fitted)."""
        return self._standardised(TERMS, x, unfitted_nan=True)

    def score(self, x: Tensor) -> Tensor:
        terms = parse_score(self.score_name)
        if terms == ["ce"]:  # a single term unstandardised: needs no bank
            return self._outputs(x)[0]
        if terms == ["knn"]:
            return self.pooled_bank.distance(self._outputs(x)[1])
        return self._standardised(terms, x).sum(1)

    def validation_loss(self, x: Tensor) -> Tensor:
        return self._per_image_loss(x) / self.n_transforms

    def reconstruct(self, x: Tensor) -> Tensor:
        """This model reconstructs nothing: the input itself (`output_name` says so, and the reports show no row)."""
        return x

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Where the score is sensitive: |d score / d x|, averaged over channels (a saliency map)."""
        return saliency_map(self.score, x)

    def output_name(self) -> None:
        return None

    def map_name(self) -> str:
        return SALIENCY_NAME
