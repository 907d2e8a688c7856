"""Skip-GANomaly++: the ResUNet++ generator in the Skip-GANomaly training scheme (spec sections A-D)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..registry import register
from ..skip_family import SkipFamilyModel
from .networks import DEFAULT_WIDTHS, ResUNetPPGenerator


@register("skipganomaly++")
class SkipGanomalyPP(SkipFamilyModel):
    """Skip-GANomaly++ with the reference's widths by default (G 4,063,027 / D 1,069,700 parameters)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, widths: Sequence[int] = DEFAULT_WIDTHS,
                 **loss_options: Any) -> None:
        self.widths = tuple(int(w) for w in widths)
        super().__init__(in_channels, image_size, **loss_options)

    def build_generator(self) -> nn.Module:
        return ResUNetPPGenerator(self.in_channels, self.widths)


    @classmethod
    def reference_options(cls) -> dict[str, Any]:
        """The reference ++ code detaches the latent loss, so it trains nothing (spec section C)."""
        return {"detach_latent": True}


@register("skipganomaly++rot")
class SkipGanomalyPPRotation(SkipGanomalyPP):
    """Not from the paper: Skip-GANomaly++ whose discriminator also learns which of 4 rotations a real
    image shows (a self-supervised GAN head), scored by the kNN distance of D's feature maps to the
    training normals' (`score="map"`, chosen on validate) or by the rotation head's cross-entropy
    (`"rotation"`), instead of by reconstruction (see README.md in this folder)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, widths: Sequence[int] = DEFAULT_WIDTHS,
                 rotation_weight: float = 1.0, score: str = "map", **loss_options: Any) -> None:
        super().__init__(in_channels, image_size, widths, rotation_weight=rotation_weight, score=score,
                         **loss_options)
