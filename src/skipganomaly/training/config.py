"""The training settings, and the field metadata from which every consumer derives what it needs.

Each setting is a dataclass field made with `setting(...)`, whose metadata says:
- `help`: the one-line description (the CLI's help text);
- `flag`: the CLI flag that sets it (None: library only);
- `result`: whether it can change a trained model's scores (then it is part of a benchmark cell's key);
- `gradient_only`: it acts on gradient training alone (epochs, optimiser), so a model fitted in closed form
  (the raw-pixel baselines) gives the same scores whatever its value, and its cells leave it out of their key;
- `on_resume`: "fixed" (a resumed run must use the interrupted run's value), "grow" (may be raised:
  epochs) or "free" (where and how fast it runs: device, progress bars, compilation).

So adding an option is one field here (or in the detector's settings) and the code that uses it: the
CLI flags, config.yaml, checkpoints, the resume check and the benchmark's cell key follow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Sequence

from ..errors import ConfigError

ON_RESUME = ("fixed", "grow", "free")
LR_SCHEDULES = ("constant", "cosine")


def setting(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, result: bool = True,
            gradient_only: bool = False, on_resume: str = "fixed",
            choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None, const: Any = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A settings field with the metadata described in this module's docstring (`choices`: allowed values,
    or a function giving them; `const`: what a flag without a value sets, e.g. --compile)."""
    if on_resume not in ON_RESUME:
        raise ValueError(f"on_resume must be one of {ON_RESUME}, got {on_resume!r}")
    metadata = {"help": help, "flag": flag, "result": result, "gradient_only": gradient_only,
                "on_resume": on_resume, "choices": choices, "const": const}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def differing(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """Names whose value in `current` differs from `saved`. A name missing from `saved` (written before
    the setting existed) is taken to have had its default."""
    return sorted(k for k, v in current.items() if saved.get(k, defaults.get(k)) != v)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; the defaults are the reference's (Adam 2e-4, betas 0.5/0.999, batch 64)."""

    epochs: int = setting(15, help="training epochs", flag="--epochs", gradient_only=True, on_resume="grow")
    batch_size: int = setting(64, help="images per training step", flag="--batch-size", gradient_only=True)
    lr: float = setting(2e-4, help="Adam learning rate", flag="--lr", gradient_only=True)
    lr_schedule: str = setting("constant", flag="--lr-schedule", choices=LR_SCHEDULES, gradient_only=True,
                               help="constant (the reference's), or cosine: epoch e of E trains at "
                                    "lr * (1 + cos(pi * (e - 1) / E)) / 2")
    beta1: float = setting(0.5, help="Adam beta1", gradient_only=True)
    beta2: float = setting(0.999, help="Adam beta2", gradient_only=True)
    seed: int = setting(0, help="seed of the weights, the validation split and the batch order", flag="--seed")
    d_reset_threshold: float = setting(1e-5, gradient_only=True,
                                       help="re-initialise a network whose reset value falls below this")
    patience: int | None = setting(None, flag="--patience", gradient_only=True,
                                   help="early stopping on validation loss after this many epochs without improvement")
    amp: bool = setting(False, flag="--amp",
                        help="bf16 autocast: faster on CPUs with AMX, results differ by bf16 rounding (README, Speed and memory)")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps", flag="--device", result=False,
                          on_resume="free")
    eval_batch_size: int | None = setting(None, help="batch of no-grad passes (None: by device and image size)",
                                          result=False, on_resume="free")
    progress: bool = setting(True, help="hide progress bars", flag="--no-progress", result=False, on_resume="free")
    compile: str | None = setting(None, flag="--compile", const="inductor", result=False, on_resume="free",
                                  help="torch.compile the model's blocks: minutes of compiling, then faster steps "
                                       "(README, Speed and memory)")

    def __post_init__(self) -> None:
        from ..options import check_field_types

        check_field_types(self)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"batch size must be at least 2 (BatchNorm needs it), got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be 0 or more, got {self.seed}")
        if self.d_reset_threshold < 0:
            raise ConfigError(f"d_reset_threshold must be 0 or more, got {self.d_reset_threshold}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be at least 1 (or None for the default), "
                              f"got {self.eval_batch_size}")

    def values(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The settings as a dict (all, or `names`)."""
        keep = None if names is None else set(names)
        return {f.name: getattr(self, f.name) for f in fields(self) if keep is None or f.name in keep}

    @classmethod
    def names(cls, *, result: bool | None = None, on_resume: str | None = None) -> list[str]:
        """Field names, optionally only those that change results / with a given resume rule."""
        return [f.name for f in fields(cls) if (result is None or f.metadata["result"] == result)
                and (on_resume is None or f.metadata["on_resume"] == on_resume)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: field_default(f) for f in fields(cls)}

    def epoch_lr(self, epoch: int) -> float:
        """The learning rate of epoch `epoch` (1-based) under `lr_schedule`; a function of the epoch alone, so a
        resumed run continues the schedule exactly (with more --epochs on resume, the remaining epochs follow
        the longer schedule)."""
        if self.lr_schedule == "cosine":
            return self.lr * (1.0 + math.cos(math.pi * (epoch - 1) / self.epochs)) / 2.0
        return self.lr
