"""AnoGAN (Schlegl et al., 2017): a DCGAN, and at test time an iterative search for the latent code
that best explains each image (spec section F4)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import GanModel, LossStep, frozen, init_weights, real_fake_bce
from ..base import check_positive, check_power_of_two
from ..dcgan import decoder, encoder_pyramid
from ...errors import ConfigError
from ..registry import register


class DcganDiscriminator(nn.Module):
    """Conv pyramid to a 4x4 map (flattened: the features), then a dense real/fake head."""

    def __init__(self, in_channels: int, image_size: int, width: int) -> None:
        super().__init__()
        self.features, top = encoder_pyramid(in_channels, image_size, width)
        self.head = nn.Linear(top * 16, 1)

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.features(x).flatten(1)
        return self.head(feat).squeeze(1), feat


@register("anogan")
class AnoGan(GanModel):
    """Score: the loss (1 - lam) * ||x - G(z)||_1 + lam * ||f(x) - f(G(z))||_1 after `search_steps`
    Adam steps on z (lr 0.01, then 0.001 after 40% and 0.0005 after 60% of the steps, as EG).

    Every image starts from the same fixed z0 and its loss only involves itself, so (in eval mode)
    its score does not depend on the batch it is searched in.
    """

    exportable = False

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 128, nz: int = 100,
                 lam: float = 0.1, search_steps: int = 500, search_lr: float = 0.01, validation_steps: int = 20,
                 search_seed: int = 0) -> None:
        check_power_of_two("anogan", image_size)
        check_positive("anogan", width=width, nz=nz)
        super().__init__(in_channels, image_size)
        if search_steps < 1 or validation_steps < 1:
            raise ConfigError("search_steps and validation_steps must be at least 1")
        self.width, self.nz, self.lam = width, nz, lam
        self.search_steps, self.search_lr, self.validation_steps = search_steps, search_lr, validation_steps
        self.search_seed = search_seed
        self.generator = decoder(nz, in_channels, image_size, width)
        self.discriminator = DcganDiscriminator(in_channels, image_size, width)
        init_weights(self)
        z0 = torch.empty(nz)
        nn.init.trunc_normal_(z0, 0.0, 1.0, -2.0, 2.0, generator=torch.Generator().manual_seed(search_seed))
        self.register_buffer("z0", z0, persistent=False)


    def forward(self, z: Tensor) -> Tensor:
        """G(z)."""
        return self.generator(z)

    def generator_loss(self, x: Tensor) -> LossStep:
        logit_real, _ = self.discriminator.classify(x)
        z = torch.randn(len(x), self.nz, 1, 1, device=x.device, dtype=x.dtype)
        fake = self.generator(z)
        with frozen(self.discriminator):
            logit_fake, _ = self.discriminator.classify(fake)
        adv = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
        return LossStep(adv, {"g_adv": adv.detach()}, {"logit_real": logit_real, "fake": fake.detach()})

    def discriminator_loss(self, x: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logit_real = cache["logit_real"]
        logit_fake, _ = self.discriminator.classify(cache["fake"])
        loss = real_fake_bce(logit_real, logit_fake)
        return loss, loss.detach()

    def search(self, x: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """Find z for each image; returns (final per-image loss [B], G(z) [B, C, H, W])."""
        with torch.enable_grad(), frozen(self):
            _, feat_x = self.discriminator.classify(x)
            feat_x = feat_x.detach()
            z = self.z0.to(x.device).expand(len(x), -1).clone()[:, :, None, None].requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.search_lr)
            for step in range(steps):
                for group in opt.param_groups:
                    group["lr"] = self._search_lr(step, steps)
                loss = self._search_loss(x, feat_x, z)[0]
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()  # per-image losses summed: each z only sees its own image
                opt.step()
        with torch.no_grad():
            loss, fake = self._search_loss(x, feat_x, z)
        return loss, fake

    def _search_lr(self, step: int, steps: int) -> float:
        if step >= 0.6 * steps:
            return self.search_lr * 0.05
        if step >= 0.4 * steps:
            return self.search_lr * 0.1
        return self.search_lr

    def _search_loss(self, x: Tensor, feat_x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        fake = self.generator(z)
        _, feat_fake = self.discriminator.classify(fake)
        residual = (x - fake).abs().flatten(1).sum(1)
        feature = (feat_x - feat_fake).abs().sum(1)
        return (1.0 - self.lam) * residual + self.lam * feature, fake

    def score(self, x: Tensor) -> Tensor:
        return self.search(x, self.search_steps)[0]

    def reconstruct(self, x: Tensor) -> Tensor:
        """G(z*) for the z* the latent search finds."""
        return self.search(x, self.search_steps)[1]

    def validation_loss(self, x: Tensor) -> Tensor:
        """Mean absolute residual after a short search (the full one would cost many epochs)."""
        fake = self.search(x, self.validation_steps)[1]
        return (fake - x).abs().flatten(1).mean(1)
