"""What Skip-GANomaly and Skip-GANomaly++ share: the DCGAN discriminator, the three-term generator
loss, the D loss and the score. They differ only in the generator (spec sections C, D and F1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import GanModel, LossStep, frozen, init_weights, real_fake_bce
from .discriminators import BasicDiscriminator


class SkipFamilyModel(GanModel):
    """Image-to-image generator against a discriminator that also supplies latent features.

    `detach_latent=True` reproduces the Skip-GANomaly++ reference code, where the latent loss is
    detached and so trains nothing (it is only added to D's loss as a constant); by default it
    trains G, as in Skip-GANomaly's own code.
    """

    reference_scores_in_train_mode = True  # both PyTorch references score without eval() (spec C, F1)

    def __init__(
        self,
        generator: nn.Module,
        in_channels: int,
        image_size: int,
        ndf: int = 64,
        nz: int = 100,
        w_adv: float = 1.0,
        w_con: float = 50.0,
        w_lat: float = 1.0,
        detach_latent: bool = False,
        noise_sigma: float = 0.0,
        score_weight: float = 0.9,
    ) -> None:
        super().__init__(in_channels, image_size)
        self.ndf, self.nz = ndf, nz
        self.w_adv, self.w_con, self.w_lat = w_adv, w_con, w_lat
        self.detach_latent = detach_latent
        self.noise_sigma = noise_sigma
        self.score_weight = score_weight
        self.generator = generator
        self.discriminator = BasicDiscriminator(in_channels, image_size, ndf, nz)
        init_weights(self)

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels, "image_size": self.image_size, "ndf": self.ndf, "nz": self.nz,
            "w_adv": self.w_adv, "w_con": self.w_con, "w_lat": self.w_lat, "detach_latent": self.detach_latent,
            "noise_sigma": self.noise_sigma, "score_weight": self.score_weight,
        }

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction G(x)."""
        return self.generator(x)

    def generator_loss(self, x: Tensor) -> LossStep:
        # D(x) is computed once, with its graph: G's step uses its features, D's step its logit
        # (D's weights do not change in between, so a second pass would give the same values).
        logit_real, feat_real = self.discriminator.classify(x)
        noisy = x + self.noise_sigma * torch.randn_like(x) if self.noise_sigma > 0 else x
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
        loss = real_fake_bce(logit_real, logit_fake)
        # The reference adds the (constant) weighted, detached latent loss to D's loss, which is what its
        # D-reset rule compares with 1e-5; reproduce that only in the reference configuration.
        reset_value = loss.detach() + self.w_lat * cache["lat"] if self.detach_latent else loss.detach()
        return loss, reset_value

    def score(self, x: Tensor) -> Tensor:
        """score_weight * image MSE + (1 - score_weight) * feature MSE, per image."""
        fake = self.generator(x)
        _, feat_real = self.discriminator.classify(x)
        _, feat_fake = self.discriminator.classify(fake)
        rec = (x - fake).pow(2).flatten(1).mean(1)
        lat = (feat_real - feat_fake).pow(2).flatten(1).mean(1)
        return self.score_weight * rec + (1.0 - self.score_weight) * lat

    def validation_loss(self, x: Tensor) -> Tensor:
        return (self.generator(x) - x).abs().flatten(1).mean(1)
