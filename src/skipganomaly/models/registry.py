"""Model registry (timm style): models are created by name, so nothing else branches on names."""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

from ..errors import ConfigError
from .base import AnomalyModel

_REGISTRY: dict[str, type[AnomalyModel]] = {}

M = TypeVar("M", bound=type[AnomalyModel])


NAME_FORM = re.compile(r"[a-z][a-z0-9_+-]*")  # what a --models list and a --model-arg MODEL: prefix can hold


def register(name: str) -> Callable[[M], M]:
    """Class decorator that makes a model available to `create(name)`. The class is checked against the
    `AnomalyModel` contract here, at import, so that a model missing a method or a type hint fails in one line
    naming what is missing, not after an epoch of training or by skipping the check of its options."""

    def add(cls: M) -> M:
        if not NAME_FORM.fullmatch(name):
            raise TypeError(f"model name {name!r}: use lower-case letters, digits, '_', '+' and '-', starting "
                            "with a letter (a comma or colon would split --models and --model-arg)")
        if name in _REGISTRY:
            raise TypeError(f"model name {name!r} is taken by {_REGISTRY[name].__module__}."
                            f"{_REGISTRY[name].__qualname__}")
        check_contract(cls, name)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def check_contract(cls: type[AnomalyModel], name: str) -> None:
    """The methods the training loop and the scoring call on this kind of model are its own, and every
    constructor argument has a type hint that resolves (the values given as options are checked against it)."""
    needed = ["score", "validation_loss"]
    needed += ["optimizer_groups", "training_phases"] if cls.trained_by_gradient else ["fit_closed_form"]
    needed += ["fit_statistics"] if cls.fits_statistics else []
    missing = [m for m in needed if getattr(cls, m) is getattr(AnomalyModel, m)]
    if missing:
        kind = "trained by gradient" if cls.trained_by_gradient else "fitted in closed form"
        raise TypeError(f"model {name!r} ({cls.__qualname__}, {kind}"
                        f"{', fits_statistics' if cls.fits_statistics else ''}) does not define "
                        f"{', '.join(missing)}; see AnomalyModel in models/base.py")
    try:
        hints = cls.param_hints()
    except (NameError, TypeError) as err:
        raise TypeError(f"model {name!r}: a constructor annotation cannot be resolved ({err}); import what it "
                        "names at run time, not under TYPE_CHECKING only") from None
    unhinted = [p for p in cls.param_defaults() if p not in hints]
    if unhinted:
        raise TypeError(f"model {name!r}: constructor argument(s) {', '.join(unhinted)} have no type hint; options "
                        "are checked against their hints, so every argument needs one")


def list_models() -> list[str]:
    """Names accepted by `create`, in registration order (the default model first)."""
    return list(_REGISTRY)


def get_model_class(name: str) -> type[AnomalyModel]:
    """The class registered under `name`; a ConfigError listing the names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}") from None


def create(name: str, **kwargs: Any) -> AnomalyModel:
    """Build a registered model; unknown names and arguments give a ConfigError, not a TypeError."""
    cls = get_model_class(name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a list of the wrong length, a layer of width 0
        raise ConfigError(f"bad arguments for model {name!r}: {str(err).splitlines()[0] if str(err) else err!r}"
                          ) from None
