"""The one training loop, for any registered model.

It knows nothing about model names: each model supplies its optimiser groups and the phases of one
iteration (GANs: a generator step, then a discriminator step with its reset rule; a single network:
one step), or is fitted in closed form on all training images (no optimiser group), and its
validation loss.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import PACKAGE_LOGGER, ConfigError, SkipGanomalyError
from ..files import load_torch_checked, save_torch_atomic
from ..models.base import AnomalyModel, Phase
from ..progress import progress_bar
from .config import TrainConfig, differing
from .distributed import average_gradients, average_tensor, broadcast_parameters, is_main_process, sync_buffers, world
from .optim import Adam
from .device import autocast, compile_blocks, prepare_batch, resolve_device, to_device, warn_emulated_bf16
from .inference import batched_apply, default_eval_batch
from .memory import release_free_memory

log = logging.getLogger(PACKAGE_LOGGER)


class TrainingError(SkipGanomalyError):
    """Training cannot go on (e.g. a loss became NaN); the last good checkpoint is kept."""


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


def make_optimizers(model: AnomalyModel, config: TrainConfig, adam: Callable[..., Any] = Adam) -> dict[str, Any]:
    """One Adam per optimiser group of the model, as every reference model does (fused: see `optim`;
    `adam=torch.optim.Adam` gives the reference's own optimiser, for the speed comparison)."""
    groups = model.optimizer_groups()
    if bool(groups) != model.trained_by_gradient:
        raise ConfigError(f"model {model.name!r}: trained_by_gradient is {model.trained_by_gradient} but it has "
                          f"{len(groups)} optimiser groups (a model fitted in closed form has none)")
    betas = (config.beta1, config.beta2)
    return {name: adam(params, config.lr, betas=betas) for name, params in groups.items()}


def train_step(
    model: AnomalyModel,
    x: Tensor,
    optimizers: dict[str, Any],
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """One iteration: the model's phases in order (GANs: G's step, then D's, the reference order), each
    stepping its own optimiser, then the reset rule of any phase whose value fell below the threshold.

    Returns the losses as floats and `d_reset` (1.0 if a network was re-initialised).
    """
    if not model.trained_by_gradient:
        raise ConfigError(f"model {model.name!r} is fitted in closed form; it has no training step")
    cache: dict[str, Tensor] = {}
    scalars: dict[str, Tensor] = {}
    resets: list[tuple[Phase, Tensor]] = []
    for phase in model.training_phases():
        with autocast(device, config.amp):
            step = phase.loss(x, cache)
        opt = optimizers[phase.group]
        opt.zero_grad(set_to_none=True)
        step.loss.backward()
        average_gradients(opt.params)  # no-op in a single process
        opt.step()
        cache.update(step.cache)
        scalars[phase.log_name] = step.loss
        scalars.update(step.logs)
        if phase.reset is not None and step.reset_value is not None:
            resets.append((phase, average_tensor(step.reset_value)))
    # One device-to-host copy for all values: each .item() waits for the GPU, and the CPU could not
    # queue the next step's kernels meanwhile.
    tensors = [*scalars.values(), *(value for _, value in resets)]
    floats = torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist()
    values = dict(zip(scalars, floats[:len(scalars)], strict=True))
    reset = False
    for (phase, _), value in zip(resets, floats[len(scalars):], strict=True):
        if value < config.d_reset_threshold:
            assert phase.reset is not None
            phase.reset()
            reset = True
    return {**values, "d_reset": float(reset)}


STATE_FORMAT = "skipganomaly-train-state"
STATE_VERSION = 2  # version 1 files (GAN optimisers under opt_g / opt_d) are read too (load_train_state)


def train(
    model: AnomalyModel,
    train_images: Tensor,
    val_images: Tensor,
    config: TrainConfig,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    train_index: Tensor | None = None,
    state_path: Path | None = None,
    resume: bool = False,
) -> list[EpochRecord]:
    """Train `model` in place on uint8 images [N, C, H, W] (or on `train_images[train_index]`, which
    spares a copy of a large data set); returns one record per epoch, resumed epochs included.

    With `config.patience`, training stops when the validation loss has not improved for that many
    epochs and the best epoch's weights are restored; otherwise the last epoch is the model.

    With `state_path`, everything needed to continue (weights, both optimisers, RNG states, epoch,
    records, early-stopping state) is written there atomically after every epoch; `resume=True`
    continues from that file when it exists, and the result is the same as an uninterrupted run.

    Under torchrun each process trains on its slice of every global batch of `config.batch_size`
    (see `distributed`); only rank 0 writes the state file.
    """
    index = torch.arange(len(train_images)) if train_index is None else train_index.long().cpu()
    rank, size = world()
    if config.batch_size % size:
        raise ConfigError(f"batch size {config.batch_size} does not split over {size} processes")
    if len(index) < model.min_training_images():
        raise ConfigError(f"{model.name} with these options needs at least {model.min_training_images()} training "
                          f"images, got {len(index)} (after the held-out split)")
    batch_size = min(config.batch_size, len(index))
    if len(index) < 2 or batch_size // size < 2:
        raise ConfigError(f"need at least 2 training images per process, got {len(index)} over {size}")
    local = batch_size // size
    if config.patience is not None and len(val_images) == 0:
        raise ConfigError("early stopping (patience) needs validation images")
    device = resolve_device(config.device)
    warn_emulated_bf16(device, config.amp)
    eval_batch = config.eval_batch_size or default_eval_batch(device, model.image_size)
    to_device(model, device)
    broadcast_parameters(model)
    if config.compile:
        compile_blocks(model, config.compile)
    data = train_images.to(device)
    optimizers = make_optimizers(model, config)
    shuffler = torch.Generator().manual_seed(config.seed)
    steps = len(index) // batch_size  # drop_last, as the reference: every batch has full statistics
    history: list[EpochRecord] = []
    best: tuple[float, dict[str, Tensor]] | None = None
    since_best = 0
    first_epoch = 1
    fingerprint = data_fingerprint(train_images) if state_path is not None else None
    if resume and state_path is not None and state_path.exists():
        state = load_train_state(state_path, config, fingerprint, model_identity(model))
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        shuffler.set_state(state["shuffler"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history = [EpochRecord(**r) for r in state["history"]]
        if state["best_state"] is not None:
            best = (state["best_loss"], state["best_state"])
        since_best = state["since_best"]
        first_epoch = state["epoch"] + 1
        if state["stopped"]:
            if config.epochs > state["epoch"] and model.trained_by_gradient and config.patience is not None:
                log.warning("%s stopped early at epoch %d (no better validation loss for %d epochs): resuming trains "
                            "no further epoch; start a new run (with a larger patience) to train longer", state_path,
                            state["epoch"], config.patience)
            first_epoch = config.epochs + 1

    release_free_memory()  # what loading the data (and a state file) freed, before the activations come
    stopped = False
    by_gradient = model.trained_by_gradient
    last = config.epochs if by_gradient else min(first_epoch, config.epochs)  # closed form: one pass
    epochs = progress_bar(range(first_epoch, last + 1), desc="epochs" if by_gradient else "fitting", unit="epoch",
                          initial=first_epoch - 1, total=last, disable=not config.progress or rank != 0)
    for epoch in epochs:
        model.train()
        for opt in optimizers.values():
            _set_learning_rate(opt, config.epoch_lr(epoch))
        start = time.perf_counter()
        sums: dict[str, float] = {}
        resets = 0
        if not by_gradient:  # closed form: one pass over every training image, then done
            with torch.no_grad():
                model.fit_closed_form(_all_images(data, index, eval_batch, device))
            model_steps, images = 1, len(index)
            stopped = True
        else:
            order = index[torch.randperm(len(index), generator=shuffler)].to(device)
            log_names = [phase.log_name for phase in model.training_phases()]
            bar = progress_bar(range(steps), desc=f"epoch {epoch}", unit="batch", leave=False,
                               disable=not config.progress or rank != 0)
            for step in bar:
                first = step * batch_size + rank * local
                x = prepare_batch(data[order[first:first + local]], device)
                values = train_step(model, x, optimizers, config, device)
                resets += int(values.pop("d_reset"))
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    names = ", ".join(k if "loss" in k else f"loss {k}" for k in bad)
                    kept = ("the checkpoint of the last complete epoch is kept (resume with a lower --lr, or check "
                            "the input images)" if state_path is not None and epoch > 1 else
                            "try a lower --lr, or check the input images")
                    raise TrainingError(f"{names} {'is' if len(bad) == 1 else 'are'} not finite at epoch {epoch}, "
                                        f"step {step + 1}; {kept}")
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if step % 10 == 0:
                    bar.set_postfix({name: f"{values[name]:.3f}" for name in log_names})
            model_steps, images = steps, steps * batch_size
        sync_buffers(model)
        seconds = time.perf_counter() - start
        val_loss = (float(batched_apply(model.validation_loss, model, val_images, eval_batch, device,
                                        config.amp).mean()) if len(val_images) else math.nan)
        record = EpochRecord(epoch, {k: v / model_steps for k, v in sums.items()}, val_loss, resets, seconds,
                             images / seconds)
        history.append(record)
        epochs.set_postfix(val_loss=f"{val_loss:.4f}", img_s=f"{record.images_per_second:.0f}")
        if config.patience is not None:
            if best is None or val_loss < best[0]:
                best, since_best = (val_loss, copy.deepcopy(model.state_dict())), 0
            else:
                since_best += 1
                stopped = stopped or since_best >= config.patience
        if state_path is not None and is_main_process():
            save_torch_atomic(state_path, {
                "format": STATE_FORMAT, "format_version": STATE_VERSION, "epoch": epoch, "stopped": stopped,
                "epochs": config.epochs,  # the run's planned length, which a cosine schedule is laid out over
                "settings": _resume_settings(config), "data": fingerprint, "model_identity": model_identity(model),
                "model": _cpu(model.state_dict()),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "shuffler": shuffler.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "history": [r.as_dict() for r in history], "since_best": since_best,
                "best_loss": best[0] if best else None, "best_state": _cpu(best[1]) if best else None,
            })
        if on_epoch_end is not None:
            on_epoch_end(record)
        if stopped and epoch < last:
            break
    if best is not None:
        model.load_state_dict(best[1])
    if model.fits_statistics:
        fit_statistics(model, data, index, eval_batch, device, config.amp)  # the same on every rank
        model.eval()  # fitted statistics belong to eval mode: a caller's direct forward must not move BatchNorm
    release_free_memory()  # the activations' heap, before the caller scores and reports
    return history


def fit_statistics(model: AnomalyModel, data: Tensor, index: Tensor, batch: int, device: torch.device,
                   amp: bool = False) -> None:
    """Fit what the model's score needs on the training images `data[index]` (uint8), in eval mode
    without gradients; the model's mode is restored, so training can go on (the paper protocol scores
    after every epoch)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device, amp):
            model.fit_statistics(_all_images(data.to(device), index.long().cpu(), batch, device))
    finally:
        model.train(was_training)


def _all_images(data: Tensor, index: Tensor, batch: int, device: torch.device) -> Tensor:
    """Every training image at once, in [-1, 1], converted a batch at a time."""
    return torch.cat([prepare_batch(data[index[i:i + batch].to(device)], device)
                      for i in range(0, len(index), batch)])


def _set_learning_rate(opt: Any, lr: float) -> None:
    """The fused Adam here holds one `lr`; a torch.optim optimiser (the speed comparison's) its groups'."""
    if isinstance(opt, Adam):
        opt.lr = lr
    else:
        for group in opt.param_groups:
            group["lr"] = lr


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _resume_settings(config: TrainConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption (the settings marked on_resume="fixed")."""
    return config.values(TrainConfig.names(on_resume="fixed"))


def check_resume_length(where: Path, config: TrainConfig, trained: int, planned: int | None) -> None:
    """A resumed run's result must be a `config.epochs`-epoch run's: not fewer epochs than it has `trained`, and for a
    cosine schedule, laid out over the `planned` epochs it started with (None: not known), no other number."""
    if trained > config.epochs:
        raise ConfigError(f"cannot resume {where} for {config.epochs} epochs: it has trained {trained} epochs already; "
                          "give at least that many")
    if config.lr_schedule == "cosine" and planned is not None and planned != config.epochs:
        raise ConfigError(f"cannot resume {where} for {config.epochs} epochs: its cosine learning-rate schedule is "
                          f"laid out over {planned} epochs, so the result would not be a {config.epochs}-epoch run's; "
                          f"start a new run of {config.epochs} epochs")


def load_train_state(path: Path, config: TrainConfig | None = None, fingerprint: str | None = None,
                     model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a training-state file (tensors and plain values only) and check it fits `config`, and, where
    given, that `fingerprint` (`data_fingerprint` of the images to train on) and `model`
    (`model_identity`) are the interrupted run's (states written before these were kept are not checked)."""
    state = load_torch_checked(path, STATE_FORMAT, (1, STATE_VERSION), "training state",
                               "skipganomaly training state")
    if state["format_version"] == 1:
        state["optimizers"] = {"generator": state.pop("opt_g"), "discriminator": state.pop("opt_d")}
    changed = differing(state["settings"], _resume_settings(config), TrainConfig.defaults()) if config else []
    if changed:
        raise ConfigError(f"cannot resume {path}: {', '.join(changed)} differ{'s' if len(changed) == 1 else ''} from "
                          "the interrupted run")
    if config is not None:
        check_resume_length(path, config, trained=state["epoch"], planned=state.get("epochs"))
    saved_model = state.get("model_identity")
    if model is not None and saved_model is not None and saved_model != model:
        changed = sorted(k for k in {*saved_model, *model} if saved_model.get(k) != model.get(k))
        raise ConfigError(f"cannot resume {path}: it trained {saved_model.get('model')!r} with other "
                          + ", ".join(f"{k} ({saved_model.get(k)!r} then, {model.get(k)!r} now)" for k in changed)
                          + "; resume with the same model and options, or start a new run")
    saved = state.get("data")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        (n_then, shape_then, _), (n_now, shape_now, _) = saved.split(":"), fingerprint.split(":")
        what = ("other pixels: other files, or, for images wider than 8 bits, a version that reads them otherwise"
                if (n_then, shape_then) == (n_now, shape_now) else
                f"{n_then} images of {shape_then} then, {n_now} of {shape_now} now")
        raise ConfigError(f"cannot resume {path}: the training images are not the interrupted run's ({what}); "
                          "resume on the same images, or start a new run")
    return state


def data_fingerprint(images: Tensor) -> str:
    """`N:CxHxW:hash` of a uint8 image tensor (BLAKE2b of its bytes; about 1 s per GB), so that a resumed
    run can tell it is given the images it was trained on."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(memoryview(images.detach().cpu().contiguous().numpy()).cast("B"))
    return f"{len(images)}:{'x'.join(map(str, images.shape[1:]))}:{digest.hexdigest()}"


def model_identity(model: AnomalyModel) -> dict[str, Any]:
    """The model's name and constructor arguments: what its weights in a training state belong to."""
    return {"model": model.name, **model.config()}
