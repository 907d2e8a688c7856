"""What Skip-GANomaly and Skip-GANomaly++ share: the DCGAN discriminator, the three-term generator
loss, the D loss and the score. They differ only in the generator (spec sections C, D and F1)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (SALIENCY_NAME, GanModel, LossStep, check_positive, frozen, init_weights, is_whole_number,
                   real_fake_bce, saliency_map)
from ..errors import ConfigError
from .neighbours import SPREAD_FLOOR, FeatureBank, in_chunks, pooled_map
from .transforms import N_ROTATIONS, transform_all, transformation_cross_entropy

SCORES = ("paper", "rotation", "map", "rotation+map")


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

    def stage_maps(self, x: Tensor, stages: Sequence[int]) -> list[Tensor]:
        """The outputs of the given stride-2 stages (0: the first conv's activation at half the image size;
        each later stage halves again), computed as far as the deepest one asked for."""
        maps, stage = [], 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                if stage in stages:
                    maps.append(x.clone())  # the next stage's in-place activation would overwrite it
                if stage == max(stages):
                    break
                stage += 1
        return [maps[sorted(stages).index(s)] for s in stages]

    @property
    def n_stages(self) -> int:
        return sum(isinstance(layer, nn.LeakyReLU) for layer in self.features)

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


class SkipFamilyModel(GanModel):
    """Image-to-image generator against a discriminator that also supplies latent features.

    `detach_latent=True` reproduces the Skip-GANomaly++ reference code, where the latent loss is
    detached and so trains nothing (it is only added to D's loss as a constant); by default it
    trains G, as in Skip-GANomaly's own code.

    Not from the paper (off by default): `rotation_weight > 0` gives D a head that learns which of the
    4 rotations a real image shows (a self-supervised GAN), its cross-entropy added to D's loss with
    that weight; `score="rotation"` then scores an image by the summed cross-entropy of its true
    rotations under that head, instead of the paper's reconstruction score. `score="map"` scores by
    the mean cosine distance of D's feature maps of the image (stages `map_layers`, each
    average-pooled to `map_grid` x `map_grid`) to its `k` nearest training normals', each stage's
    distance standardised on the training normals and summed; `rotation+map` adds the standardised
    rotation term. The feature banks are fitted after training, only where the score uses them.

    Not from the paper (off by default): `mask_grid > 0` trains G to inpaint (after RIAD, Zavrtanik et
    al. 2021): the image is cut into `mask_grid` x `mask_grid` cells, during training each cell of each
    image is blanked (set to 0, mid-grey) with probability 1 / `mask_sets`, and G reconstructs the whole
    image from the rest, so the skip connections can no longer copy the blanked cells through. At test
    time the cells are split into `mask_sets` fixed disjoint sets; each set is blanked in turn and the
    reconstruction keeps G's inpainting of the blanked cells, so every pixel is predicted from the
    others. The `paper` score, the anomaly map and the validation loss use that inpainted image.
    """

    reference_scores_in_train_mode = True  # both PyTorch references score without eval() (spec C, F1)

    param_attributes = {"score": "score_name"}

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        ndf: int = 64,
        nz: int = 100,
        w_adv: float = 1.0,
        w_con: float = 50.0,
        w_lat: float = 1.0,
        detach_latent: bool = False,
        noise_sigma: float = 0.0,
        score_weight: float = 0.9,
        rotation_weight: float = 0.0,
        score: str = "paper",
        map_layers: Sequence[int] = (0, 1),
        map_grid: int = 4,
        k: int = 5,
        mask_grid: int = 0,
        mask_sets: int = 3,
    ) -> None:
        super().__init__(in_channels, image_size)
        check_positive(self.name, ndf=ndf, nz=nz)
        if score not in SCORES:
            raise ConfigError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if rotation_weight < 0 or ("rotation" in score and rotation_weight == 0):
            raise ConfigError(f"score {score!r} needs a rotation_weight above 0 (it trains D's rotation head), "
                              f"got {rotation_weight}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if not is_whole_number(mask_grid) or mask_grid < 0 \
                or (mask_grid and (mask_grid < 2 or image_size % mask_grid)):
            raise ConfigError(f"mask_grid must be 0 (off) or a whole number >= 2 that divides the image size "
                              f"{image_size}, got {mask_grid!r}")
        if mask_grid and not (is_whole_number(mask_sets) and 2 <= mask_sets <= mask_grid ** 2):
            raise ConfigError(f"mask_sets must be a whole number from 2 to mask_grid^2 ({mask_grid ** 2}), "
                              f"got {mask_sets!r}")
        self.mask_grid, self.mask_sets = int(mask_grid), int(mask_sets)
        self.map_layers, self.map_grid, self.k = [int(i) for i in map_layers], map_grid, k
        self.rotation_weight, self.score_name = rotation_weight, score
        self.ndf, self.nz = ndf, nz
        self.w_adv, self.w_con, self.w_lat = w_adv, w_con, w_lat
        self.detach_latent = detach_latent
        self.noise_sigma = noise_sigma
        self.score_weight = score_weight
        self.generator = self.build_generator()
        self.discriminator = BasicDiscriminator(in_channels, image_size, ndf, nz, N_ROTATIONS if rotation_weight else 0)
        init_weights(self)
        n_stages = self.discriminator.n_stages
        if not self.map_layers or len(set(self.map_layers)) != len(self.map_layers) \
                or not all(0 <= i < n_stages for i in self.map_layers):
            raise ConfigError(f"map_layers must be distinct stages of D, each 0 to {n_stages - 1}, got {self.map_layers}")
        sizes = {i: image_size // 2 ** (i + 1) for i in self.map_layers}
        if not all(1 <= map_grid <= size for size in sizes.values()):
            raise ConfigError(f"map_grid must be between 1 and the smallest map size of map_layers "
                              f"({min(sizes.values())}), got {map_grid}")
        # Banks only where the score uses them, so a paper-score model's checkpoint holds what the paper's does.
        self.map_banks = nn.ModuleList(
            [FeatureBank(ndf * 2 ** i * map_grid ** 2, k) for i in self.map_layers] if "map" in score else [])
        if "map" in score and rotation_weight:  # mean, std of the rotation term on the training normals
            self.register_buffer("rotation_stats", torch.tensor([0.0, 1.0]))
        if self.mask_grid:  # the test-time sets of cells: fixed (seeded), saved with the model, each set non-empty
            cells = torch.randperm(self.mask_grid ** 2, generator=torch.Generator().manual_seed(0))
            partition = torch.empty_like(cells)
            partition[cells] = torch.arange(len(cells)) % self.mask_sets
            self.register_buffer("mask_partition", partition.view(self.mask_grid, self.mask_grid))

    @property
    def fits_statistics(self) -> bool:  # type: ignore[override]
        return "map" in self.score_name

    def build_generator(self) -> nn.Module:
        """The image-to-image generator (what the family's members differ in), from their own arguments."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction G(x)."""
        return self.generator(x)

    def _pixels(self, cells: Tensor) -> Tensor:
        """Cell masks [..., mask_grid, mask_grid] as pixel masks [..., 1, H, W] (1 = blanked)."""
        g, size, lead = self.mask_grid, self.image_size // self.mask_grid, cells.shape[:-2]
        # expand + reshape rather than repeat_interleave, which the ONNX export gets wrong
        return cells[..., :, None, :, None].expand(*lead, g, size, g, size).reshape(*lead, 1, g * size, g * size)

    def reconstruct(self, x: Tensor) -> Tensor:
        """G(x); with `mask_grid`, G's inpainting of each fixed set of cells from the others, put together."""
        if not self.mask_grid:
            return self.generator(x)
        masks = self._pixels(self.mask_partition == torch.arange(self.mask_sets, device=x.device)[:, None, None])
        masks = masks.to(x.dtype).unsqueeze(1)  # [S, 1, 1, H, W]
        filled = self.generator((x.unsqueeze(0) * (1 - masks)).reshape(-1, *x.shape[1:]))
        return (filled.reshape(self.mask_sets, -1, *x.shape[1:]) * masks).sum(0)

    def generator_loss(self, x: Tensor) -> LossStep:
        # D(x) is computed once, with its graph: G's step uses its features, D's step its logit
        # (D's weights do not change in between, so a second pass would give the same values).
        logit_real, feat_real = self.discriminator.classify(x)
        noisy = x + self.noise_sigma * torch.randn_like(x) if self.noise_sigma > 0 else x
        if self.mask_grid:  # each cell blanked with probability 1 / mask_sets (a random set of a random partition)
            cells = torch.rand(len(x), self.mask_grid, self.mask_grid, device=x.device) < 1 / self.mask_sets
            noisy = noisy * (1 - self._pixels(cells).to(x.dtype))
        fake = self.generator(noisy)
        with frozen(self.discriminator):
            logit_fake, feat_fake = self.discriminator.classify(fake)
        adv = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
        con = F.l1_loss(fake, x)
        lat = F.mse_loss(feat_fake, feat_real.detach())
        lat_term = lat.detach() if self.detach_latent else lat
        loss = self.w_adv * adv + self.w_con * con + self.w_lat * lat_term
        logs = {"g_adv": adv.detach(), "g_con": con.detach(), "g_lat": lat.detach()}
        return LossStep(loss, logs, {"logit_real": logit_real, "fake": fake.detach(), "lat": lat.detach()})

    def discriminator_loss(self, x: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logit_real = cache["logit_real"]
        logit_fake, _ = self.discriminator.classify(cache["fake"])
        adv = real_fake_bce(logit_real, logit_fake)
        # The reference adds the (constant) weighted, detached latent loss to D's loss, which is what its
        # D-reset rule compares with 1e-5; reproduce that only in the reference configuration. The rule
        # watches the real/fake loss alone: a rotation loss does not say whether D has won the game.
        reset_value = adv.detach() + self.w_lat * cache["lat"] if self.detach_latent else adv.detach()
        if self.rotation_weight:
            adv = adv + self.rotation_weight * self.rotation_cross_entropy(x).mean() / N_ROTATIONS
        return adv, reset_value

    def rotation_cross_entropy(self, x: Tensor) -> Tensor:
        """[B]: the summed cross-entropy of the 4 true rotations under D's rotation head."""
        return transformation_cross_entropy(self.discriminator.rotation_logits(transform_all(x, False)), N_ROTATIONS)

    def _map_features(self, x: Tensor) -> list[Tensor]:
        return [pooled_map(m, self.map_grid) for m in self.discriminator.stage_maps(x, self.map_layers)]

    def min_training_images(self) -> int:
        return max(2, self.k + 1) if self.fits_statistics else 2

    def fit_statistics(self, x: Tensor) -> None:
        if len(x) <= self.k:
            raise ConfigError(f"score {self.score_name!r} with k={self.k} needs more than {self.k} training images, "
                              f"got {len(x)}")
        chunks = in_chunks(self._map_features, x)
        for j, bank in enumerate(self.map_banks):
            bank.fit(torch.cat([c[j] for c in chunks]))
        if hasattr(self, "rotation_stats"):
            rot = torch.cat(in_chunks(self.rotation_cross_entropy, x))
            self.rotation_stats = torch.stack([rot.mean(), rot.std().clamp_min(SPREAD_FLOOR)]).to(self.rotation_stats)

    def _map_score(self, x: Tensor) -> Tensor:
        if not len(self.map_banks):
            raise ConfigError("this model was built without feature banks (its score option had no 'map'); "
                              "train it with score=map or rotation+map")
        return torch.stack([bank.standardised(f) for bank, f in zip(self.map_banks, self._map_features(x))]).sum(0)

    def score(self, x: Tensor) -> Tensor:
        """score_weight * image MSE + (1 - score_weight) * feature MSE, per image (`score="paper"`); the
        rotation cross-entropy (`score="rotation"`); the feature-map kNN term (`map`); or the last two,
        standardised, summed (`rotation+map`)."""
        if self.score_name == "rotation":
            return self.rotation_cross_entropy(x)
        if self.score_name == "map":
            return self._map_score(x)
        if self.score_name == "rotation+map":
            rot = (self.rotation_cross_entropy(x) - self.rotation_stats[0]) / self.rotation_stats[1]
            return rot + self._map_score(x)
        fake = self.reconstruct(x)
        _, feat_real = self.discriminator.classify(x)
        _, feat_fake = self.discriminator.classify(fake)
        rec = (x - fake).pow(2).flatten(1).mean(1)
        lat = (feat_real - feat_fake).pow(2).flatten(1).mean(1)
        return self.score_weight * rec + (1.0 - self.score_weight) * lat

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Under the `paper` score, |x - G(x)| averaged over channels; under any other score, its saliency."""
        if self.score_name != "paper":
            return saliency_map(self.score, x)
        return super().anomaly_map(x)

    def map_name(self) -> str:
        return super().map_name() if self.score_name == "paper" else SALIENCY_NAME

    def validation_loss(self, x: Tensor) -> Tensor:
        return (self.reconstruct(x) - x).abs().flatten(1).mean(1)
