"""How a model option is written on a command line and in a format-1 config.yaml: one rule.

`--model-arg [MODEL:]KEY=VALUE`, VALUE read as YAML (`0.1`, `true`, `[8,16,32]`, `paper`). Without
`MODEL:` the option is for every model the command runs (`train` and `demo` run one; `benchmark`: those of
`--models`, not its `--baselines`); with it, for that model only. A model that has no option KEY is a one-line error naming the options it has.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, Iterable, Sequence

import yaml

from .errors import ConfigError

FORM = "[MODEL:]KEY=VALUE"


def parse_model_args(items: Iterable[str], models: Sequence[str],
                     unprefixed: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Options per model name, for the `models` a command runs (each gets a dict, maybe empty). An option
    without `MODEL:` goes to the `unprefixed` models (default: all of them; a benchmark's baselines take
    only options named for them)."""
    options: dict[str, dict[str, Any]] = {m: {} for m in models}
    for item in items:
        head, eq, value = item.partition("=")
        model, colon, key = head.rpartition(":") if ":" in head else ("", "", head)
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--model-arg expects {FORM}, got {item!r}")
        if colon and model not in options:
            raise ConfigError(f"--model-arg {item!r} names model {model!r}, which this command does not run "
                              f"({', '.join(models)})")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--model-arg {item!r}: {value!r} is not a value (YAML: 0.1, true, [8,16], text)") from None
        targets = [model] if colon else list(models if unprefixed is None else unprefixed)
        if not targets:
            raise ConfigError(f"--model-arg {item!r} names no model, and no model takes options without one here; "
                              f"write MODEL:{key}=...")
        for name in targets:
            options[name][key] = parsed
    return options


def check_option_types(model: str, options: dict[str, Any], hints: dict[str, Any]) -> None:
    """A one-line ConfigError for an option whose value is not of its constructor annotation's type
    (`widths=abc`, `flips=maybe`), before anything is built or trained."""
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"model {model!r}: option {key}={value!r} is not {_describe(hint)}")


def check_field_types(instance: Any) -> None:
    """Check a settings dataclass's fields against their annotations (a one-line ConfigError naming the
    field: `amp="false"` would otherwise be true, `epochs="2"` fail deep in training); numpy scalars, which
    grid searches hand out (`np.arange`), become the Python values they stand for."""
    import dataclasses

    import numpy as np

    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, np.generic) and not isinstance(value, np.str_):
            value = value.item()
            object.__setattr__(instance, f.name, value)  # frozen: set once, while it is being built
        if not _matches(value, hints[f.name]):
            raise ConfigError(f"{f.name}={value!r} is not {_describe(hints[f.name])}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if origin is typing.Literal:
        return value in args
    return True  # a type not described here is left to the constructor


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        plural = {int: "integers", float: "numbers", str: "texts", bool: "true/false values"}
        return f"a list of {plural.get(args[0], 'values') if args else 'values'} (e.g. [8,16,32])"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
