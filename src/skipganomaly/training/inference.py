"""Batched no-grad passes over uint8 images (scoring, validation loss, anomaly maps), batch independent."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError
from ..progress import progress_bar
from .device import autocast, prepare_batch


def check_batch_size(batch_size: object, none_for_default: bool = False) -> None:
    """A scoring batch size given in a call: a whole number of at least 1 (None too, where that means the
    default); anything else is one ConfigError, not a TypeError or an empty range deep in the loop."""
    if batch_size is None and none_for_default:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number of at least 1"
                          f"{' (or None for the default)' if none_for_default else ''}, got {batch_size!r}")


def default_eval_batch(device: torch.device, image_size: int = 32) -> int:
    """Batch size for no-grad passes: 256 images of 32x32 on GPUs, 64 on CPUs (a larger CPU batch scores
    no faster and raises peak memory), and as many pixels per batch at other sizes (16 images of 128x128
    on a GPU, 4 on a CPU), so that memory does not grow with the square of the image size (README, Image
    size, batch and memory)."""
    base = 256 if device.type == "cuda" else 64
    return max(1, base * 32 * 32 // (image_size * image_size))


def batched_apply(
    fn: Callable[[Tensor], Tensor],
    model: nn.Module,
    images: Tensor,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    train_mode: bool = False,
    desc: str | None = None,
) -> Tensor:
    """Run `fn` over uint8 images without gradients, in batches; returns float32 on the CPU. With `desc`,
    a progress bar of that name shows while more than one batch runs (and is removed at the end).

    By default in eval mode, which makes each image's result independent of batch size and of its
    batch neighbours. `train_mode=True` reproduces the reference evaluation instead (BatchNorm uses
    each batch's statistics, so results depend on the batch); running statistics are restored after.
    """
    saved = ({k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
             if train_mode else {})
    was_training = model.training
    model.train(train_mode)
    outputs = []
    try:
        starts = range(0, len(images), batch_size)
        with torch.no_grad(), progress_bar(total=len(images), desc=desc, unit="img", leave=False,
                                          disable=desc is None or len(starts) < 2) as bar:
            for start in starts:
                batch = prepare_batch(images[start:start + batch_size], device)
                with autocast(device, amp):
                    out = fn(batch)
                if out.ndim == 0 or len(out) != len(batch):
                    raise ModelError(f"model {_model_name(model)!r}: "
                                     f"{getattr(fn, '__name__', 'its method')} returned shape {tuple(out.shape)} for "
                                     f"{len(batch)} images; it must return one result per image (first dimension "
                                     f"{len(batch)})")
                outputs.append(out.float().cpu())
                bar.update(len(batch))
    finally:
        if train_mode:
            model.load_state_dict(saved, strict=False)
        model.train(was_training)
    return torch.cat(outputs)


def checked_scores(scores: Tensor, model: nn.Module) -> Tensor:
    """`scores` as the contract has them, one finite value per image, or a ModelError: a NaN would set a NaN
    threshold (flagging nothing) or pass as normal, and a [B, 1] score would misalign with the images."""
    name = _model_name(model)
    if scores.ndim != 1:
        raise ModelError(f"model {name!r}: score returned shape {tuple(scores.shape[1:])} per image; it must "
                         "return one value per image (shape [B])")
    bad = torch.nonzero(~torch.isfinite(scores)).flatten()
    if len(bad):
        raise ModelError(f"model {name!r}: the score is NaN or infinite for {len(bad)} of {len(scores)} images "
                         f"(the first: image {int(bad[0])})")
    return scores


def _model_name(model: nn.Module) -> str:
    """A registered model's name, else its class's (a plain module passed to `batched_apply`)."""
    return getattr(model, "name", "") or type(model).__name__

