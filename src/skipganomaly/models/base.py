"""The contract every model fulfils, so that one training loop and one evaluator serve them all.

A model names its optimiser groups and the phases of one training iteration (GANs: a generator
step, then a discriminator step; a single network: one step); a model with no optimiser group is
fitted in closed form on all training images at once (PCA, kNN). The loop reads these properties
and never a model's name.
"""

from __future__ import annotations

import inspect
import math
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass
class LossStep:
    """What a phase's loss returns: the loss, scalars to log, tensors later phases may reuse, and
    (for a phase with a reset rule) the detached value the rule compares with its threshold."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    cache: dict[str, Tensor] = field(default_factory=dict)
    reset_value: Tensor | None = None


@dataclass(frozen=True)
class Phase:
    """One optimiser step of a training iteration: `loss(x, cache)` trains the parameters of `group`.

    `log_name` is the key its loss is logged under; `reset`, where given, re-initialises the phase's
    network when its `reset_value` falls below the loop's threshold (the reference D-reset rule)."""

    group: str
    loss: Callable[[Tensor, dict[str, Tensor]], LossStep]
    log_name: str
    reset: Callable[[], None] | None = None


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


SALIENCY_NAME = "saliency, |∂score/∂input| smoothed"  # what `saliency_map` shows, as the reports label it
RESIDUAL_NAME = "|input - reconstruction|"  # what the default `anomaly_map` shows
SALIENCY_SIGMA = 2.0  # px: wide enough to even out the 2- and 4-px grid that strided convolutions print on gradients


def saliency_map(score: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Where a score is sensitive: |d score / d x| averaged over channels, [B, H, W] (the anomaly map of a
    score that compares no pixels, such as a transformation classifier's), Gaussian-smoothed by
    `SALIENCY_SIGMA`: a raw input gradient of a strided CNN is a checkerboard, not a region."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(xg).sum(), xg)
    return gaussian_blur(grad.abs().mean(1), SALIENCY_SIGMA)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of [B, H, W] maps (kernel radius 2 sigma, reflected borders)."""
    radius = min(int(math.ceil(2 * sigma)), maps.shape[-1] - 1, maps.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]


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


def is_whole_number(value: object) -> bool:
    """An int or an integral float, never a bool or a string: option values reach a model from Python as
    well as from the CLI's parser, so a check must not call int() on whatever it was given."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def check_geometry(in_channels: int, image_size: int, min_size: int = 32) -> None:
    """Reject shapes the networks cannot represent, with a message that says what is allowed."""
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    if image_size < min_size or image_size % 8 != 0:
        raise ConfigError(
            f"image size must be a multiple of 8 and at least {min_size} (e.g. 32, 64, 128), got {image_size}"
        )


def check_positive(model: str, **sizes: int) -> None:
    """Layer widths and latent sizes must be at least 1 (0 builds empty layers that fail only in training)."""
    for name, value in sizes.items():
        if value < 1:
            raise ConfigError(f"{model}: {name} must be at least 1, got {value}")


def check_power_of_two(model: str, image_size: int) -> None:
    """DCGAN pyramids and the U-Net halve the map down to a fixed size; other sizes cannot be represented."""
    if image_size < 32 or image_size & (image_size - 1):
        raise ConfigError(f"{model} needs an image size that is a power of two, at least 32 (got {image_size})")


class AnomalyModel(nn.Module):
    """An anomaly detector: its networks (or fitted statistics), how it is trained, and its score.

    Subclasses define either `optimizer_groups` and `training_phases` (trained by gradient steps) or
    `fit_closed_form` (fitted once on all training images), and a score where higher means more
    anomalous. They never see data loaders or optimisers.
    """

    name: str = ""
    exportable: bool = True  # False where the score is not a plain forward pass (AnoGAN's latent search)
    # Whether the reference code scores the test set with its networks in train mode (BatchNorm on each
    # batch's statistics, dropout on): the PyTorch references never call eval(); the TensorFlow ones
    # score with is_training=False. The paper protocol reproduces what each model's reference does.
    reference_scores_in_train_mode: bool = False
    trained_by_gradient: bool = True  # False: fitted once by `fit_closed_form` (no optimiser groups)
    # True: after the last epoch the loop calls `fit_statistics` on every training image (a score that
    # compares with the training normals, e.g. a feature bank for nearest neighbours).
    fits_statistics: bool = False
    # Buffers whose shapes are known only after fitting (they grow with the training set): loading a
    # state dict resizes them to the saved shapes.
    fitted_buffers: tuple[str, ...] = ()

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        check_geometry(in_channels, image_size)
        self.in_channels = in_channels
        self.image_size = image_size

    # --- what the training loop needs -------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser (one Adam each), disjoint; empty for a closed-form model."""
        return {}

    def training_phases(self) -> list[Phase]:
        """The steps of one training iteration, in order (each steps one optimiser group)."""
        return []

    def min_training_images(self) -> int:
        """The fewest training images this model can be fitted on (a kNN bank needs more than k), checked
        by the loop before the first epoch rather than after the last."""
        return 2

    def fit_closed_form(self, x: Tensor) -> None:
        """Fit on every training image at once, x: [N, C, H, W] in [-1, 1] (models without optimiser groups)."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps, not in closed form")

    def fit_statistics(self, x: Tensor) -> None:
        """After training (eval mode, no gradients): statistics of every training image x [N, C, H, W] in
        [-1, 1] that the score needs. Only called where `fits_statistics` is True."""
        raise NotImplementedError(f"{type(self).__name__} fits no statistics after training")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.fitted_buffers:
            buf, saved = self._buffers.get(name), state_dict.get(prefix + name)
            if buf is not None and isinstance(saved, Tensor) and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

    def output_name(self) -> str | None:
        """What `reconstruct` gives, as the reports' example grids label its row; None where the model rebuilds
        nothing (the grids then have no such row)."""
        return "reconstruction"

    def map_name(self) -> str:
        """What `anomaly_map` shows, as the grids' colour bar says: a residual, or where the score is sensitive."""
        return RESIDUAL_NAME

    def validation_loss(self, x: Tensor) -> Tensor:
        """Per-image loss on held-out normal images, shape [B], for early stopping."""
        raise NotImplementedError

    # Constructor arguments stored under another attribute name, where the argument's own name is taken
    # (e.g. `score`, also the scoring method).
    param_attributes: dict[str, str] = {}

    @classmethod
    def _constructors(cls) -> list[Callable[..., None]]:
        """The `__init__`s whose arguments are this model's: its own, and its parents' for as long as
        each passes `**kwargs` on to the next."""
        inits = []
        for klass in cls.__mro__:
            if klass is AnomalyModel or not issubclass(klass, AnomalyModel):
                break
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            inits.append(init)
            if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
                break
        return inits

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Every constructor argument and its default, read from the signatures (scikit-learn's rule).

        A constructor that takes `**kwargs` passes them on to its parent's constructor, so its arguments
        are its own named ones plus the parent's; the first default met (the subclass's) wins."""
        params: dict[str, Any] = {}
        for init in cls._constructors():
            for p in list(inspect.signature(init).parameters.values())[1:]:
                if p.kind is p.VAR_POSITIONAL:
                    raise TypeError(f"{init.__qualname__} takes *args; name every argument")
                if p.kind is not p.VAR_KEYWORD:
                    params.setdefault(p.name, p.default)
        return params

    @classmethod
    def param_hints(cls) -> dict[str, Any]:
        """The constructor arguments' type annotations (the subclass's first), for checking given values."""
        hints: dict[str, Any] = {}
        for init in cls._constructors():  # resolvable for every registered model (checked by `register`)
            for name, hint in typing.get_type_hints(init).items():
                hints.setdefault(name, hint)
        hints.pop("return", None)
        hints.pop("kwargs", None)
        return hints

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model, as plain values (safe to store): each read
        from the attribute of its name (or `param_attributes`), so none can be forgotten."""
        out = {}
        for name in self.param_defaults():
            attribute = self.param_attributes.get(name, name)
            if not hasattr(self, attribute):
                raise TypeError(f"{type(self).__name__} does not store its constructor argument {name!r} "
                                f"as self.{attribute}")
            out[name] = plain(getattr(self, attribute))
        return out

    @classmethod
    def reference_options(cls) -> dict[str, Any]:
        """Constructor options that reproduce the reference code's training quirks (paper protocol)."""
        return {}


class GanModel(AnomalyModel):
    """The GAN layout of the paper's family: `self.generator` against `self.discriminator`, a generator
    step then a discriminator step per iteration, and D re-initialised when its loss collapses."""

    generator: nn.Module
    discriminator: nn.Module

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": self.generator_parameters(), "discriminator": self.discriminator_parameters()}

    def training_phases(self) -> list[Phase]:
        return [Phase("generator", lambda x, cache: self.generator_loss(x), "g_loss"),
                Phase("discriminator", self._discriminator_step, "d_loss", self.reset_discriminator)]

    def _discriminator_step(self, x: Tensor, cache: dict[str, Tensor]) -> LossStep:
        loss, reset_value = self.discriminator_loss(x, cache)
        return LossStep(loss, reset_value=reset_value)

    def generator_loss(self, x: Tensor) -> LossStep:
        raise NotImplementedError

    def discriminator_loss(self, x: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Return the loss that trains D, and the (detached) value the D-reset rule compares."""
        raise NotImplementedError

    def reset_discriminator(self) -> None:
        init_weights(self.discriminator)


class ClosedFormModel(AnomalyModel):
    """A model fitted in closed form (`fit_closed_form`): no parameters and no optimiser; its fitted
    state lives in `fitted_buffers`, resized to the saved shapes on load (tensors only: loads with
    `weights_only=True`)."""

    trained_by_gradient = False

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise ConfigError(f"model {self.name!r} is not fitted yet; train it first")

    def validation_loss(self, x: Tensor) -> Tensor:
        return self.score(x)


def plain(value: Any) -> Any:
    """Tuples as lists, so that a stored configuration reads back as it was written (YAML, JSON, torch)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value
