"""Export a model's score to ONNX (dynamic batch axis) and score with onnxruntime on CPUs.

The exported graph takes images already scaled to [-1, 1] ([N, C, H, W] float32) and returns one
score per image, computed in eval mode exactly as `AnomalyModel.score`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .data.images import as_image_tensor, to_unit_range
from .errors import ConfigError
from .models.base import AnomalyModel


class _Score(nn.Module):
    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.score(x)


def export_onnx(model: AnomalyModel, path: str | os.PathLike[str]) -> Path:
    """Write `model.score` as an ONNX graph with a dynamic batch axis; returns the path."""
    if not model.exportable:
        raise ConfigError(f"model {model.name!r} cannot be exported to ONNX (its score is an optimisation loop)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    finally:
        model.train(was_training)
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
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        _, channels, size, _ = self.session.get_inputs()[0].shape
        self.in_channels, self.image_size = int(channels), int(size)

    def score(self, images: Any, batch_size: int = 256) -> np.ndarray:
        data = as_image_tensor(images, self.image_size, self.in_channels)
        out = []
        for start in range(0, len(data), batch_size):
            batch = to_unit_range(data[start:start + batch_size]).numpy()
            out.append(self.session.run(["scores"], {"images": batch})[0])
        return np.concatenate(out).astype(np.float64)
