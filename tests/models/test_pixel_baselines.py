"""The raw-pixel yardsticks: PCA and kNN, checked against scikit-learn computed independently here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.data.images import to_unit_range
from skipganomaly.detector import Detector
from skipganomaly.errors import ConfigError
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.models import BASELINES, create, get_model_class
from tests.conftest import noise_images, smooth_images


def _unit(images: np.ndarray) -> torch.Tensor:
    return to_unit_range(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def test_baselines_are_registered_closed_form_models() -> None:
    for name in BASELINES:
        cls = get_model_class(name)
        assert not cls.trained_by_gradient
        model = create(name)
        assert not list(model.parameters()) and model.optimizer_groups() == {} and model.training_phases() == []
        with pytest.raises(ConfigError, match="not fitted"):
            model.score(torch.zeros(1, 3, 32, 32))


def test_pca_keeps_the_components_scikit_learn_chooses_and_scores_the_residual() -> None:
    from sklearn.decomposition import PCA

    train = _unit(smooth_images(80, seed=0))
    model = create("pca", explained_variance=0.9)
    model.fit_closed_form(train)
    flat = train.flatten(1).numpy()
    ref = PCA(n_components=0.9, svd_solver="full").fit(flat)
    assert model.components.shape == (ref.n_components_, flat.shape[1])
    x = _unit(np.concatenate([smooth_images(3, seed=9), noise_images(3)]))
    expected = ((x.flatten(1).numpy() - ref.inverse_transform(ref.transform(x.flatten(1).numpy()))) ** 2).mean(1)
    np.testing.assert_allclose(model.score(x).numpy(), expected, rtol=1e-3, atol=1e-6)
    assert model.reconstruct(x).shape == x.shape


def test_knn_score_is_the_mean_distance_to_the_k_nearest_training_images() -> None:
    from sklearn.neighbors import NearestNeighbors

    train = _unit(smooth_images(50, seed=0))
    model = create("knn", k=3)
    model.CHUNK = 16  # several chunks, so that the running top-k across chunks is exercised
    model.fit_closed_form(train)
    x = _unit(np.concatenate([smooth_images(4, seed=9), noise_images(2)]))
    dist, idx = NearestNeighbors(n_neighbors=3).fit(train.flatten(1).numpy()).kneighbors(x.flatten(1).numpy())
    np.testing.assert_allclose(model.score(x).numpy(), dist.mean(1), rtol=1e-4)
    assert np.array_equal(model.neighbours(x)[1].numpy(), idx)
    # The reconstruction is the mean of those neighbours.
    torch.testing.assert_close(model.reconstruct(x), train[torch.from_numpy(idx)].mean(1), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 3 training images"):
        create("knn", k=3).fit_closed_form(train[:2])


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_detector_ranks_noise_above_smooth_images_and_round_trips(name: str, tmp_path: Path) -> None:
    det = Detector(model=name, device="cpu", progress=False).fit(smooth_images(60, seed=0),
                                                                   checkpoint_path=tmp_path / "m.pt")
    assert det.n_train_images_ == 57 and det.n_val_images_ == 3 and det.threshold_ is not None
    assert len(det.history_) == 1  # one pass, whatever `epochs` says
    test = np.concatenate([smooth_images(10, seed=7), noise_images(10)])
    labels = np.r_[np.zeros(10), np.ones(10)]
    scores = det.decision_function(test)
    assert evaluate_scores(scores, labels, det.threshold_)["auroc"] > 0.95
    loaded = Detector.load(tmp_path / "m.pt", device="cpu")
    assert np.array_equal(loaded.decision_function(test), scores)
    # The fitted state is tensors only: the file loads with weights_only=True.
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_score_in_float32_under_autocast(name: str) -> None:
    """`--amp` runs scoring under bf16 autocast; a distance or residual must not be computed in bf16."""
    model = create(name)
    model.fit_closed_form(_unit(smooth_images(40, seed=0)))
    x = _unit(np.concatenate([smooth_images(4, seed=9), noise_images(4)]))
    plain = model.score(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = model.score(x)
    assert under_amp.dtype == torch.float32
    torch.testing.assert_close(under_amp, plain)
