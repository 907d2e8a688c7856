"""Export a model's score to ONNX (dynamic batch axis) and score with onnxruntime on CPUs.

The exported graph takes images already scaled to [-1, 1] ([N, C, H, W] float32) and returns one
score per image, computed in eval mode exactly as `AnomalyModel.score`. A detector's export also carries,
as the file's metadata (`METADATA`), what labelling and reading images need: its threshold, the bit depth of
its training files, and the model's name, so that `OnnxScorer` alone can `predict`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .data.images import BYTE_DEPTH, as_image_tensor, to_unit_range
from .errors import CheckpointError, ConfigError
from .files import writing
from .models.base import AnomalyModel
from .training.inference import check_batch_size


class _Score(nn.Module):
    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.score(x)


METADATA = ("skipganomaly.model", "skipganomaly.threshold", "skipganomaly.bit_depth")  # values as text ("" = none)


def _export_to(model: AnomalyModel, path: Path, threshold: float | None, bit_depth: int | None) -> None:
    was_training = model.training
    model.eval()
    dummy = torch.zeros(2, model.in_channels, model.image_size, model.image_size,
                        device=next(iter([*model.parameters(), *model.buffers()])).device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Score(model), (dummy,), str(path), input_names=["images"], output_names=["scores"],
                              dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False,
                              opset_version=17)
    except Exception as err:
        if "onnx" in str(err).lower() and "not installed" in str(err).lower():
            raise ConfigError("ONNX export needs the onnx package: pip install 'skipganomaly[onnx]'") from None
        raise
    finally:
        model.train(was_training)
    import onnx

    graph = onnx.load(str(path))
    values = (model.name, "" if threshold is None else repr(float(threshold)),
              "" if bit_depth is None else str(bit_depth))
    for key, value in zip(METADATA, values, strict=True):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def export_onnx(model: AnomalyModel, path: str | os.PathLike[str], threshold: float | None = None,
                bit_depth: int | None = None) -> Path:
    """Write `model.score` as an ONNX graph with a dynamic batch axis, with `METADATA`; returns the path."""
    if not model.exportable:
        raise ConfigError(f"model {model.name!r} cannot be exported to ONNX (its score is an optimisation loop)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: no half-written file under the name
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            _export_to(model, tmp, threshold, bit_depth)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # nothing to remove where the folder could not be made
            tmp.unlink(missing_ok=True)
    return path


class OnnxScorer:
    """Score images with onnxruntime (CPU), in batches: whatever `Detector.decision_function` takes
    (uint8 or [0, 1] float arrays and tensors, lists of paths or PIL images), converted to the graph's
    channels and size (read from its input)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("onnxruntime is not installed: pip install 'skipganomaly[onnx]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not Path(path).is_file():
            raise CheckpointError(f"ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own types (InvalidProtobuf, Fail, ...): one project error
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path} is not a readable ONNX file ({first})") from None
        _, channels, size, _ = self.session.get_inputs()[0].shape
        self.in_channels, self.image_size = int(channels), int(size)
        meta = self.session.get_modelmeta().custom_metadata_map
        model, threshold, bit_depth = (meta.get(key, "") for key in METADATA)
        self.model_name: str | None = model or None
        self.threshold_: float | None = float(threshold) if threshold else None
        self.bit_depth_ = int(bit_depth) if bit_depth else BYTE_DEPTH  # files are read at it, each on its own

    def score(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Anomaly scores, higher = more anomalous (files wider than 8 bits read at the detector's bit depth)."""
        check_batch_size(batch_size)
        data = as_image_tensor(images, self.image_size, self.in_channels, bit_depth=self.bit_depth_)
        out = []
        for start in range(0, len(data), batch_size):
            batch = to_unit_range(data[start:start + batch_size]).numpy()
            out.append(self.session.run(["scores"], {"images": batch})[0])
        return np.concatenate(out).astype(np.float64)

    def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """1 where the score is above the detector's threshold (as `Detector.predict`), else 0."""
        if self.threshold_ is None:
            raise ConfigError("this ONNX file holds no threshold (exported from a bare model, or from a detector "
                              "fitted without held-out images); compare `score` with your own")
        return (self.score(images, batch_size) > self.threshold_).astype(np.int64)
