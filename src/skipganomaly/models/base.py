"""The contract every model fulfils, so that one training loop and one evaluator serve them all."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass
class GeneratorStep:
    """What a generator loss returns: the loss, scalars to log, and tensors the D loss may reuse."""

    loss: Tensor
    logs: dict[str, Tensor]
    cache: dict[str, Tensor] = field(default_factory=dict)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN initialisation used by every reference model: conv N(0, std), BN weight N(1, std)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def real_fake_bce(logit_real: Tensor, logit_fake: Tensor) -> Tensor:
    """The standard discriminator loss: BCE(D(real), 1) + BCE(D(fake), 0), on logits."""
    return (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
            + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Let gradients flow *through* a network without computing gradients *for* its weights."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def check_geometry(in_channels: int, image_size: int, min_size: int = 32) -> None:
    """Reject shapes the networks cannot represent, with a message that says what is allowed."""
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    if image_size < min_size or image_size % 8 != 0:
        raise ConfigError(
            f"image size must be a multiple of 8 and at least {min_size} (e.g. 32, 64, 128), got {image_size}"
        )


class AnomalyModel(nn.Module):
    """A GAN-based anomaly detector: networks, their losses, and the anomaly score.

    Subclasses define the two loss functions the training loop alternates between, and a score
    where higher means more anomalous. They never see data loaders or optimisers.
    """

    name: str = ""
    exportable: bool = True  # False where the score is not a plain forward pass (AnoGAN's latent search)
    # Whether the reference code scores the test set with its networks in train mode (BatchNorm on each
    # batch's statistics, dropout on): the PyTorch references never call eval(); the TensorFlow ones
    # score with is_training=False. The paper protocol reproduces what each model's reference does.
    reference_scores_in_train_mode: bool = False

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        check_geometry(in_channels, image_size)
        self.in_channels = in_channels
        self.image_size = image_size

    # --- what the training loop needs -------------------------------------------------------
    # Defaults for the usual layout: `self.generator` against `self.discriminator`.
    generator: nn.Module
    discriminator: nn.Module

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def generator_loss(self, x: Tensor) -> GeneratorStep:
        raise NotImplementedError

    def discriminator_loss(self, x: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Return the loss that trains D, and the (detached) value the D-reset rule compares."""
        raise NotImplementedError

    def reset_discriminator(self) -> None:
        init_weights(self.discriminator)

    # --- what evaluation needs --------------------------------------------------------------
    def score(self, x: Tensor) -> Tensor:
        """Per-image anomaly score, shape [B]; higher = more anomalous. Call in eval mode."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        """The model's reconstruction of x, shape of x (what the reports show beside the input)."""
        return self(x)

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Per-pixel anomaly map, shape [B, H, W]: mean absolute residual over channels. Call in eval mode."""
        return (x - self.reconstruct(x)).abs().mean(1)

    def validation_loss(self, x: Tensor) -> Tensor:
        """Per-image loss on held-out normal images, shape [B], for early stopping."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (plain values, safe to store)."""
        raise NotImplementedError

    @classmethod
    def reference_options(cls) -> dict[str, Any]:
        """Constructor options that reproduce the reference code's training quirks (paper protocol)."""
        return {}
