"""The training loop and the runtime helpers it shares with scoring."""

from .loop import EpochRecord, TrainConfig, TrainingError, make_optimizers, train, train_step
from .runtime import autocast, batched_apply, compile_blocks, prepare_batch, resolve_device, to_device

__all__ = ["EpochRecord", "TrainConfig", "TrainingError", "autocast", "batched_apply", "compile_blocks",
           "make_optimizers", "prepare_batch", "resolve_device", "to_device", "train", "train_step"]
