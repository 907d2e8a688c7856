"""Every registered model through the one training loop and the Detector, on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.data.images import as_image_tensor
from skipganomaly.detector import Detector
from skipganomaly.models import create, list_models
from skipganomaly.training import TrainConfig, batched_apply, train
from tests.conftest import blob_images, fast, noise_images




def _data(n: int, channels: int = 1) -> torch.Tensor:
    return as_image_tensor(blob_images(n, channels=channels), 32, channels)


@pytest.mark.parametrize("name", ["skipganomaly", "ganomaly"])
def test_a_few_steps_lower_the_reconstruction_loss(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, in_channels=1, image_size=32)
    data = _data(72)
    val = data[64:]
    before = float(batched_apply(model.validation_loss, model, val, 64, torch.device("cpu")).mean())
    history = train(model, data[:64], val, TrainConfig(epochs=3, batch_size=16, lr=1e-3, device="cpu", progress=False))
    assert history[-1].val_loss < 0.9 * before, (before, [r.val_loss for r in history])


def _gray(n: int, seed: int = 0) -> np.ndarray:
    """Toy normals: flat light-gray images with a little noise, NHWC uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(180, 200, (n, 1, 1, 1))
    return np.clip(base + rng.normal(0, 4, (n, 32, 32, 1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["egbad", "anogan"])
def test_adversarial_only_models_stay_finite_and_separate_corruption(name: str) -> None:
    """EGBAD and AnoGAN learn no reconstruction directly: their losses must stay finite, and after a
    short training their score must rank images with a dark square above clean ones. (The square's
    |x| equals the background's, so an untrained generator, whose output is ~0, cannot tell them apart.)"""
    det = Detector(model=name, in_channels=1, epochs=20, batch_size=16, lr=1e-3, device="cpu", progress=False,
                   width=32, **fast(name))
    det.fit(_gray(64))
    for record in det.history_:
        assert all(np.isfinite(v) for v in record["losses"].values()), record
        assert np.isfinite(record["val_loss"])
    clean = _gray(6, seed=7)
    corrupted = clean.copy()
    corrupted[:, 8:24, 8:24] = 64
    assert det.decision_function(corrupted).min() > det.decision_function(clean).max()


@pytest.mark.parametrize("name", list_models())
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    det = Detector(model=name, in_channels=3, epochs=1, batch_size=8, device="cpu", progress=False, **fast(name))
    det.fit(blob_images(20), checkpoint_path=tmp_path / "m.pt")
    loaded = Detector.load(tmp_path / "m.pt", device="cpu", expect_model=name)
    x = np.concatenate([blob_images(3, seed=4), noise_images(3)])
    assert np.array_equal(loaded.decision_function(x), det.decision_function(x))
    assert loaded.threshold_ == det.threshold_
    assert loaded.model_.config() == det.model_.config()
