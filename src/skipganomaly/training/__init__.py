"""The training loop and the runtime helpers it shares with scoring."""

from .config import TrainConfig
from .loop import EpochRecord, TrainingError, make_optimizers, train, train_step
from .device import autocast, compile_blocks, prepare_batch, resolve_device, to_device
from .inference import batched_apply

__all__ = ["EpochRecord", "TrainConfig", "TrainingError", "autocast", "batched_apply", "compile_blocks",
           "make_optimizers", "prepare_batch", "resolve_device", "to_device", "train", "train_step"]
