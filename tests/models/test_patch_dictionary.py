"""The patch dictionary (Coates et al. 2011 single-layer features) and the rotation model's `patch` term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skipganomaly.detector import Detector
from skipganomaly.errors import ConfigError
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.models import create
from skipganomaly.models.neighbours import FeatureBank
from skipganomaly.models.patch_dictionary import CONTRAST_EPS, WHITEN_EPS, PatchDictionary
from tests.conftest import noise_images, smooth_images


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(smooth_images(n, seed=seed)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.mark.parametrize("patch", [5, 6])  # 28 positions per side, split evenly; 27, split 13 / 14
def test_encoding_is_the_triangle_activation_of_whitened_patches_averaged_per_region(patch: int) -> None:
    torch.manual_seed(0)
    enc = PatchDictionary(3, 32, atoms=7, patch=patch, grid=2, samples=400, iterations=3)
    enc.fit(_images(20, 0))
    x = _images(2, 1)
    side = 32 - patch + 1
    expected = torch.zeros(2, 7, side, side)
    for b in range(2):
        for i in range(side):
            for j in range(side):
                p = ((x[b, :, i:i + patch, j:j + patch] + 1) * 127.5).flatten()  # channel-major, as unfold
                p = (p - p.mean()) / torch.sqrt(p.var() + CONTRAST_EPS)
                z = ((p - enc.centre) @ enc.whiten - enc.centroids).norm(dim=1)
                expected[b, :, i, j] = (z.mean() - z).clamp_min(0)
    h = side // 2
    regions = [expected[:, :, :h, :h], expected[:, :, :h, h:], expected[:, :, h:, :h], expected[:, :, h:, h:]]
    pooled = torch.stack([r.mean((2, 3)) for r in regions], -1).flatten(1)  # atom-major, then the 2 x 2 regions
    torch.testing.assert_close(enc(x), (pooled - enc.feature_mean) / enc.feature_std, rtol=1e-3, atol=1e-3)


def test_whitening_is_zca_of_the_normalised_patches() -> None:
    """With every patch of a small set used, whiten = (C + eps I)^(-1/2) for their covariance C (symmetric: ZCA)."""
    torch.manual_seed(0)
    x = _images(4, 0)
    enc = PatchDictionary(3, 32, atoms=5, samples=10_000)  # 4 x 729 patches < samples: every one
    enc.fit(x)
    u = enc._normalised_patches(x).flatten(0, 1).double()
    cov = torch.cov((u - u.mean(0)).T)
    torch.testing.assert_close(enc.centre.double(), u.mean(0), rtol=1e-4, atol=1e-4)
    product = enc.whiten.double() @ (cov + WHITEN_EPS * torch.eye(len(cov), dtype=torch.float64)) @ enc.whiten.double()
    torch.testing.assert_close(product, torch.eye(len(cov), dtype=torch.float64), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(enc.whiten, enc.whiten.T)


def test_fit_standardises_the_training_features_and_repeats_under_a_seed() -> None:
    x = _images(30, 0)
    torch.manual_seed(3)
    a = PatchDictionary(3, 32, atoms=5, samples=300)
    feats = a.fit(x)
    torch.testing.assert_close(feats, a(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats.mean(0), torch.zeros(a.dim), atol=1e-4, rtol=0)
    spread = feats.std(0)
    varies = a.feature_std > 1e-3  # a feature constant on the normals keeps its floor
    torch.testing.assert_close(spread[varies], torch.ones(int(varies.sum())), atol=1e-3, rtol=0)
    torch.manual_seed(3)
    b = PatchDictionary(3, 32, atoms=5, samples=300)
    b.fit(x)
    assert torch.equal(a.centroids, b.centroids)


def test_euclidean_bank_is_the_mean_distance_to_the_k_nearest_rows() -> None:
    g = torch.Generator().manual_seed(0)
    rows, query = torch.randn(40, 6, generator=g), torch.randn(5, 6, generator=g)
    bank = FeatureBank(6, k=3, metric="euclidean")
    bank.fit(rows)
    expected = torch.cdist(query, rows.half().float()).topk(3, largest=False).values.mean(1)
    torch.testing.assert_close(bank.distance(query), expected, rtol=1e-4, atol=1e-4)
    own = torch.cdist(rows, rows.half().float()).topk(4, largest=False).values[:, 1:].mean(1)
    torch.testing.assert_close(bank.stats, torch.stack([own.mean(), own.std()]), rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="metric"):
        FeatureBank(6, 3, metric="manhattan")


def test_patch_term_ranks_noise_above_held_out_normals_and_round_trips(tmp_path) -> None:
    det = Detector(model="rotation", widths=[8, 16], score="map+patch", patch_atoms=16, epochs=1, batch_size=16,
                   device="cpu", progress=False).fit(smooth_images(96, seed=0))
    model = det.model_
    assert model is not None and model.patch_bank.rows.shape == (det.n_train_images_, 4 * 16)
    x = np.concatenate([smooth_images(10, seed=1), noise_images(10)])
    scores = det.decision_function(x)
    torch.manual_seed(0)
    with torch.no_grad():
        columns = model.score_terms(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)
    patch = columns[:, model.TERMS.index("patch")].numpy()
    assert evaluate_scores(patch, np.r_[np.zeros(10), np.ones(10)], 0.0)["auroc"] > 0.9
    det.save(tmp_path / "model.pt")
    np.testing.assert_allclose(Detector.load(tmp_path / "model.pt").decision_function(x), scores, rtol=1e-5)


def test_patch_term_is_fitted_only_for_a_score_that_uses_it() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], patch_atoms=8).eval()  # score "map"
    x = _images(20, 0)
    with torch.no_grad():
        model.fit_statistics(x)
        assert len(model.patch_bank.rows) == 0
        assert torch.isnan(model.score_terms(x[:3])[:, model.TERMS.index("patch")]).all()
        model.score_name = "map+patch"
        with pytest.raises(ConfigError, match="patch"):
            model.score(x[:3])


@pytest.mark.parametrize("kw", [{"atoms": 0}, {"patch": 40}, {"grid": 30}, {"samples": 3, "atoms": 5}])
def test_bad_patch_dictionary_options_are_config_errors(kw: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        PatchDictionary(3, 32, **{"atoms": 5, **kw})


def test_patch_term_exports_to_onnx(tmp_path) -> None:
    from skipganomaly.onnx_export import OnnxScorer, export_onnx
    from skipganomaly.training import batched_apply

    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], score="patch", patch_atoms=8).eval()
    with torch.no_grad():
        model.fit_statistics(_images(40, 0))
    images = torch.from_numpy(np.concatenate([smooth_images(5, seed=1), noise_images(4)])).permute(0, 3, 1, 2)
    expected = batched_apply(model.score, model, images.contiguous(), 4, torch.device("cpu")).double().numpy()
    got = OnnxScorer(export_onnx(model, tmp_path / "m.onnx")).score(images.contiguous(), batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * float(np.std(expected)))


def test_too_few_patches_for_the_atoms_is_a_config_error() -> None:
    enc = PatchDictionary(1, 32, atoms=60, patch=30, samples=100)  # 2 images x 9 positions = 18 patches
    with pytest.raises(ConfigError, match="at least 60 patches"):
        enc.fit(torch.zeros(2, 1, 32, 32))


def test_patch_saliency_map_is_finite_where_a_query_sits_on_a_training_normal() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], score="patch", patch_atoms=8).eval()
    x = _images(20, 0)
    with torch.no_grad():
        model.fit_statistics(x)
    saliency = model.anomaly_map(x[:3])  # each is in the bank: distance 0 to its own row
    assert saliency.shape == (3, 32, 32) and torch.isfinite(saliency).all()



@pytest.mark.parametrize("atoms", [0, 2.5, True])
def test_bad_patch_atoms_is_a_config_error_naming_the_option(atoms: object) -> None:
    with pytest.raises(ConfigError, match="patch_atoms"):
        create("rotation", patch_atoms=atoms)
