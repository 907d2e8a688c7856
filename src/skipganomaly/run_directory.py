"""A run directory: the files a `train`, `test` or `demo` run writes, their names and their formats.

    config.yaml      what the run was started with: {format, format_version, command, data, test,
                     tensorboard, train_images, settings: the detector's settings (DetectorSettings)}
    model.pt         the detector (weights, settings, threshold), rewritten after every epoch
    model.state.pt   what `train --resume` needs to continue (optimisers, RNG states, epoch)
    metrics.jsonl    one JSON object per finished epoch (losses, validation loss, images/s)
    metrics.json     the run's result: threshold, training images, test metrics
    scores.csv       name, label, score (and flagged, with a threshold) per test image
    calibration.csv  the held-out training normals behind the threshold, and their scores
    evaluation.json  test metrics, threshold and title, from which the report is redrawn
    figures/         the report's figures (PNG)
    report.html      one self-contained page
    tensorboard/     TensorBoard events, with `train --tensorboard`

Everything that reads or writes one of these names takes it from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ConfigError
from .files import json_text, write_text_atomic
from .options import parse_model_args

CONFIG = "config.yaml"
CHECKPOINT = "model.pt"
STATE_SUFFIX = ".state.pt"
METRICS_LOG = "metrics.jsonl"
METRICS = "metrics.json"
SCORES = "scores.csv"
CALIBRATION = "calibration.csv"  # the held-out training normals behind the threshold, in the scores' format
EVALUATION = "evaluation.json"
FIGURES = "figures"
REPORT = "report.html"
TENSORBOARD = "tensorboard"

RUN_FILES = (CONFIG, CHECKPOINT, METRICS_LOG, METRICS, SCORES, CALIBRATION, EVALUATION, FIGURES, REPORT, TENSORBOARD)

CONFIG_FORMAT = "skipganomaly-run"
CONFIG_VERSION = 2  # 1: the flat argparse namespace of `train` (read by `read_config`)


def state_path(checkpoint: Path) -> Path:
    """The training-state file beside a checkpoint: model.pt -> model.state.pt."""
    return Path(checkpoint).with_suffix(STATE_SUFFIX)


def next_free_run(base: Path, evaluations: bool = False) -> Path:
    """`base`, or the first of base2, base3, ... that holds no run (with `evaluations`: nor a `test`
    command's evaluation) and that no running command holds: a default that never mixes or replaces earlier
    results, nor collides with a run that has not finished its first epoch yet."""
    from .folder_lock import in_use

    candidate, n = base, 1
    while RunDirectory(candidate).holds_run or (evaluations and RunDirectory(candidate).evaluation.exists()) \
            or in_use(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}{n}")
    return candidate


def _member(name: str) -> property:
    """A folder's file or subfolder `name`, as a read-only attribute."""
    return property(lambda self: self.root / name, doc=f"root / {name!r}")


@dataclass(frozen=True)
class RunDirectory:
    root: Path

    config = _member(CONFIG)
    checkpoint = _member(CHECKPOINT)
    metrics_log = _member(METRICS_LOG)
    metrics = _member(METRICS)
    scores = _member(SCORES)
    calibration = _member(CALIBRATION)
    evaluation = _member(EVALUATION)
    figures = _member(FIGURES)
    report = _member(REPORT)
    tensorboard = _member(TENSORBOARD)

    @property
    def state(self) -> Path:
        return state_path(self.checkpoint)

    @property
    def holds_run(self) -> bool:
        """Whether a run trained here (a checkpoint or training state exists). A start that failed before
        its first epoch leaves only config.yaml and an empty metrics.jsonl, which the next run rewrites."""
        return self.checkpoint.exists() or self.state.exists()

    def baseline_scores(self, model: str) -> Path:
        """A baseline's scores on this run's test set (`demo`: raw-pixel PCA and kNN beside each digit's model)."""
        return self.root / f"{model}_{SCORES}"

    def clear(self) -> None:
        """Remove this run's files (the names above and the baselines' scores only; anything else stays)."""
        import shutil

        from .models import BASELINES

        for path in (*(self.root / name for name in RUN_FILES), self.state, *map(self.baseline_scores, BASELINES)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def write_config(self, settings: dict[str, Any], **run: Any) -> None:
        """config.yaml: the run's own fields (`run`: command, data, ...) and the detector's settings."""
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in run.items()}
        text = yaml.safe_dump({"format": CONFIG_FORMAT, "format_version": CONFIG_VERSION, **plain,
                               "settings": settings}, sort_keys=False)
        write_text_atomic(self.config, text)

    def read_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(settings, run fields) from config.yaml, of this format or format 1 (a flat `train` namespace)."""
        if not self.config.is_file():
            raise ConfigError(f"{self.root} has no {CONFIG} (is it a `train` run directory?)")
        try:
            saved = yaml.safe_load(self.config.read_text())
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)  # PyYAML's message spans lines: the problem and its place
            raise ConfigError(f"{self.config} is not valid YAML ({getattr(err, 'problem', None) or 'unreadable'}"
                              + (f", line {where.line + 1}" if where is not None else "") + ")") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{self.config} is not a run configuration")
        if saved.get("format") == CONFIG_FORMAT:
            if saved.get("format_version") != CONFIG_VERSION:
                raise ConfigError(f"{self.config} has format version {saved.get('format_version')}; this version "
                                  f"reads {CONFIG_VERSION} and 1")
            run = {k: v for k, v in saved.items() if k not in ("format", "format_version", "settings")}
            return dict(saved.get("settings") or {}), run
        return _settings_of_version_1(saved)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics, metrics)


def _settings_of_version_1(flat: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Format 1 was the `train` command's argparse namespace: its training flags under their own names,
    `channels` for in_channels, `no_progress`, and `model_arg` as a list of KEY=VALUE strings."""
    model = flat.get("model", "skipganomaly++")
    settings = {k: flat[k] for k in ("model", "image_size", "epochs", "batch_size", "lr", "seed", "val_fraction",
                                     "contamination", "patience", "compile", "amp", "device") if k in flat}
    if "channels" in flat:
        settings["in_channels"] = flat["channels"]
    if "no_progress" in flat:
        settings["progress"] = not flat["no_progress"]
    settings["model_options"] = parse_model_args(flat.get("model_arg") or [], [model])[model]
    run = {k: flat.get(k) for k in ("command", "data", "test", "tensorboard", "train_images") if k in flat}
    return settings, run


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json_text(data, indent=2) + "\n")


class EpochLog:
    """Appends each epoch's record to metrics.jsonl (one JSON object per line, flushed at once) and,
    with `tensorboard`, writes the same scalars as TensorBoard events next to it. A resumed run starts
    the file over from the records of its completed epochs (`done`), so no epoch appears twice."""

    def __init__(self, run: RunDirectory, tensorboard: bool = False, done: Sequence[dict[str, Any]] = ()) -> None:
        self.path = run.metrics_log
        write_text_atomic(self.path, "".join(json_text(r) + "\n" for r in done))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(run.tensorboard))

    def __call__(self, record: Any) -> None:
        with self.path.open("a") as fh:
            fh.write(json_text(record.as_dict()) + "\n")
        if self.writer is not None:
            for name, value in record.losses.items():
                self.writer.add_scalar(f"loss/{name}", value, record.epoch)
            self.writer.add_scalar("validation/loss", record.val_loss, record.epoch)
            self.writer.add_scalar("speed/images_per_second", record.images_per_second, record.epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    """Per-epoch records from metrics.jsonl; a half-written last line (killed run) is ignored."""
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


@dataclass(frozen=True)
class SweepDirectory:
    """A `benchmark --out` folder: one JSON (+ scores) per finished cell, and the sweep's summaries."""

    root: Path

    cells = _member("cells")
    decoded = _member("decoded-images.pt")  # a folder data set decoded once for the cells; removed at the end
    results_json = _member("results.json")
    results_csv = _member("results.csv")
    table = _member("table.md")
    figures = _member(FIGURES)
    report = _member(REPORT)
