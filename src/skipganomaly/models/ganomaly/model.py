"""GANomaly (Akcay et al., 2018): encoder-decoder-encoder generator; the score compares the two
latent codes (spec section F2)."""

from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn

from ..base import GanModel, LossStep, frozen, init_weights, real_fake_bce
from ..base import check_positive, check_power_of_two
from ..dcgan import decoder, encoder, encoder_pyramid
from ..registry import register


class GanomalyGenerator(nn.Module):
    """E1 -> decoder -> E2: returns (reconstruction, z = E1(x), z' = E2(reconstruction))."""

    def __init__(self, in_channels: int, image_size: int, ngf: int, nz: int) -> None:
        super().__init__()
        self.encoder1 = encoder(in_channels, image_size, ngf, nz)
        self.decoder = decoder(nz, in_channels, image_size, ngf)
        self.encoder2 = encoder(in_channels, image_size, ngf, nz)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.encoder1(x)
        fake = self.decoder(z)
        return fake, z, self.encoder2(fake)


class GanomalyDiscriminator(nn.Module):
    """DCGAN encoder; the features are its last 4x4 map, the head a 4x4 conv to one logit."""

    def __init__(self, in_channels: int, image_size: int, ndf: int) -> None:
        super().__init__()
        self.features, width = encoder_pyramid(in_channels, image_size, ndf)
        self.classifier = nn.Conv2d(width, 1, 4, 1, 0, bias=False)

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.features(x)
        return self.classifier(feat).flatten(), feat


@register("ganomaly")
class Ganomaly(GanModel):
    """G 3,206,528 and D 663,296 parameters at 3x32x32. Score: mean (z - z')^2 over the nz dimensions."""

    reference_scores_in_train_mode = True  # the PyTorch reference never calls eval() (spec F2)

    def __init__(self, in_channels: int = 3, image_size: int = 32, ngf: int = 64, ndf: int = 64, nz: int = 100,
                 w_adv: float = 1.0, w_con: float = 50.0, w_enc: float = 1.0) -> None:
        check_power_of_two("ganomaly", image_size)
        check_positive("ganomaly", ngf=ngf, ndf=ndf, nz=nz)
        super().__init__(in_channels, image_size)
        self.ngf, self.ndf, self.nz = ngf, ndf, nz
        self.w_adv, self.w_con, self.w_enc = w_adv, w_con, w_enc
        self.generator = GanomalyGenerator(in_channels, image_size, ngf, nz)
        self.discriminator = GanomalyDiscriminator(in_channels, image_size, ndf)
        init_weights(self)


    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction G(x)."""
        return self.generator(x)[0]

    def generator_loss(self, x: Tensor) -> LossStep:
        logit_real, feat_real = self.discriminator.classify(x)
        fake, z, z_rec = self.generator(x)
        with frozen(self.discriminator):
            _, feat_fake = self.discriminator.classify(fake)
        adv = F.mse_loss(feat_fake, feat_real.detach())  # feature matching, as the reference
        con = F.l1_loss(fake, x)
        enc = F.mse_loss(z_rec, z)
        loss = self.w_adv * adv + self.w_con * con + self.w_enc * enc
        logs = {"g_adv": adv.detach(), "g_con": con.detach(), "g_enc": enc.detach()}
        return LossStep(loss, logs, {"logit_real": logit_real, "fake": fake.detach()})

    def discriminator_loss(self, x: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logit_real = cache["logit_real"]
        logit_fake, _ = self.discriminator.classify(cache["fake"])
        loss = 0.5 * real_fake_bce(logit_real, logit_fake)
        return loss, loss.detach()

    def score(self, x: Tensor) -> Tensor:
        _, z, z_rec = self.generator(x)
        return (z - z_rec).pow(2).flatten(1).mean(1)

    def validation_loss(self, x: Tensor) -> Tensor:
        return (self.generator(x)[0] - x).abs().flatten(1).mean(1)
