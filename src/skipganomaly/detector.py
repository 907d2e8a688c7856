"""The public API: a PyOD / scikit-learn style detector around any registered model, and the one
settings object (`DetectorSettings`) from which its checkpoint, a run's config.yaml, the CLI's flags,
the resume check and the benchmark's cell key are all derived."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .data.images import BIT_DEPTHS, BYTE_DEPTH, FileForm, read_images
from .errors import (PACKAGE_LOGGER, CheckpointError, ConfigError, DataError, SkipGanomalyError,
                     StatisticsMissing, not_fitted)
from .evaluation.metrics import min_calibration_images, quantile_threshold
from .files import load_torch_checked, save_torch_atomic, writing
from .models import create, get_model_class, list_models
from .models.base import AnomalyModel, check_geometry, plain
from .options import check_field_types, check_option_types
from .provenance import environment
from .run_directory import CHECKPOINT, STATE_SUFFIX, state_path
from .training import EpochRecord, TrainConfig, batched_apply, resolve_device, to_device, train
from .training.config import field_default, setting
from .training.distributed import is_main_process
from .training.inference import check_batch_size, checked_scores, default_eval_batch

log = logging.getLogger(PACKAGE_LOGGER)

FORMAT = "skipganomaly-detector"
FORMAT_VERSION = 2  # 1: training settings under "detector", model options only inside "model_config" (still read)
# The model a Detector trains unless told otherwise: the best on the validate protocol of both data sets measured
# (README, "Which model by default"); the paper's model stays `skipganomaly++` by name.
DEFAULT_MODEL = "rotation"
GEOMETRY = ("in_channels", "image_size")  # constructor arguments of every model that the settings own


@dataclass(frozen=True)
class DetectorSettings:
    """Everything a detector is built and trained with. Flat names everywhere outside (keyword arguments,
    `get_params`, CLI flags, files): this class's fields, `TrainConfig`'s, and the model's own options,
    which must not clash (a test checks). See `training.config` for the metadata each field carries."""

    model: str = setting(DEFAULT_MODEL, help="registered model name", flag="--model", choices=list_models)
    model_options: Mapping[str, Any] = setting(default_factory=dict, flag="--model-arg",
                                               help="the model's constructor arguments (README, Models)")
    image_size: int = setting(32, flag="--image-size", help="images are resized to this size (a multiple of 8, at "
                                                            "least 32; the DCGAN-style models need a power of two)")
    in_channels: int = setting(3, help="1 grayscale, 3 RGB", flag="--channels", choices=(1, 3))
    val_fraction: float = setting(0.05, flag="--val-fraction",
                                  help="share of the normal training images held out for the threshold")
    contamination: float = setting(0.05, flag="--contamination",
                                   help="the share of new normal images the threshold may flag (at most; it is a "
                                        "rank among the held-out normal scores)")
    training: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise ConfigError(f"model must be a registered name, got {self.model!r}")
        check_field_types(self)
        # numpy scalars (a grid search's np.arange) as the Python numbers they stand for; the values are kept as
        # given otherwise (scikit-learn's clone checks that get_params returns the very objects it passed)
        object.__setattr__(self, "model_options", {k: _python_value(v) for k, v in self.model_options.items()})
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; available: {', '.join(list_models())}")
        check_geometry(self.in_channels, self.image_size)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction == 0.0 and self.training.patience is not None:
            raise ConfigError("early stopping (patience, --patience) needs held-out validation images, and "
                              "val_fraction 0 holds none out")
        if not 0.0 <= self.contamination < 1.0:
            raise ConfigError(f"contamination must be in [0, 1), got {self.contamination}")
        allowed = model_option_names(self.model)
        unknown = [k for k in self.model_options if k not in allowed]
        if unknown:
            raise ConfigError(f"model {self.model!r} has no option {unknown[0]!r}; its options: {', '.join(allowed)}"
                              f"; detector settings: {', '.join(setting_names())}")
        check_option_types(self.model, self.model_options, get_model_class(self.model).param_hints())

    # --- flat views -------------------------------------------------------------------------
    @classmethod
    def from_params(cls, **params: Any) -> "DetectorSettings":
        """From flat keyword arguments: detector settings, training settings and model options by name."""
        own = {f.name for f in _detector_fields()}
        training = set(TrainConfig.names())
        top = {k: v for k, v in params.items() if k in own}
        train_part = {k: v for k, v in params.items() if k in training}
        options = {k: v for k, v in params.items() if k not in own and k not in training}
        if options and "model_options" in top:
            raise ConfigError("give model options either in model_options or as keyword arguments, not both")
        top.setdefault("model_options", options)
        return cls(**top, training=TrainConfig(**train_part))

    def params(self) -> dict[str, Any]:
        """Flat: every setting by name, the model options among them (scikit-learn's get_params)."""
        own = {f.name: getattr(self, f.name) for f in _detector_fields() if f.name != "model_options"}
        return {**own, **self.training.values(), **self.model_options}

    def replace(self, **params: Any) -> "DetectorSettings":
        """A copy with some flat settings changed: model options by name are added to the current ones;
        `model_options=` replaces them all (e.g. with another model)."""
        current = {k: v for k, v in self.params().items() if k not in self.model_options}
        options_given = "model_options" in params
        options = dict(params.pop("model_options", self.model_options))
        if params.get("model", self.model) != self.model and not options_given:
            # another model, its options not given: the old model's options it has no use for are dropped (so a
            # grid search over models works), with a word
            allowed = model_option_names(params["model"]) if params["model"] in list_models() else []
            dropped = sorted(k for k in options if k not in allowed)
            if dropped:
                log.warning("model %s has no option %s: dropped with model %s", params["model"], ", ".join(dropped),
                            self.model)
                options = {k: v for k, v in options.items() if k in allowed}
        for key in list(params):
            if key not in current:
                options[key] = params.pop(key)
        return DetectorSettings.from_params(**{**current, **params}, model_options=options)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for files (config.yaml, checkpoints): model options nested under `model_options`."""
        out = {k: plain(v) for k, v in self.params().items() if k not in self.model_options}
        out["model_options"] = {k: plain(v) for k, v in self.model_options.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "settings") -> "DetectorSettings":
        """The inverse of `as_dict`; a name missing from `data` (an option added since) takes its default."""
        known = set(setting_names()) | {"model_options"}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} (written by a newer version of "
                              "skipganomaly?)")
        return cls.from_params(**{k: v for k, v in data.items() if k != "model_options"},
                               model_options=dict(data.get("model_options") or {}))

    def result_settings(self) -> dict[str, Any]:
        """The settings that can change a trained detector's scores, plain (a benchmark cell's key): a model
        fitted in closed form leaves out those that act on gradient training alone."""
        trained = get_model_class(self.model).trained_by_gradient
        result = {f.name for f in setting_fields()
                  if f.metadata["result"] and (trained or not f.metadata["gradient_only"])}
        return {k: v for k, v in self.as_dict().items() if k in result}


def _python_value(value: Any) -> Any:
    """Numpy scalars and arrays (a grid search's np.arange, widths=np.array([...])) as the Python numbers and lists
    they stand for; any other value as given (the same object, which scikit-learn's clone checks for)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)) and any(isinstance(v, (np.generic, np.ndarray)) for v in value):
        return type(value)(_python_value(v) for v in value)
    return value


def _detector_fields() -> list[dataclasses.Field]:
    """DetectorSettings' own fields (its `training` part aside)."""
    return [f for f in fields(DetectorSettings) if f.name != "training"]


_FITTED = ("model_", "threshold_", "val_scores_", "history_", "n_train_images_", "n_val_images_", "bit_depth_",
           "file_form_", "fit_environment_")  # what `fit` sets: kept as it was when a fit fails before its first epoch
_MISSING = object()


def model_options_in_effect(settings: DetectorSettings) -> dict[str, Any]:
    """Every option of the settings' model as plain values: those given, the others at this version's defaults
    (what a report shows, since a later version may change a default)."""
    defaults = get_model_class(settings.model).param_defaults()
    return {**{k: plain(v) for k, v in defaults.items() if k not in GEOMETRY},
            **{k: plain(v) for k, v in settings.model_options.items()}}


def _effective_settings(settings: DetectorSettings) -> dict[str, Any]:
    """The settings a fitted model's scores depend on, as values: the model's option defaults filled in, tuples
    as lists (a loaded detector's), and for a model fitted in closed form, no setting that acts on gradient
    training alone. Where these are equal, `set_params` keeps the fitted model."""
    keep = set(settings.result_settings()) - {"model_options"}
    flat = {k: v for k, v in settings.as_dict().items() if k in keep}
    return {**model_options_in_effect(settings), **flat}


@contextlib.contextmanager
def _float32_autograd(grad: bool) -> Iterator[None]:
    """Training and scoring as the models are written for, whatever the caller's torch state: float32 as the
    default dtype (not a `torch.set_default_dtype(torch.float64)` of the notebook's), outside inference mode, and
    with `grad`, gradients on (a fit called under `torch.no_grad()`)."""
    previous = torch.get_default_dtype()
    if previous != torch.float32:  # a process-wide setting: touched only where the caller changed it
        torch.set_default_dtype(torch.float32)
    try:
        with torch.inference_mode(False), (torch.enable_grad() if grad else contextlib.nullcontext()):
            yield
    finally:
        if previous != torch.float32:
            torch.set_default_dtype(previous)


def _anomalies_in(y: Any) -> int:
    """How many labels of `y` mark anomalies: 1 among 0/1 labels (this package's and PyOD's convention), -1 among
    -1/+1 (scikit-learn's outlier detectors'); 0 for anything else, such as class names or all 1s."""
    values = _label_values(y)
    if not values:
        return 0
    labels = np.asarray(y)
    if values == {0, 1}:
        return int(np.sum(labels == 1))
    return int(np.sum(labels == -1)) if values <= {-1, 1} else 0  # all 1: scikit-learn's inliers


def _label_values(y: Any, booleans: bool = True) -> set[Any]:
    """The distinct values of numeric labels `y` (booleans among them unless told not), empty for anything else
    (None, class names, no labels)."""
    if y is None:
        return set()
    labels = np.asarray(y)
    if labels.dtype.kind not in ("biuf" if booleans else "iuf") or not labels.size:
        return set()
    return set(np.unique(labels).tolist())


def _sklearn_outlier_labels(y: Any) -> bool:
    """Whether `y` uses scikit-learn's outlier labels (+1 inliers, -1 outliers): numbers among -1 and +1 with
    a -1, or only +1 (normal-only splits of such labels), which 0/1 labels never are for normal images."""
    values = _label_values(y, booleans=False)
    return bool(values) and values <= {-1, 1} and (-1 in values or values == {1})


def check_threshold_split(val_fraction: float, why: str) -> None:
    """Where a threshold is reported, `val_fraction` must hold images out for it (the library alone also
    takes 0: scores without a threshold). `why` says, in the caller's words, what needs the threshold."""
    if not 0.0 < val_fraction < 1.0:
        flag = next(f.metadata["flag"] for f in _detector_fields() if f.name == "val_fraction")
        raise ConfigError(f"{why}: {flag} must be above 0 and below 1, got {val_fraction}")


def _held_out(n_images: int, val_fraction: float) -> int:
    """How many of `n_images` `fit` holds out for the threshold."""
    return int(round(n_images * val_fraction))


def n_image_text(n: int) -> str:
    return f"{n} image{'s are' if n != 1 else ' is'}"


def _splits(n_images: int, val_fraction: float) -> bool:
    """Whether `n_images` hold out at least one image at `val_fraction` (if above 0) and keep two to train on."""
    n_val = _held_out(n_images, val_fraction)
    return (val_fraction == 0 or n_val >= 1) and n_images - n_val >= 2


def setting_fields() -> list[dataclasses.Field]:
    """The settings' fields with their metadata, in order (detector's, then training's): the CLI's flags."""
    return _detector_fields() + list(fields(TrainConfig))


def setting_names() -> list[str]:
    """Flat names of the detector's own and its training settings (model options aside)."""
    return [f.name for f in setting_fields() if f.name != "model_options"]


def setting_defaults() -> dict[str, Any]:
    """Flat defaults of every setting (model options: none given)."""
    return {f.name: field_default(f) for f in setting_fields()}


def model_option_names(model: str) -> list[str]:
    """The options a model takes besides its geometry (which the settings own). An option named like a
    setting is an error: `Detector(seed=7)` or `--model-arg seed=7` would set the setting, never the option."""
    names = [k for k in get_model_class(model).param_defaults() if k not in GEOMETRY]
    taken = sorted(set(names) & set(setting_names()))
    if taken:
        raise ConfigError(f"model {model!r} takes option(s) named like detector settings ({', '.join(taken)}); "
                          "values given under those names set the settings, so rename the option(s)")
    return names


class Detector:
    """Fit on normal images only; score new images (higher = more anomalous); flag above `threshold_`.

    `threshold_` is the (1 - contamination) quantile of scores on a held-out split of the normal
    training images (`val_fraction` of them, never trained on), so no test label is ever used.
    `val_fraction=0` trains on every image and leaves `threshold_` None (scores only, as the
    reference code; no early stopping). Extra keyword arguments go to the model (e.g. `widths`,
    `w_con`, `detach_latent`).
    """

    def __init__(self, model: str = DEFAULT_MODEL, **params: Any) -> None:
        """`params`: any setting of `DetectorSettings` or `TrainConfig` by name (epochs, batch_size, lr, seed,
        val_fraction, contamination, patience, device, amp, progress, compile, ...) and any option of the
        model (e.g. `widths`, `w_con`, `detach_latent`); an unknown name is a ConfigError listing both."""
        self.settings = DetectorSettings.from_params(model=model, **params)
        self.device = resolve_device(self.settings.training.device)
        self.model_: AnomalyModel | None = None
        self.threshold_: float | None = None
        self.val_scores_: np.ndarray | None = None  # held-out normal scores behind threshold_ (saved with it)
        self.n_train_images_: int | None = None  # images the weights were trained on
        self.n_val_images_: int | None = None  # held-out normals behind threshold_
        # the bit depth the training files wider than 8 bits were scaled by; scoring files reads them at it
        self.bit_depth_: int | None = None
        # how most training files were stored (colour, width x height); files unlike it are warned about when scored
        self.file_form_: FileForm | None = None
        # what trained it: command, commit, machine (`provenance.environment`), so a checkpoint scored elsewhere,
        # in a `test` report, still says where it came from
        self.fit_environment_: dict[str, Any] | None = None
        self.history_: list[dict[str, Any]] = []

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> "Detector":
        return cls(**settings.params())

    # --- scikit-learn conventions -----------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every setting and model option by name, as given (so `sklearn.base.clone` works)."""
        return self.settings.params()

    def set_params(self, **params: Any) -> "Detector":
        """Change settings; unknown names are a ConfigError. Where only how it runs changes (device,
        progress, compile) a fitted detector stays fitted, and a new `contamination` alone only moves
        `threshold_` (taken again from the held-out scores, `val_scores_`); any other change drops the fitted
        model (with a warning), since its weights no longer match the settings that `save` and `get_params`
        would report."""
        before = _effective_settings(self.settings)
        settings = self.settings.replace(**params)
        device = resolve_device(settings.training.device)  # an unusable device fails here, before anything changes
        self.settings, self.device = settings, device
        after = _effective_settings(settings)
        changed = sorted(k for k in after.keys() | before.keys() if after.get(k, _MISSING) != before.get(k, _MISSING))
        # a new contamination needs only a new threshold from the held-out scores (none without them), not new weights
        recalibrate = changed == ["contamination"]
        if self.model_ is not None and changed and not recalibrate:
            log.warning("set_params changed %s: the fitted model is dropped; call fit() again", ", ".join(changed))
            self._restore({name: [] if name == "history_" else None for name in _FITTED})
        elif self.model_ is not None:
            to_device(self.model_, self.device)
            if recalibrate and self.val_scores_ is not None:
                self._set_threshold()
        return self

    def options_in_effect(self) -> dict[str, Any]:
        """Every option of the model as it scores: the fitted model's own (a loaded one's as it was trained, whatever
        the defaults are now), else the settings' with this version's defaults."""
        if self.model_ is not None:
            return {k: v for k, v in self.model_.config().items() if k not in GEOMETRY}
        return model_options_in_effect(self.settings)

    def _fitted_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FITTED}

    def _restore(self, state: Mapping[str, Any]) -> None:
        for name in _FITTED:
            setattr(self, name, state[name])

    def __repr__(self) -> str:
        """Like scikit-learn's: the model and every parameter that differs from its default."""
        defaults = DetectorSettings.from_params(model=self.settings.model).params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if k != "model" and (k not in defaults or defaults[k] != v)]
        return f"Detector({', '.join([repr(self.settings.model), *changed])})"

    def __sklearn_is_fitted__(self) -> bool:
        return self.model_ is not None

    def __sklearn_tags__(self) -> Any:
        """scikit-learn >= 1.6 asks every estimator for its tags (e.g. in `check_is_fitted`)."""
        try:
            from sklearn.utils import Tags, TargetTags
        except ImportError:  # older scikit-learn: no tags
            raise AttributeError("__sklearn_tags__") from None
        return Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False),
                    non_deterministic=True)

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def image_size(self) -> int:
        return self.settings.image_size

    @property
    def in_channels(self) -> int:
        return self.settings.in_channels

    @property
    def train_config(self) -> TrainConfig:
        return self.settings.training

    # --- training ---------------------------------------------------------------------------
    def fit(
        self,
        images: Any,
        y: Any = None,
        *,
        checkpoint_path: str | os.PathLike[str] | None = None,
        on_epoch_end: Callable[[EpochRecord], None] | None = None,
        resume: bool = False,
        bit_depth: int | None = None,
        file_form: FileForm | None = None,
    ) -> "Detector":
        """Train on normal images (an array, tensor, list of paths or PIL images, or a folder: every image
        below it, or below its `train/`, as `skipganomaly train` reads it, a folder that holds labelled images
        refused; unreadable files are skipped with a warning). With `checkpoint_path`, the weights are
        saved after every epoch, so an interrupted run keeps its last complete epoch (it scores, but has
        no threshold until the run completes), and the calibrated detector at the end. Beside it, `<name>.state.pt` holds
        what `resume=True` needs to continue an interrupted run exactly where its last epoch ended.
        Under torchrun only rank 0 writes files. `bit_depth`: the depth of wide integer images, which scoring reuses:
        uint16 frames given here are read at it (12: divided by 4095), and for 8-bit arrays read from files wider
        than 8 bits, it is the depth they were scaled by (`read_image_files`); files and PIL images given without it
        set it themselves. `file_form`: for such arrays, how most of those files were
        stored (`LoadedFiles.form`), so that scoring can warn about files of another shape or colour; files given
        here set it themselves."""
        if resume and checkpoint_path is None:
            raise ConfigError("resume=True continues from the training state saved beside checkpoint_path: give the "
                              "checkpoint_path of the interrupted fit")
        if checkpoint_path is not None:
            checkpoint_path = _checkpoint_file(checkpoint_path)
        before = self._fitted_state()
        try:
            with _float32_autograd(grad=True):
                return self._fit(images, y, checkpoint_path, on_epoch_end, resume, bit_depth, file_form)
        except BaseException:
            # no epoch finished in this call (its history is still the earlier one, or empty): the detector stays as
            # it was, fitted or not, not half-made
            if self.history_ is before["history_"] or not self.history_:
                self._restore(before)
            raise

    def _fit(self, images: Any, y: Any, checkpoint_path: Path | None,
             on_epoch_end: Callable[[EpochRecord], None] | None, resume: bool, bit_depth: int | None,
             file_form: FileForm | None) -> "Detector":
        if (marked := _anomalies_in(y)):  # scikit-learn passes y along (GridSearchCV, pipelines)
            log.warning("fit ignores y and trains on every image given as normal, the %d labelled as anomalies among "
                        "them too; give it normal images only (in a grid search, CV splits of normal images)", marked)
        if _sklearn_outlier_labels(y):
            all_ones = bool(np.all(np.asarray(y) == 1))
            log.warning("y %s; this detector follows PyOD: decision_function is higher and predict is 1 for anomalies, "
                        "so a scorer given scikit-learn's labels (roc_auc, f1, ...) is inverted; label anomalies 1 and "
                        "normals 0, e.g. (y == -1).astype(int)%s",
                        "is all 1s: scikit-learn's label of normal images (+1), or, in 0/1 labels, every image an "
                        "anomaly" if all_ones else "holds scikit-learn's outlier labels (+1 normal, -1 anomaly)",
                        " (if 1 means anomaly here, fit trains on anomalies as normal)" if all_ones else "")
        data, depth, form = read_images(images, self.image_size, self.in_channels, aligned=False, bit_depth=bit_depth)
        if y is not None and np.ndim(y) == 1 and len(y) != len(data):
            raise DataError(f"y has {len(y)} labels for {len(data)} images")
        self.bit_depth_ = depth if depth is not None else bit_depth or BYTE_DEPTH
        self.file_form_ = form or file_form
        val_index, train_index = self.holdout(len(data))
        n_val = len(val_index)
        val = data[val_index]
        # the seed is this fit's own: the caller's random streams are left as they were (CPU, and every GPU once
        # CUDA is in use: torch.manual_seed seeds them all)
        in_use = torch.cuda.is_available() and (self.device.type == "cuda" or torch.cuda.is_initialized())
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if in_use else []):
            torch.manual_seed(self.train_config.seed)
            self.model_ = create(self.model_name, in_channels=self.in_channels, image_size=self.image_size,
                                 **self.settings.model_options)
            self.threshold_ = None
            self.val_scores_ = None
            self.history_ = []
            self.n_train_images_, self.n_val_images_ = len(data) - n_val, n_val
            self.fit_environment_ = environment()

            main = is_main_process()
            state = state_path(checkpoint_path) if checkpoint_path is not None else None
            # Training a finished (calibrated) detector on, e.g. for more epochs: it stays as it is, usable, until the
            # new one is calibrated; each epoch is in the state file, from which --resume continues.
            keep = resume and checkpoint_path is not None and _calibrated_file(checkpoint_path)
            if keep and main:
                log.info("%s keeps its calibrated detector until this training ends (the epochs are saved in %s)",
                         checkpoint_path, state)

            def epoch_done(record: EpochRecord) -> None:
                self.history_.append(record.as_dict())
                if checkpoint_path is not None and main and not keep:
                    # Weights only: calibrating costs a scoring pass (AnoGAN: a latent search), done once at the end.
                    self.save(checkpoint_path)
                if on_epoch_end is not None:
                    on_epoch_end(record)

            history = train(self.model_, data, val, self.train_config, epoch_done, train_index=train_index,
                            state_path=state, resume=resume)
            self.history_ = [r.as_dict() for r in history]
            # left in eval mode, as `load` leaves it: scoring then never switches modes, so threads can share it
            self.model_.eval()
            if n_val:
                self._calibrate(val)
        if checkpoint_path is not None and main:
            self.save(checkpoint_path)
        return self

    def holdout(self, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The indices `fit` holds out for the threshold and those it trains on (and fits statistics on),
        of `n_images` images: a permutation by the seed, the first `val_fraction` of it held out."""
        val_fraction = self.settings.val_fraction
        if not _splits(n_images, val_fraction):
            least = next(n for n in itertools.count(2) if _splits(n, val_fraction))
            if val_fraction == 0:
                raise DataError(f"{n_image_text(n_images)} too few to train on: that needs at least {least}")
            # the smallest fraction that holds one of these images out (a round to 1), where 2 stay to train on
            fraction = math.ceil(51 / n_images) / 100 if n_images >= 3 else None
            raise DataError(f"{n_image_text(n_images)} too few to hold out {val_fraction:.0%} of them for the "
                            f"threshold and train on the rest: that needs at least {least} images (at least 1 held "
                            "out, 2 to train on)" + (f"; or set val_fraction (--val-fraction) to {fraction:g}, which "
                                                     "holds out 1 of these" if fraction is not None else ""))
        order = torch.from_numpy(np.random.default_rng(self.train_config.seed).permutation(n_images))
        n_val = _held_out(n_images, val_fraction)
        return order[:n_val], order[n_val:]

    def _calibrate(self, val: torch.Tensor) -> None:
        self.val_scores_ = self._score_tensor(val)
        self._set_threshold()

    def _set_threshold(self) -> None:
        """threshold_ from the held-out scores at the current contamination (again after set_params changes it)."""
        assert self.val_scores_ is not None
        n, contamination = len(self.val_scores_), self.settings.contamination
        self.threshold_ = quantile_threshold(self.val_scores_, contamination)
        if contamination == 0 and n:
            log.warning("contamination 0: threshold_ is the largest of the %d held-out normal scores, which about "
                        "%.1f%% of new normal images exceed (1 in %d); no threshold learnt from normal images "
                        "flags none of them", n, 100 / (n + 1), n + 1)
        elif contamination > 0 and n < min_calibration_images(contamination):
            log.warning("threshold_ rests on %s, too few for a %.0f%% quantile: it is their largest score, which "
                        "about %.1f%% of normal images exceed (more than the %.0f%% asked); %d or more held-out images "
                        "(more images or a larger val_fraction) make it the quantile",
                        "1 held-out normal image" if n == 1 else f"{n} held-out normal images",
                        100 * (1 - contamination), 100 / (n + 1), 100 * contamination,
                        min_calibration_images(contamination))

    # --- scoring ----------------------------------------------------------------------------
    def decision_function(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Anomaly score per image, higher = more anomalous; independent of the other images in the call (up to
        float rounding, which differs with the batch size and the number of torch threads: up to a few 1e-4
        relative between batches of 1 and 64 in an audit; arrays are resized by torch and files by Pillow, so an
        image that needs resizing scores slightly differently as an array and as a file)."""
        return self._score_tensor(self._as_tensor(images), batch_size)

    def score_samples(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """scikit-learn's outlier-detector convention: higher = more normal (minus `decision_function`)."""
        return -self.decision_function(images, batch_size)

    def fit_predict(self, images: Any, y: None = None, **fit_kwargs: Any) -> np.ndarray:
        """`fit`, then `predict` on the same images (0/1 at `threshold_`); costs one scoring pass more.

        Unlike PyOD's, this flags few of the images it was fitted on, whatever `contamination` says: the
        threshold is calibrated on held-out normals, and images a model was trained on score lower than new
        ones (a kNN finds each in its own bank). To find anomalies among unlabelled images, fit on one part
        and predict the other."""
        return self.fit(images, y, **fit_kwargs).predict(images)

    def predict(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """1 for images scored above `threshold_`, else 0."""
        self._fitted()
        if self.threshold_ is None:  # said before the scoring pass, not after it
            raise CheckpointError("this detector has no threshold: it was trained with val_fraction=0, or its "
                                  "training run did not finish")
        return (self.decision_function(images, batch_size) > self.threshold_).astype(np.int64)

    def anomaly_maps(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Per-pixel anomaly maps [N, H, W] at the model's image size."""
        return self._apply("anomaly_map", self._as_tensor(images), batch_size).numpy()

    def example_names(self) -> tuple[str | None, str]:
        """What `reconstructions` and `anomaly_maps` show, as the reports label them: the model's output (None where
        it rebuilds nothing) and its map (a residual, or a saliency)."""
        model = self._fitted()
        return model.output_name(), model.map_name()

    def reconstructions(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's reconstructions [N, H, W, C], float in [0, 1] (clipped), for looking at."""
        out = self._apply("reconstruct", self._as_tensor(images), batch_size)
        return ((out.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0.0, 1.0)

    def export_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Write the score as an ONNX graph (input: images in [-1, 1], dynamic batch) with the threshold and the
        training files' bit depth as metadata, so `OnnxScorer` can score and predict alone; see `onnx_export`."""
        from .onnx_export import export_onnx

        model = self._fitted()
        try:
            written = export_onnx(model, path, self.threshold_, self.bit_depth_, self.file_form_)
        except StatisticsMissing as err:
            raise self._unfinished(err) from None
        if self.threshold_ is None:
            log.warning("exported without a threshold (%s): the ONNX file scores but cannot predict",
                        "val_fraction=0" if self.settings.val_fraction == 0 else "an unfinished training run")
        return written

    def _as_tensor(self, images: Any) -> torch.Tensor:
        self._fitted()
        return read_images(images, self.image_size, self.in_channels, bit_depth=self.bit_depth_,
                           trained_on=self.file_form_).images

    def _score_tensor(self, data: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        return checked_scores(self._apply("score", data, batch_size), self._fitted()).double().numpy()

    def _apply(self, method: str, data: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        """An eval-mode model method over uint8 images, in batches (default: default_eval_batch)."""
        model = self._fitted()
        check_batch_size(batch_size, none_for_default=True)
        batch = batch_size or self.train_config.eval_batch_size or default_eval_batch(self.device, self.image_size)
        try:
            with _float32_autograd(grad=False):  # the maps' saliency turns gradients on itself
                return batched_apply(getattr(model, method), model, data, batch, self.device, self.train_config.amp,
                                     desc=method.replace("_", " ") if self.train_config.progress else None)
        except StatisticsMissing as err:
            raise self._unfinished(err) from None

    def _unfinished(self, err: StatisticsMissing) -> StatisticsMissing:
        """The error of a score that needs statistics of the training normals, in words for this detector: an
        unfinished training run is told how to finish."""
        done, epochs = len(self.history_), self.train_config.epochs
        if self.threshold_ is not None or not done or done >= epochs:
            return err
        return StatisticsMissing(
            f"this detector's training did not finish ({done} of {epochs} epochs): its {self.model_name} score "
            "compares images with features of the training normals, fitted after the last epoch, so it cannot "
            "score yet; finish the run (skipganomaly train --resume RUN_DIR, or fit(images, checkpoint_path=..., "
            "resume=True))")

    def _fitted(self) -> AnomalyModel:
        if self.model_ is None:
            raise not_fitted("this detector is not fitted yet; call fit() or Detector.load()")
        return self.model_

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights, settings, threshold and format version atomically (temp file + rename). A folder
        (one that exists, or a new one named with a trailing slash: "models/") gets them as its model.pt, the
        file `load` reads from a folder."""
        model = self._fitted()
        path = _checkpoint_file(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "settings": self.settings.as_dict(),
            "model_config": model.config(),  # every constructor argument, defaults included
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "threshold": self.threshold_,
            "fit": {"n_train_images": self.n_train_images_, "n_val_images": self.n_val_images_,
                    "bit_depth": self.bit_depth_,
                    "file_form": None if self.file_form_ is None else self.file_form_.as_dict(),
                    "val_scores": None if self.val_scores_ is None else [float(v) for v in self.val_scores_],
                    "environment": self.fit_environment_},
            "history": self.history_,
        }
        with writing(Path(path)):
            save_torch_atomic(Path(path), payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto", expect_model: str | None = None,
             progress: bool | None = None) -> "Detector":
        """Load a saved detector (format 2, or 1). Only tensors and plain values are unpickled
        (`weights_only=True`). The model is rebuilt from its stored full configuration, so a default
        changed since the file was written does not change the loaded model. `progress`: None keeps the saved
        setting."""
        path = Path(path)
        if path.is_dir():  # a run directory: its checkpoint
            if not (path / CHECKPOINT).is_file():
                raise CheckpointError(f"{path} is a folder without a {CHECKPOINT}; give a checkpoint file or a run "
                                      "directory that holds one")
            path = path / CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        if path.suffix.lower() == ".onnx":
            raise CheckpointError(f"{path} is an ONNX export, not a detector checkpoint: score it with "
                                  "skipganomaly.onnx_export.OnnxScorer, or give the run's model.pt")
        payload = _read_payload(path)
        try:
            return cls._from_payload(payload, path, device, progress, expect_model)
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a file edited by hand, or damaged
            raise CheckpointError(f"{path}: a field of this checkpoint is missing or of the wrong type "
                                  f"({type(err).__name__}: {err}); save it again from the detector, or retrain"
                                  ) from None

    @classmethod
    def _from_payload(cls, payload: dict[str, Any], path: Path, device: str | None, progress: bool | None,
                      expect_model: str | None) -> "Detector":
        name = payload["model_name"]
        if expect_model is not None and name != expect_model:
            raise CheckpointError(f"{path} holds a {name!r} model, not {expect_model!r}")
        if name not in list_models():
            raise CheckpointError(f"{path} holds an unknown model {name!r} (known: {', '.join(list_models())}; a model "
                                  "of your own registers when its module is imported: import it before loading)")
        model_config = dict(payload["model_config"])
        if payload["format_version"] == 1:
            saved, fit = _settings_of_version_1(name, model_config, payload["detector"])
        else:
            saved, fit = payload["settings"], payload["fit"]
        try:
            settings = DetectorSettings.from_dict(saved, where=str(path))
            settings = settings.replace(device=device, **({} if progress is None else {"progress": progress}))
            model = create(name, **model_config)
        except ConfigError as err:  # named once: the settings' own message may name the file already
            raise CheckpointError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not fit the {name!r} model ({str(err).splitlines()[0]})") from None
        det = cls.from_settings(settings)
        det.model_ = to_device(model, det.device).eval()
        threshold = payload["threshold"]
        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise CheckpointError(f"{path}: its threshold is {threshold!r}, not a finite number (a NaN would flag "
                                  "nothing); save it again from the detector, or retrain")
        det.threshold_ = None if threshold is None else float(threshold)
        det.history_ = payload["history"]
        det.n_train_images_, det.n_val_images_ = fit.get("n_train_images"), fit.get("n_val_images")
        # None: not recorded (8-bit training saved by earlier versions, or arrays fitted without bit_depth=):
        # files are read as 8-bit, wider ones clipped with a warning that says how to record a depth
        depth = fit.get("bit_depth")
        if depth is not None and depth not in BIT_DEPTHS:
            raise CheckpointError(f"{path}: its bit depth is {depth!r}, not one of {', '.join(map(str, BIT_DEPTHS))}; "
                                  "save it again from the detector, or retrain")
        det.bit_depth_ = depth or BYTE_DEPTH
        det.file_form_ = FileForm.from_dict(fit.get("file_form"))  # None: arrays, or saved before it was recorded
        if fit.get("val_scores") is not None:
            det.val_scores_ = np.asarray(fit["val_scores"], dtype=np.float64)
        environment_ = fit.get("environment")  # None: saved before it was recorded
        det.fit_environment_ = dict(environment_) if isinstance(environment_, dict) else None
        return det


def _checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The file a detector is saved in: `path`, or its model.pt where `path` is a folder (one that exists, or a new
    one named with a trailing slash), so `fit`'s training state goes into that folder beside it too."""
    if Path(path).is_dir() or str(path).endswith(("/", os.sep)):
        return Path(path) / CHECKPOINT
    return Path(path)


def _calibrated_file(path: Path) -> bool:
    """Whether `path` holds a detector with a threshold (a finished training run); the weights are not rebuilt."""
    try:
        return path.is_file() and _read_payload(path).get("threshold") is not None
    except SkipGanomalyError:
        return False


def _read_payload(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, tensors and plain values only, of a format version this code reads."""
    resume_state = path.name.endswith(STATE_SUFFIX)  # the training state beside model.pt: a slip worth naming
    return load_torch_checked(path, FORMAT, (1, FORMAT_VERSION), readable_as="skipganomaly checkpoint",
                              kind="skipganomaly detector file" + (
                                  f" but a training state, read by --resume; give the detector beside it, "
                                  f"{path.with_name(path.name[:-len(STATE_SUFFIX)] + '.pt')}" if resume_state else ""))


def _settings_of_version_1(name: str, model_config: dict[str, Any], d: dict[str, Any]
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Format 1 kept the training settings under "detector" and the model's options only in its full config."""
    settings = {k: d[k] for k in ("val_fraction", "contamination", "epochs", "batch_size", "lr", "seed", "patience")}
    settings.update(model=name, image_size=model_config["image_size"], in_channels=model_config["in_channels"],
                    model_options={k: v for k, v in model_config.items() if k not in GEOMETRY})
    return settings, {"n_train_images": d.get("n_train_images"), "n_val_images": d.get("n_val_images")}
