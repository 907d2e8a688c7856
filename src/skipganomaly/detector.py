"""The public API: a PyOD / scikit-learn style detector around any registered model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .data.images import as_image_tensor
from .errors import CheckpointError, ConfigError, DataError
from .evaluation.metrics import quantile_threshold
from .files import load_torch_checked, save_torch_atomic
from .models import create, list_models
from .models.base import AnomalyModel, check_geometry
from .training import EpochRecord, TrainConfig, batched_apply, resolve_device, to_device, train
from .training.runtime import default_eval_batch
from .training.distributed import is_main_process

FORMAT = "skipganomaly-detector"
FORMAT_VERSION = 1


class Detector:
    """Fit on normal images only; score new images (higher = more anomalous); flag above `threshold_`.

    `threshold_` is the (1 - contamination) quantile of scores on a held-out split of the normal
    training images (`val_fraction` of them, never trained on), so no test label is ever used.
    `val_fraction=0` trains on every image and leaves `threshold_` None (scores only, as the
    reference code; no early stopping). Extra keyword arguments go to the model (e.g. `widths`,
    `w_con`, `detach_latent`).
    """

    def __init__(
        self,
        model: str = "skipganomaly++",
        image_size: int = 32,
        in_channels: int = 3,
        epochs: int = 15,
        batch_size: int = 64,
        lr: float = 2e-4,
        seed: int = 0,
        val_fraction: float = 0.05,
        contamination: float = 0.05,
        patience: int | None = None,
        device: str = "auto",
        amp: bool = False,
        progress: bool = True,
        compile: str | None = None,
        **model_kwargs: Any,
    ) -> None:
        if model not in list_models():
            raise ConfigError(f"unknown model {model!r}; available: {', '.join(list_models())}")
        check_geometry(in_channels, image_size)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction == 0.0 and patience is not None:
            raise ConfigError("early stopping (patience) needs validation images; give a val_fraction above 0")
        if not 0.0 <= contamination < 1.0:
            raise ConfigError(f"contamination must be in [0, 1), got {contamination}")
        self.model_name = model
        self.image_size = image_size
        self.in_channels = in_channels
        self.val_fraction = val_fraction
        self.contamination = contamination
        self.model_kwargs = model_kwargs
        self.train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                        patience=patience, device=device, amp=amp, progress=progress,
                                        compile=compile)
        self.device = resolve_device(device)
        self.model_: AnomalyModel | None = None
        self.threshold_: float | None = None
        self.val_scores_: np.ndarray | None = None  # held-out normal scores behind threshold_ (fit only)
        self.n_train_images_: int | None = None  # images the weights were trained on (fit only)
        self.n_val_images_: int | None = None  # held-out normals behind threshold_ (fit only)
        self.history_: list[dict[str, Any]] = []

    # --- training ---------------------------------------------------------------------------
    def fit(
        self,
        images: Any,
        y: None = None,
        *,
        checkpoint_path: str | os.PathLike[str] | None = None,
        on_epoch_end: Callable[[EpochRecord], None] | None = None,
        resume: bool = False,
    ) -> "Detector":
        """Train on normal images. With `checkpoint_path`, the weights are saved after every epoch, so
        an interrupted run keeps its last complete epoch (it scores, but has no threshold until the
        run completes), and the calibrated detector at the end. Beside it, `<name>.state.pt` holds
        what `resume=True` needs to continue an interrupted run exactly where its last epoch ended.
        Under torchrun only rank 0 writes files."""
        data = as_image_tensor(images, self.image_size, self.in_channels)
        n_val = int(round(len(data) * self.val_fraction))
        if (self.val_fraction > 0 and n_val < 1) or len(data) - n_val < 2:
            raise DataError(
                f"{len(data)} images are too few to hold out a validation split of {self.val_fraction:.0%}; "
                "give more images or a larger val_fraction"
            )
        order = torch.from_numpy(np.random.default_rng(self.train_config.seed).permutation(len(data)))
        val = data[order[:n_val]]
        torch.manual_seed(self.train_config.seed)
        self.model_ = create(self.model_name, in_channels=self.in_channels, image_size=self.image_size,
                             **self.model_kwargs)
        self.threshold_ = None
        self.val_scores_ = None
        self.history_ = []
        self.n_train_images_, self.n_val_images_ = len(data) - n_val, n_val

        main = is_main_process()
        state_path = Path(checkpoint_path).with_suffix(".state.pt") if checkpoint_path is not None else None

        def epoch_done(record: EpochRecord) -> None:
            self.history_.append(record.as_dict())
            if checkpoint_path is not None and main:
                # Weights only: calibrating costs a scoring pass (AnoGAN: a latent search), done once at the end.
                self.save(checkpoint_path)
            if on_epoch_end is not None:
                on_epoch_end(record)

        history = train(self.model_, data, val, self.train_config, epoch_done, train_index=order[n_val:],
                        state_path=state_path, resume=resume)
        self.history_ = [r.as_dict() for r in history]
        if n_val:
            self._calibrate(val)
        if checkpoint_path is not None and main:
            self.save(checkpoint_path)
        return self

    def _calibrate(self, val: torch.Tensor) -> None:
        self.val_scores_ = self._score_tensor(val)
        self.threshold_ = quantile_threshold(self.val_scores_, self.contamination)

    # --- scoring ----------------------------------------------------------------------------
    def decision_function(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Anomaly score per image, higher = more anomalous; independent of batch composition."""
        return self._score_tensor(self._as_tensor(images), batch_size)

    def predict(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """1 for images scored above `threshold_`, else 0."""
        scores = self.decision_function(images, batch_size)
        if self.threshold_ is None:
            raise CheckpointError("this detector has no threshold: it was trained with val_fraction=0, or its "
                                  "training run did not finish")
        return (scores > self.threshold_).astype(np.int64)

    def anomaly_maps(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Per-pixel anomaly maps [N, H, W] at the model's image size."""
        return self._apply("anomaly_map", self._as_tensor(images), batch_size).numpy()

    def reconstructions(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's reconstructions [N, H, W, C], float in [0, 1] (clipped), for looking at."""
        out = self._apply("reconstruct", self._as_tensor(images), batch_size)
        return ((out.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0.0, 1.0)

    def export_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Write the score as an ONNX graph (input: images in [-1, 1], dynamic batch); see `onnx_export`."""
        from .onnx_export import export_onnx

        return export_onnx(self._fitted(), path)

    def _as_tensor(self, images: Any) -> torch.Tensor:
        self._fitted()
        return as_image_tensor(images, self.image_size, self.in_channels)

    def _score_tensor(self, data: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        return self._apply("score", data, batch_size).double().numpy()

    def _apply(self, method: str, data: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        """An eval-mode model method over uint8 images, in batches (default: default_eval_batch)."""
        model = self._fitted()
        batch = batch_size or default_eval_batch(self.device, self.image_size)
        return batched_apply(getattr(model, method), model, data, batch, self.device, self.train_config.amp)

    def _fitted(self) -> AnomalyModel:
        if self.model_ is None:
            raise ConfigError("this detector is not fitted yet; call fit() or Detector.load()")
        return self.model_

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights, configuration, threshold and format version atomically (temp file + rename)."""
        model = self._fitted()
        cfg = self.train_config
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_config": model.config(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "threshold": self.threshold_,
            "detector": {
                "val_fraction": self.val_fraction, "contamination": self.contamination,
                "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                "patience": cfg.patience, "n_train_images": self.n_train_images_, "n_val_images": self.n_val_images_,
            },
            "history": self.history_,
        }
        save_torch_atomic(Path(path), payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto", expect_model: str | None = None,
             progress: bool = True) -> "Detector":
        """Load a saved detector. Only tensors and plain values are unpickled (`weights_only=True`)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        payload = load_torch_checked(path, FORMAT, FORMAT_VERSION, readable_as="skipganomaly checkpoint",
                                     kind="skipganomaly detector file")
        name = payload["model_name"]
        if expect_model is not None and name != expect_model:
            raise CheckpointError(f"{path} holds a {name!r} model, not {expect_model!r}")
        if name not in list_models():
            raise CheckpointError(f"{path} holds an unknown model {name!r}")
        config = dict(payload["model_config"])
        d = payload["detector"]
        det = cls(model=name, image_size=config.pop("image_size"), in_channels=config.pop("in_channels"),
                  epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"], seed=d["seed"],
                  val_fraction=d["val_fraction"], contamination=d["contamination"], patience=d["patience"],
                  device=device, progress=progress, **config)
        model = create(name, in_channels=det.in_channels, image_size=det.image_size, **config)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not fit the {name!r} model ({str(err).splitlines()[0]})") from None
        det.model_ = to_device(model, det.device).eval()
        det.threshold_ = payload["threshold"]
        det.history_ = payload["history"]
        det.n_train_images_, det.n_val_images_ = d.get("n_train_images"), d.get("n_val_images")
        return det
