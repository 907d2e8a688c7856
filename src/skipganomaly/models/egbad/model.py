"""EGBAD (Zenati et al., 2018): a BiGAN whose encoder gives the latent code at test time
(spec section F3; 32x32 networks from the same authors' ALAD CIFAR-10 configuration)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import GanModel, LossStep, frozen, init_weights, real_fake_bce
from ..base import check_positive, check_power_of_two
from ..dcgan import decoder, encoder, encoder_pyramid
from ..registry import register


class JointDiscriminator(nn.Module):
    """D(x, z): a conv branch for x, a dense branch for z, joined by a 1024-unit layer (the features)."""

    def __init__(self, in_channels: int, image_size: int, width: int, nz: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.x_branch, top = encoder_pyramid(in_channels, image_size, width)
        self.z_branch = nn.Sequential(
            nn.Linear(nz, 512), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.LeakyReLU(0.2), nn.Dropout(dropout),
        )
        self.joint = nn.Sequential(nn.Linear(top * 16 + 512, 1024), nn.LeakyReLU(0.2), nn.Dropout(dropout))
        self.head = nn.Linear(1024, 1)

    def classify(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Return (logit [B], features [B, 1024])."""
        h = torch.cat([self.x_branch(x).flatten(1), self.z_branch(z.flatten(1))], dim=1)
        feat = self.joint(h)
        return self.head(feat).squeeze(1), feat


@register("egbad")
class Egbad(GanModel):
    """Generator G(z), encoder E(x) and joint discriminator D(x, z), trained adversarially.

    Score: (1 - w) * ||x - G(E(x))||_1 + w * ||h(x, E(x)) - h(G(E(x)), E(x))||_1, w = 0.1, where h is
    D's feature layer (the reference's "fm" score).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 128, nz: int = 100,
                 score_weight: float = 0.1, init_std: float = 0.01) -> None:
        check_power_of_two("egbad", image_size)
        check_positive("egbad", width=width, nz=nz)
        super().__init__(in_channels, image_size)
        self.width, self.nz, self.score_weight, self.init_std = width, nz, score_weight, init_std
        self.generator = decoder(nz, in_channels, image_size, width)
        self.encoder = encoder(in_channels, image_size, width, nz, first_bn=True)
        self.discriminator = JointDiscriminator(in_channels, image_size, width, nz)
        init_weights(self, init_std)


    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction G(E(x))."""
        return self.generator(self.encoder(x))

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters()) + list(self.encoder.parameters())

    def generator_loss(self, x: Tensor) -> LossStep:
        z = torch.randn(len(x), self.nz, 1, 1, device=x.device, dtype=x.dtype)
        fake = self.generator(z)
        z_enc = self.encoder(x)
        with frozen(self.discriminator):
            logit_fake, _ = self.discriminator.classify(fake, z)
            logit_enc, _ = self.discriminator.classify(x, z_enc)
        g_adv = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
        e_adv = F.binary_cross_entropy_with_logits(logit_enc, torch.zeros_like(logit_enc))
        logs = {"g_adv": g_adv.detach(), "e_adv": e_adv.detach()}
        return LossStep(g_adv + e_adv, logs, {"z": z, "fake": fake.detach(), "z_enc": z_enc.detach()})

    def discriminator_loss(self, x: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logit_real, _ = self.discriminator.classify(x, cache["z_enc"])
        logit_fake, _ = self.discriminator.classify(cache["fake"], cache["z"])
        loss = real_fake_bce(logit_real, logit_fake)
        return loss, loss.detach()

    def reset_discriminator(self) -> None:
        init_weights(self.discriminator, self.init_std)

    def score(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        rec = self.generator(z)
        _, h_real = self.discriminator.classify(x, z)
        _, h_rec = self.discriminator.classify(rec, z)
        residual = (x - rec).abs().flatten(1).sum(1)
        feature = (h_real - h_rec).abs().sum(1)
        return (1.0 - self.score_weight) * residual + self.score_weight * feature

    def validation_loss(self, x: Tensor) -> Tensor:
        return (self(x) - x).abs().flatten(1).mean(1)
