"""Model registry (timm style): models are created by name, so nothing else branches on names."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..errors import ConfigError
from .base import AnomalyModel

_REGISTRY: dict[str, type[AnomalyModel]] = {}

M = TypeVar("M", bound=type[AnomalyModel])


def register(name: str) -> Callable[[M], M]:
    """Class decorator that makes a model available to `create(name)`."""

    def add(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


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
