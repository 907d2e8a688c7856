"""The transformation-prediction detector: its transformations, and a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skipganomaly.detector import Detector
from skipganomaly.errors import ConfigError
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.models import create
from skipganomaly.models.transforms import contrastive_loss, random_view, rotate, transform_all, translate
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
        bank = model.pooled_bank.rows.float()
        torch.testing.assert_close(bank, feats["train"], atol=1e-3, rtol=0)  # float16 storage
        expected = (1 - feats["test"] @ bank.T).topk(3, dim=1, largest=False).values.mean(1)
        torch.testing.assert_close(model.score(test), expected)
        # on the training images themselves, the statistics leave each image out of its own neighbours
        own = (1 - feats["train"] @ bank.T).topk(4, dim=1, largest=False).values[:, 1:].mean(1)
        torch.testing.assert_close(model.pooled_bank.stats, torch.stack([own.mean(), own.std()]))
        model.score_name = "ce+knn"
        ce = model._outputs(test)[0]
        (m_ce, s_ce), (m_d, s_d) = model.ce_stats, model.pooled_bank.stats
        torch.testing.assert_close(model.score(test), (ce - m_ce) / s_ce + (expected - m_d) / s_d)


def _block_maps(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The residual blocks' outputs, computed here layer by layer."""
    h, maps = model.stem(x), []
    for block in model.blocks:
        h = block(h)
        maps.append(h)
    return maps


def test_map_score_sums_standardised_distances_of_pooled_block_maps() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16, 16], score="map", map_layers=[2, 0], map_grid=2, k=3).eval()
    train, test = _varied(40, 0), _varied(5, 1)
    with torch.no_grad():
        model.fit_statistics(train)
        expected = torch.zeros(5)
        for bank, layer in zip(model.map_banks, [2, 0]):
            rows = [torch.nn.functional.adaptive_avg_pool2d(_block_maps(model, x)[layer], 2).flatten(1)
                    for x in (train, test)]
            rows = [r / r.norm(dim=1, keepdim=True) for r in rows]
            assert bank.rows.shape == (40, model.widths[layer] * 4)
            torch.testing.assert_close(bank.rows.float(), rows[0], atol=1e-3, rtol=0)
            own = (1 - rows[0] @ rows[0].T).topk(4, dim=1, largest=False).values[:, 1:].mean(1)
            dist = (1 - rows[1] @ bank.rows.float().T).topk(3, dim=1, largest=False).values.mean(1)
            expected += (dist - own.mean()) / own.std()
        torch.testing.assert_close(model.score(test), expected, atol=2e-3, rtol=1e-3)
        model.score_name = "ce+map"
        ce = model._outputs(test)[0]
        torch.testing.assert_close(model.score(test), (ce - model.ce_stats[0]) / model.ce_stats[1] + expected,
                                   atol=2e-3, rtol=1e-3)


def test_map_views_all_compares_each_rotated_copy_with_the_same_copy_of_the_normals() -> None:
    """map_views="all": a bank per (block, rotation), block-major, holding that rotation of the training
    normals; the map term averages the standardised distances over the rotations, sums over blocks."""
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16, 16], map_layers=[2, 0], map_grid=2, k=3, map_views="all").eval()
    train, test = _varied(40, 0), _varied(5, 1)
    with torch.no_grad():
        model.fit_statistics(train)
        assert len(model.map_banks) == 2 * 4
        per_block = []
        for b, layer in enumerate([2, 0]):
            terms = []
            for r in range(4):
                bank = model.map_banks[b * 4 + r]
                rows = [torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(
                    _block_maps(model, rotate(x, r))[layer], 2).flatten(1), dim=1) for x in (train, test)]
                torch.testing.assert_close(bank.rows.float(), rows[0], atol=1e-3, rtol=0)
                terms.append(bank.standardised(rows[1]))
            per_block.append(torch.stack(terms).mean(0))
        torch.testing.assert_close(model.score(test), sum(per_block), atol=2e-3, rtol=1e-3)
    with pytest.raises(ConfigError, match="map_views"):
        create("rotation", map_views="some")


def test_map_score_keeps_where_things_are() -> None:
    """Two images that differ only in where a bright square sits: global pooling of the identity block
    maps alike, the 2x2 map does not (the square's quadrant moves)."""
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], map_layers=[0], map_grid=2).eval()
    a = -torch.ones(2, 3, 32, 32)
    a[0, :, 2:10, 2:10] = 1.0
    a[1, :, 20:28, 20:28] = 1.0
    with torch.no_grad():
        cells = model._outputs(a)[2][0]
        flat = torch.nn.functional.normalize(_block_maps(model, a)[0].mean(dim=(2, 3)), dim=1)
    assert float(flat[0] @ flat[1]) > 0.99
    assert float(cells[0] @ cells[1]) < 0.95


def test_bad_map_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="map_layers"):
        create("rotation", widths=[8, 16], map_layers=[2])
    with pytest.raises(ConfigError, match="map_layers"):
        create("rotation", widths=[8, 16], map_layers=[-3])
    assert len(create("rotation", widths=[8, 16], map_layers=[1, -1]).map_banks) == 1  # the same block
    with pytest.raises(ConfigError, match="map_grid"):
        create("rotation", widths=[8, 16], map_layers=[1], map_grid=32)
    with pytest.raises(ConfigError, match="score must be"):
        create("rotation", score="ce+ce")
    for atoms in ("many", True, 0, 2.5):  # Python callers can pass anything, not only what the CLI parses
        with pytest.raises(ConfigError, match="patch_atoms"):
            create("rotation", patch_atoms=atoms)


def test_checkpoint_from_before_the_map_term_still_loads() -> None:
    """Those held the pooled bank as `bank` and the ce and knn statistics together in `score_stats`."""
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], score="ce+knn").eval()
    with torch.no_grad():
        model.fit_statistics(_varied(20, 0))
        old = {k: v for k, v in model.state_dict().items()
               if "bank" not in k and k != "ce_stats" and not k.startswith("patches.")}
        old["bank"] = model.pooled_bank.rows.clone()
        old["score_stats"] = torch.cat([model.ce_stats, model.pooled_bank.stats])
        fresh = create("rotation", widths=[8, 16], score="ce+knn").eval()
        fresh.load_state_dict(old)
        test = _varied(4, 1)
        torch.testing.assert_close(fresh.score(test), model.score(test))
        fresh.score_name = "map"
        with pytest.raises(ConfigError, match="no feature bank"):
            fresh.score(test)
        fresh.score_name = "ce+patch"
        with pytest.raises(ConfigError, match="patch term is fitted only"):
            fresh.score(test)


def test_feature_bank_is_fitted_by_the_loop_and_survives_save_and_load(tmp_path) -> None:
    det = Detector(model="rotation", widths=[8, 16], score="ce+knn", epochs=1, batch_size=16, device="cpu",
                   progress=False).fit(_oriented(48, 0))
    assert det.model_ is not None and det.model_.pooled_bank.rows.shape == (det.n_train_images_, 16)
    det.save(tmp_path / "model.pt")
    loaded = Detector.load(tmp_path / "model.pt")
    x = np.concatenate([_oriented(4, 1), noise_images(4)])
    np.testing.assert_allclose(loaded.decision_function(x), det.decision_function(x), rtol=1e-5)


def test_map_scored_detector_ranks_noise_above_held_out_normals_and_round_trips(tmp_path) -> None:
    det = Detector(model="rotation", widths=[8, 16], score="ce+map", epochs=1, batch_size=16, device="cpu",
                   progress=False).fit(_oriented(48, 0))
    x = np.concatenate([_oriented(10, 1), noise_images(10)])
    scores = det.decision_function(x)
    assert evaluate_scores(scores, np.r_[np.zeros(10), np.ones(10)], det.threshold_)["auroc"] > 0.9
    det.save(tmp_path / "model.pt")
    np.testing.assert_allclose(Detector.load(tmp_path / "model.pt").decision_function(x), scores, rtol=1e-5)


def test_score_terms_are_the_columns_every_composite_score_sums() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16]).eval()
    test = _varied(6, 1)
    with torch.no_grad():
        model.fit_statistics(_varied(30, 0))
        columns = model.score_terms(test)
        for score in ("ce+knn", "ce+map", "knn+map", "ce+knn+map", "map"):
            model.score_name = score
            picked = [model.TERMS.index(t) for t in score.split("+")]
            torch.testing.assert_close(model.score(test), columns[:, picked].sum(1))


def test_random_view_crops_mirrors_and_recolours_each_image_on_its_own() -> None:
    torch.manual_seed(0)
    x = _varied(32, 0)
    a, b = random_view(x), random_view(x)
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= -1 and a.max() <= 1
    per_image = (a - b).abs().flatten(1).mean(1)
    assert (per_image > 1e-3).all()  # two draws differ for every image
    torch.manual_seed(0)
    assert torch.equal(random_view(x), a)  # drawn from torch's generator: seeded runs repeat
    grey = random_view(x[:, :1])
    assert grey.shape == (32, 1, 32, 32)


def test_contrastive_loss_is_nt_xent() -> None:
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    flat = z.reshape(10, 8)
    sim = flat @ flat.T / 0.5
    expected = torch.stack([-(sim[i, (i + 5) % 10] - torch.logsumexp(torch.cat([sim[i, :i], sim[i, i + 1:]]), 0))
                            for i in range(10)]).mean()
    torch.testing.assert_close(contrastive_loss(z, 0.5), expected)
    aligned = torch.stack([z[0], z[0]])  # each view equal to its partner: the lowest loss of these rows
    assert contrastive_loss(aligned, 0.1) < contrastive_loss(z, 0.1)


def test_contrastive_training_reaches_every_parameter_and_logs_both_losses() -> None:
    torch.manual_seed(0)
    model = create("rotation", widths=[8, 16], contrastive=0.5)
    assert create("rotation", widths=[8, 16]).projection is None  # off by default: no extra parameters
    (phase,) = model.training_phases()
    step = phase.loss(_varied(6, 1), {})
    step.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    torch.testing.assert_close(step.loss.detach(), step.logs["transformation"] + 0.5 * step.logs["contrastive"])
    with pytest.raises(ConfigError, match="contrastive"):
        create("rotation", contrastive=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        create("rotation", contrastive=1.0, temperature=0.0)


def test_translate_moves_each_image_on_its_own_and_reflects_the_border() -> None:
    x = torch.randn(3, 2, 8, 8)
    out = translate(x, torch.tensor([2, 1, 0]), torch.tensor([1, 1, 2]), 2)
    assert torch.equal(out[1], x[1])  # (1, 1): not moved
    assert torch.equal(out[0, :, :, 2:], x[0, :, :, :-2])  # two pixels to the right
    assert torch.equal(out[0, :, :, :2], x[0, :, :, 1:3].flip(-1))  # the uncovered columns reflected
    assert torch.equal(out[2, :, 2:, :-2], x[2, :, :-2, 2:])  # two down and two to the left
    assert torch.equal(out[2, :, :2, :-2], x[2, :, 1:3, 2:].flip(-2))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast pads in float32: the result keeps x's dtype
        moved = translate(x.bfloat16(), torch.tensor([2, 1, 0]), torch.tensor([1, 1, 2]), 2)
    assert moved.dtype == torch.bfloat16 and torch.equal(moved, out.bfloat16())


def test_translation_training_reads_each_copy_s_move_and_reaches_every_parameter() -> None:
    model = create("rotation", widths=[8, 16], translations=True)
    assert create("rotation", widths=[8, 16]).translation_head is None  # off by default: no extra parameters
    x = _varied(5, 2)
    torch.manual_seed(0)
    step = model.training_phases()[0].loss(x, {})
    step.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # the same draw, written per copy: every one of the 4 rotated copies of image i carries image i's move
    torch.manual_seed(0)
    ix, iy = torch.randint(0, 3, (2, 5))
    with torch.no_grad():
        copies = torch.cat([rotate(translate(x, ix, iy, 8), k) for k in range(4)])
        h = model.pooled(copies)
        moves = model.translation_head(h)
        expected = sum(torch.nn.functional.cross_entropy(moves[5 * k + i: 5 * k + i + 1, :3], ix[i:i + 1])
                       + torch.nn.functional.cross_entropy(moves[5 * k + i: 5 * k + i + 1, 3:], iy[i:i + 1])
                       for k in range(4) for i in range(5)) / 20
        rot = model.head(h).log_softmax(1).view(4, 5, 4).diagonal(dim1=0, dim2=2).sum(1).neg().mean() / 4
    torch.testing.assert_close(step.logs["translation"], expected / 2)
    torch.testing.assert_close(step.logs["transformation"], rot)
    torch.testing.assert_close(step.loss.detach(), (rot + expected) / 3)
    # with contrastive views as well: each view is moved, and the contrastive term is added
    both = create("rotation", widths=[8, 16], translations=True, contrastive=0.5)
    step = both.training_phases()[0].loss(x, {})
    assert set(step.logs) == {"transformation", "translation", "contrastive"}
    torch.testing.assert_close(step.loss.detach(), (step.logs["transformation"] + 2 * step.logs["translation"]) / 3
                               + 0.5 * step.logs["contrastive"])


def _roughness(maps: torch.Tensor) -> float:
    """Mean difference between neighbouring pixels, relative to the mean: a checkerboard scores high."""
    dx = (maps[:, :, 1:] - maps[:, :, :-1]).abs().mean()
    dy = (maps[:, 1:] - maps[:, :-1]).abs().mean()
    return float((dx + dy) / maps.mean())


def test_the_saliency_map_is_a_smoothed_gradient_not_a_checkerboard() -> None:
    """The raw input gradient of the strided network alternates from pixel to pixel; the anomaly map is
    that gradient smoothed (it keeps its total and where it is, and loses the alternation)."""
    from skipganomaly.models.base import SALIENCY_SIGMA, gaussian_blur

    torch.manual_seed(0)
    model = create("rotation", in_channels=1, widths=[8, 16, 32], score="ce").eval()
    x = torch.from_numpy(noise_images(2, channels=1)).permute(0, 3, 1, 2).float() / 127.5 - 1
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.score(xg).sum(), xg)
    raw = grad.abs().mean(1)
    smooth = model.anomaly_map(x)
    assert torch.allclose(smooth, gaussian_blur(raw, SALIENCY_SIGMA), atol=1e-6)
    assert _roughness(smooth) < 0.3 * _roughness(raw)
    checkerboard = ((torch.arange(32)[:, None] + torch.arange(32)) % 2).float()[None]
    assert gaussian_blur(checkerboard, SALIENCY_SIGMA).std() < 1e-3
    delta = torch.zeros(1, 32, 32)
    delta[0, 10, 20] = 1.0
    blurred = gaussian_blur(delta, SALIENCY_SIGMA)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and int(blurred.argmax()) == 10 * 32 + 20
