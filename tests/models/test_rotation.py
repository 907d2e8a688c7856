"""The transformation-prediction detector: its transformations, and a known answer."""

from __future__ import annotations

import numpy as np
import torch

from skipganomaly.detector import Detector
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.models import create
from skipganomaly.models.transforms import rotate, transform_all
from tests.conftest import noise_images


def test_rotations_are_torch_rot90_and_transform_major() -> None:
    x = torch.randn(3, 2, 8, 8)
    for k in range(4):
        assert torch.equal(rotate(x, k), torch.rot90(x, k, dims=(2, 3)))
    out = transform_all(x, flips=True)
    assert out.shape == (8 * 3, 2, 8, 8)
    assert torch.equal(out[3:6], torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(out[12:15], x.flip(3))


def test_score_is_the_summed_cross_entropy_of_the_true_transformations() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], flips=True, score="ce").eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = model(transform_all(x, True))
        target = torch.arange(8).repeat_interleave(3)
        expected = torch.nn.functional.cross_entropy(logits, target, reduction="none").view(8, 3).sum(0)
        torch.testing.assert_close(model.score(x), expected)


def _oriented(n: int, seed: int) -> np.ndarray:
    """Normals whose orientation is plain: bright at the top, dark at the bottom, with a little noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(230, 30, 32)[None, :, None, None]
    images = ramp + rng.normal(0, 10, (n, 32, 32, 3)) + rng.uniform(-20, 20, (n, 1, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8)


def test_rotation_detector_ranks_images_without_orientation_higher() -> None:
    det = Detector(model="rotation", widths=[8, 16], epochs=2, batch_size=16, lr=1e-3, device="cpu",
                   progress=False).fit(_oriented(64, 0))
    scores = det.decision_function(np.concatenate([_oriented(10, 1), noise_images(10)]))
    assert evaluate_scores(scores, np.r_[np.zeros(10), np.ones(10)], det.threshold_)["auroc"] > 0.9
    assert det.history_[-1]["losses"]["loss"] < det.history_[0]["losses"]["loss"]


def _varied(n: int, seed: int) -> torch.Tensor:
    """Images in [-1, 1] that differ in colour and layout, so that their features differ (plain noise
    gives an untrained network almost the same features for every image)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 32, 1)
    return ((torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * ramp * torch.rand(n, 1, 1, 32, generator=g)).clamp(-1, 1)


def test_knn_score_is_the_mean_cosine_distance_to_the_nearest_training_features() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], score="knn", k=3).eval()
    train, test = _varied(40, 0), _varied(5, 1)
    with torch.no_grad():
        model.fit_statistics(train)
        feats = {name: model._outputs(x)[1] for name, x in (("train", train), ("test", test))}
        bank = model.bank.float()
        torch.testing.assert_close(bank, feats["train"], atol=1e-3, rtol=0)  # float16 storage
        expected = (1 - feats["test"] @ bank.T).topk(3, dim=1, largest=False).values.mean(1)
        torch.testing.assert_close(model.score(test), expected)
        # on the training images themselves, the statistics leave each image out of its own neighbours
        own = (1 - feats["train"] @ bank.T).topk(4, dim=1, largest=False).values[:, 1:].mean(1)
        torch.testing.assert_close(model.score_stats[2:], torch.stack([own.mean(), own.std()]))
        model.score_name = "ce+knn"
        ce = model._outputs(test)[0]
        m_ce, s_ce, m_d, s_d = model.score_stats
        torch.testing.assert_close(model.score(test), (ce - m_ce) / s_ce + (expected - m_d) / s_d)


def test_feature_bank_is_fitted_by_the_loop_and_survives_save_and_load(tmp_path) -> None:
    det = Detector(model="rotation", widths=[8, 16], score="ce+knn", epochs=1, batch_size=16, device="cpu",
                   progress=False).fit(_oriented(48, 0))
    assert det.model_ is not None and det.model_.bank.shape == (det.n_train_images_, 16)
    det.save(tmp_path / "model.pt")
    loaded = Detector.load(tmp_path / "model.pt")
    x = np.concatenate([_oriented(4, 1), noise_images(4)])
    np.testing.assert_allclose(loaded.decision_function(x), det.decision_function(x), rtol=1e-5)
