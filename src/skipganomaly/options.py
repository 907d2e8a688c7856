"""How a model option is written on a command line and in a format-1 config.yaml: one rule.

`--model-arg [MODEL:]KEY=VALUE`, VALUE read as YAML (`0.1`, `true`, `[8,16,32]`, `paper`). Without
`MODEL:` the option is for every model the command runs (`train` and `demo` run one); with it, for that
model only. A model that has no option KEY is a one-line error naming the options it has.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import yaml

from .errors import ConfigError

FORM = "[MODEL:]KEY=VALUE"


def parse_model_args(items: Iterable[str], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Options per model name, for the `models` a command runs (each gets a dict, maybe empty)."""
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
        for name in ([model] if colon else models):
            options[name][key] = parsed
    return options
