"""The one GAN training loop: alternate a generator and a discriminator step, for any registered model.

It knows nothing about model names: each model supplies its two losses, its parameter groups, its
D-reset rule and its validation loss.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError, SkipGanomalyError
from ..models.base import AnomalyModel
from .runtime import autocast, batched_apply, compile_blocks, prepare_batch, resolve_device, to_device


class TrainingError(SkipGanomalyError):
    """Training cannot go on (e.g. a loss became NaN); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the reference's (Adam 2e-4, betas 0.5/0.999, batch 64)."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    d_reset_threshold: float = 1e-5
    patience: int | None = None
    device: str = "auto"
    amp: bool | None = None
    eval_batch_size: int = 256
    progress: bool = True
    compile: str | None = None  # a torch.compile backend ("inductor"); None = eager (see compile_blocks)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"batch size must be at least 2 (BatchNorm needs it), got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")


@dataclass
class EpochRecord:
    """Mean losses of one epoch, the validation loss, and how often D was re-initialised."""

    epoch: int
    losses: dict[str, float]
    val_loss: float
    d_resets: int
    seconds: float
    images_per_second: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def make_optimizers(model: AnomalyModel, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for each side, as every reference model does."""
    betas = (config.beta1, config.beta2)
    return (torch.optim.Adam(model.generator_parameters(), config.lr, betas=betas),
            torch.optim.Adam(model.discriminator_parameters(), config.lr, betas=betas))


def train_step(
    model: AnomalyModel,
    x: Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """One iteration: G's step, then D's step (the reference order), then the D-reset rule.

    Returns the losses as floats and `d_reset` (1.0 if D was re-initialised).
    """
    with autocast(device, config.amp):
        g = model.generator_loss(x)
    opt_g.zero_grad(set_to_none=True)
    g.loss.backward()
    opt_g.step()
    with autocast(device, config.amp):
        d_loss, reset_value = model.discriminator_loss(x, g.cache)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    reset = reset_value.item() < config.d_reset_threshold
    if reset:
        model.reset_discriminator()
    return {"g_loss": g.loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in g.logs.items()},
            "d_reset": float(reset)}


def train(
    model: AnomalyModel,
    train_images: Tensor,
    val_images: Tensor,
    config: TrainConfig,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    train_index: Tensor | None = None,
) -> list[EpochRecord]:
    """Train `model` in place on uint8 images [N, C, H, W] (or on `train_images[train_index]`, which
    spares a copy of a large data set); returns one record per epoch.

    With `config.patience`, training stops when the validation loss has not improved for that many
    epochs and the best epoch's weights are restored; otherwise the last epoch is the model.
    """
    index = torch.arange(len(train_images)) if train_index is None else train_index.long().cpu()
    if len(index) < 2:
        raise ConfigError(f"need at least 2 training images, got {len(index)}")
    device = resolve_device(config.device)
    to_device(model, device)
    if config.compile:
        compile_blocks(model, config.compile)
    data = train_images.to(device)
    opt_g, opt_d = make_optimizers(model, config)
    shuffler = torch.Generator().manual_seed(config.seed)
    batch_size = min(config.batch_size, len(index))
    steps = len(index) // batch_size  # drop_last, as the reference: every batch has full statistics
    history: list[EpochRecord] = []
    best: tuple[float, dict[str, Tensor]] | None = None
    since_best = 0

    epochs = tqdm(range(1, config.epochs + 1), desc="epochs", unit="epoch", disable=not config.progress)
    for epoch in epochs:
        model.train()
        start = time.perf_counter()
        order = index[torch.randperm(len(index), generator=shuffler)].to(device)
        sums: dict[str, float] = {}
        resets = 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not config.progress)
        for step in bar:
            x = prepare_batch(data[order[step * batch_size:(step + 1) * batch_size]], device)
            values = train_step(model, x, opt_g, opt_d, config, device)
            resets += int(values.pop("d_reset"))
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(
                    f"loss {', '.join(bad)} is not finite at epoch {epoch}, step {step + 1}; "
                    "the checkpoint of the last complete epoch is kept (try a lower --lr)"
                )
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % 10 == 0:
                bar.set_postfix(g=f"{values['g_loss']:.3f}", d=f"{values['d_loss']:.3f}")
        seconds = time.perf_counter() - start
        val_loss = float(batched_apply(model.validation_loss, model, val_images, config.eval_batch_size,
                                       device, config.amp).mean())
        record = EpochRecord(epoch, {k: v / steps for k, v in sums.items()}, val_loss, resets, seconds,
                             steps * batch_size / seconds)
        history.append(record)
        epochs.set_postfix(val_loss=f"{val_loss:.4f}", img_s=f"{record.images_per_second:.0f}")
        if on_epoch_end is not None:
            on_epoch_end(record)
        if config.patience is not None:
            if best is None or val_loss < best[0]:
                best, since_best = (val_loss, copy.deepcopy(model.state_dict())), 0
            else:
                since_best += 1
                if since_best >= config.patience:
                    break
    if best is not None:
        model.load_state_dict(best[1])
    return history
