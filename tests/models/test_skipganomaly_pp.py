"""Skip-GANomaly++ networks against the reference layer table (spec sections A and B)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skipganomaly.errors import ConfigError
from skipganomaly.models import create
from tests.conftest import count
from skipganomaly.models.skip_family import BasicDiscriminator
from skipganomaly.models.skipganomaly_pp.networks import ASPP, DilatedConv3x3, ResUNetPPGenerator


def test_parameter_counts_match_reference() -> None:
    model = create("skipganomaly++")
    assert count(model.generator) == 4_063_027
    assert count(model.discriminator) == 1_069_700


def test_block_parameter_counts_match_layer_table() -> None:
    g = ResUNetPPGenerator()
    assert count(g.stem) == 2_960
    assert count(g.enc1) == 14_848
    assert count(g.bridge) == 1_248_512
    assert count(g.dec1) == 1_891_712
    assert count(g.dec1.attention) == 1_329_024
    assert count(g.head) == 18_896


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_forward_shapes(channels: int, size: int) -> None:
    model = create("skipganomaly++", in_channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    assert model(x).shape == x.shape
    prob, feat = model.discriminator(x)
    assert prob.shape == (2,) and feat.shape == (2, 100, 1, 1)
    assert ((prob > 0) & (prob < 1)).all()
    model.eval()
    with torch.no_grad():
        assert model.score(x).shape == (2,)
        assert model.anomaly_map(x).shape == (2, size, size)


def test_128_pixels_and_custom_widths() -> None:
    model = create("skipganomaly++", in_channels=1, image_size=128, widths=[8, 8, 16, 16, 32])
    x = torch.randn(2, 1, 128, 128)
    assert model(x).shape == x.shape
    assert model.discriminator(x)[1].shape == (2, 100, 1, 1)


@pytest.mark.parametrize("size", [36, 24, 0])
def test_bad_image_size_is_a_clear_error(size: int) -> None:
    with pytest.raises(ConfigError, match="multiple of 8"):
        create("skipganomaly++", image_size=size)


def test_bad_channels_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        create("skipganomaly++", in_channels=2)


def test_centre_tap_shortcut_equals_full_dilated_conv() -> None:
    torch.manual_seed(0)
    conv = DilatedConv3x3(5, 7, dilation=6)
    x = torch.randn(3, 5, 4, 4)
    full = F.conv2d(x, conv.weight, conv.bias, padding=6, dilation=6)
    torch.testing.assert_close(conv(x), full)
    # Where the dilation does not reach past the map, the full conv is used.
    x8 = torch.randn(3, 5, 8, 8)
    torch.testing.assert_close(conv(x8), F.conv2d(x8, conv.weight, conv.bias, padding=6, dilation=6))


def test_aspp_on_bridge_matches_plain_convolutions() -> None:
    torch.manual_seed(0)
    aspp = ASPP(8, 12).eval()
    x = torch.randn(2, 8, 4, 4)
    expected = sum(
        b[1](F.conv2d(x, b[0].weight, b[0].bias, padding=b[0].dilation, dilation=b[0].dilation))
        for b in aspp.branches
    )
    torch.testing.assert_close(aspp(x), aspp.project(expected))


def test_classifier_linear_form_equals_3x3_conv_on_1x1_map() -> None:
    torch.manual_seed(0)
    d = BasicDiscriminator()
    x = torch.randn(4, 3, 32, 32)
    logit, feat = d.classify(x)
    torch.testing.assert_close(logit, d.classifier(feat).flatten())


def test_paper_model_has_no_rotation_head_so_its_checkpoints_are_unchanged() -> None:
    assert not any("rotation" in k for k in create("skipganomaly++").state_dict())
    with pytest.raises(ConfigError, match="rotation_weight"):
        create("skipganomaly++", score="rotation")


def test_rotation_variant_trains_its_head_in_d_and_scores_with_it() -> None:
    from skipganomaly.models.base import real_fake_bce
    from skipganomaly.models.transforms import transform_all

    torch.manual_seed(0)
    model = create("skipganomaly++rot", widths=[4, 8, 8, 16, 16], ndf=8, rotation_weight=2.0, score="rotation")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    step = model.generator_loss(x)
    loss, reset_value = model.discriminator_loss(x, step.cache)
    logits = model.discriminator.rotation_logits(transform_all(x, False))
    ce = F.cross_entropy(logits, torch.arange(4).repeat_interleave(4), reduction="none").view(4, 4).sum(0)
    adv = real_fake_bce(step.cache["logit_real"], model.discriminator.classify(step.cache["fake"])[0])
    torch.testing.assert_close(loss, adv + 2.0 * ce.mean() / 4)
    torch.testing.assert_close(reset_value, adv.detach())  # the reset rule watches the real/fake loss alone
    model.eval()
    with torch.no_grad():
        logits = model.discriminator.rotation_logits(transform_all(x, False))
        ce = F.cross_entropy(logits, torch.arange(4).repeat_interleave(4), reduction="none").view(4, 4).sum(0)
        torch.testing.assert_close(model.score(x), ce)


def test_discriminator_stage_maps_are_its_activations_in_order() -> None:
    d = create("skipganomaly++rot", widths=[4, 8, 8, 16, 16], ndf=8).discriminator.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        first = d.features[:2](x)  # conv, LeakyReLU: 8 channels at 16x16
        second = d.features[2:5](first)  # conv, BN, LeakyReLU: 16 at 8x8
        maps = d.stage_maps(x, [1, 0])
    assert d.n_stages == 3
    torch.testing.assert_close(maps[0], second)
    torch.testing.assert_close(maps[1], first)


def test_map_score_is_the_standardised_distance_of_d_feature_maps_to_the_training_normals() -> None:
    torch.manual_seed(0)
    model = create("skipganomaly++rot", widths=[4, 8, 8, 16, 16], ndf=8, score="rotation+map", map_layers=[1],
                   map_grid=2, k=3).eval()
    assert model.fits_statistics and not create("skipganomaly++rot", score="rotation").fits_statistics
    train, test = torch.rand(30, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        model.discriminator.rotation_head.weight *= 1000  # an untrained head's cross-entropies barely differ
        model.fit_statistics(train)
        rows = [F.normalize(F.adaptive_avg_pool2d(model.discriminator.features[:5](x), 2).flatten(1), dim=1)
                for x in (train, test)]
        bank = model.map_banks[0].rows.float()  # float16 storage
        torch.testing.assert_close(bank, rows[0], atol=1e-3, rtol=0)
        own = (1 - rows[0] @ bank.T).topk(4, dim=1, largest=False).values[:, 1:].mean(1)
        dist = (1 - rows[1] @ bank.T).topk(3, dim=1, largest=False).values.mean(1)
        feature_term = (dist - own.mean()) / own.std()
        model.score_name = "map"
        torch.testing.assert_close(model.score(test), feature_term, atol=2e-3, rtol=1e-3)
        rot_train, rot = model.rotation_cross_entropy(train), model.rotation_cross_entropy(test)
        model.score_name = "rotation+map"
        torch.testing.assert_close(model.score(test), (rot - rot_train.mean()) / rot_train.std() + feature_term,
                                   atol=2e-3, rtol=1e-3)


def test_map_score_needs_banks_and_the_paper_model_has_none() -> None:
    model = create("skipganomaly++").eval()
    assert not any("bank" in k or "stats" in k for k in model.state_dict())
    model.score_name = "map"
    with pytest.raises(ConfigError, match="without feature banks"):
        model.score(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="rotation_weight"):
        create("skipganomaly++", score="rotation+map")
    with pytest.raises(ConfigError, match="map_layers"):
        create("skipganomaly++", score="map", map_layers=[3])
    with pytest.raises(ConfigError, match="map_grid"):
        create("skipganomaly++", score="map", map_layers=[2], map_grid=8)


def test_map_scored_detector_ranks_noise_above_smooth_images_and_round_trips(tmp_path) -> None:
    import numpy as np

    from skipganomaly.detector import Detector
    from skipganomaly.evaluation.metrics import evaluate_scores
    from tests.conftest import noise_images, smooth_images

    det = Detector(model="skipganomaly++rot", widths=[4, 8, 8, 16, 16], ndf=8, score="rotation+map", epochs=1,
                   batch_size=16, device="cpu", progress=False).fit(smooth_images(48, seed=0))
    assert det.model_ is not None and [len(b.rows) for b in det.model_.map_banks] == [det.n_train_images_] * 2
    x = np.concatenate([smooth_images(10, seed=5), noise_images(10)])
    scores = det.decision_function(x)
    assert evaluate_scores(scores, np.r_[np.zeros(10), np.ones(10)], det.threshold_)["auroc"] > 0.9
    det.save(tmp_path / "model.pt")
    np.testing.assert_allclose(Detector.load(tmp_path / "model.pt").decision_function(x), scores, rtol=1e-5)


def _masked(**options):
    torch.manual_seed(0)
    return create("skipganomaly++", widths=[4, 8, 8, 16, 16], ndf=8, mask_grid=4, **options)


def test_masked_inpainting_sets_cover_every_cell_once_and_the_paper_model_has_none() -> None:
    assert not any("mask" in k for k in create("skipganomaly++").state_dict())
    partition = _masked(mask_sets=3).mask_partition
    assert partition.shape == (4, 4)
    assert sorted(torch.bincount(partition.flatten()).tolist()) == [5, 5, 6]  # disjoint, all sets non-empty
    assert torch.equal(partition, _masked(mask_sets=3).mask_partition)  # fixed: scores do not vary between builds


def test_masked_reconstruction_of_a_cell_never_sees_that_cell() -> None:
    """Each pixel is inpainted from the others, so changing one cell's pixels leaves its reconstruction
    there unchanged (and G alone, unmasked, would change it)."""
    model = _masked(mask_sets=2).eval()
    for module in model.generator.modules():  # PyTorch's default init: outputs of order 1, not the DCGAN init's ~1e-8
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, 8:16, 16:24] = torch.rand(3, 3, 8, 8) * 2 - 1  # the cell at row 1, column 2
    with torch.no_grad():
        rx, ry = model.reconstruct(x), model.reconstruct(y)
        gx, gy = model.generator(x), model.generator(y)
    torch.testing.assert_close(rx[:, :, 8:16, 16:24], ry[:, :, 8:16, 16:24])
    assert (gx - gy)[:, :, 8:16, 16:24].abs().max() > 1e-2  # G alone copies the changed cell through
    other = (model.mask_partition != model.mask_partition[1, 2]).nonzero()[0].tolist()  # a cell of another set
    rows, cols = slice(8 * other[0], 8 * other[0] + 8), slice(8 * other[1], 8 * other[1] + 8)
    assert (rx - ry)[:, :, rows, cols].abs().max() > 1e-2  # cells of other sets are inpainted from it
    # the paper score and the validation loss are computed on the inpainted image, per image
    with torch.no_grad():
        torch.testing.assert_close(model.validation_loss(x), (rx - x).abs().flatten(1).mean(1))
        torch.testing.assert_close(model.score(x[:1]), model.score(x)[:1])


def test_masked_training_blanks_whole_cells_at_the_rate_of_one_set() -> None:
    model = _masked(mask_sets=4)
    seen = []
    model.generator.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    x = torch.rand(256, 3, 32, 32) * 0.9 + 0.05  # no pixel is 0 unless blanked
    model.generator_loss(x)
    cells = (seen[0] == 0).float().unflatten(2, (4, 8)).unflatten(4, (4, 8))  # [B, C, 4, 8, 4, 8]
    per_cell = cells.mean((1, 3, 5))
    assert set(per_cell.unique().tolist()) <= {0.0, 1.0}  # a cell is blanked whole or not at all
    assert abs(per_cell.mean().item() - 0.25) < 0.03
    kept = per_cell == 0
    torch.testing.assert_close(seen[0].unflatten(2, (4, 8)).unflatten(4, (4, 8)).permute(0, 2, 4, 1, 3, 5)[kept],
                               x.unflatten(2, (4, 8)).unflatten(4, (4, 8)).permute(0, 2, 4, 1, 3, 5)[kept])


@pytest.mark.parametrize("options, match", [({"mask_grid": 5}, "mask_grid"), ({"mask_grid": 1}, "mask_grid"),
                                            ({"mask_grid": 4, "mask_sets": 1}, "mask_sets"),
                                            ({"mask_grid": 2, "mask_sets": 5}, "mask_sets"),
                                            ({"mask_grid": "four"}, "mask_grid"), ({"mask_grid": True}, "mask_grid"),
                                            ({"mask_grid": 4, "mask_sets": "3"}, "mask_sets")])
def test_bad_mask_options_name_themselves(options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        create("skipganomaly++", **options)


def test_masked_detector_round_trips(tmp_path) -> None:
    import numpy as np

    from skipganomaly.detector import Detector
    from tests.conftest import smooth_images

    det = Detector(model="skipganomaly++", widths=[4, 8, 8, 16, 16], ndf=8, mask_grid=4, epochs=1, batch_size=16,
                   device="cpu", progress=False).fit(smooth_images(32, seed=0))
    x = smooth_images(6, seed=5)
    scores = det.decision_function(x)
    det.save(tmp_path / "model.pt")
    loaded = Detector.load(tmp_path / "model.pt")
    assert loaded.get_params()["mask_grid"] == 4
    np.testing.assert_allclose(loaded.decision_function(x), scores, rtol=1e-5)


def test_masked_score_exports_to_onnx(tmp_path) -> None:
    import numpy as np

    from skipganomaly.onnx_export import OnnxScorer, export_onnx

    from skipganomaly.training import batched_apply

    model = _masked().eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = batched_apply(model.score, model, images, 4, torch.device("cpu")).double().numpy()
    got = OnnxScorer(export_onnx(model, tmp_path / "m.onnx")).score(images, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * float(np.std(expected)))
