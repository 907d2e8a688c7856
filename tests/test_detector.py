"""The public Detector API: fit / decision_function / predict / save / load, and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly import detector as detector_module, files as files_module
from skipganomaly.detector import FORMAT_VERSION, Detector
from skipganomaly.errors import CheckpointError, ConfigError, DataError, ModelError
from tests.conftest import SMALL_WIDTHS, blob_images, noise_images, smooth_images, write_images


# The paper's model, small, on the CPU: the detector tests' model (the default one is tested in tests/models).
PAPER_SMALL: dict[str, object] = {"model": "skipganomaly++", "in_channels": 3, "device": "cpu", "progress": False,
                                  "widths": SMALL_WIDTHS}


def _fit(tmp_path: Path | None = None, **kw: object) -> Detector:
    det = Detector(**PAPER_SMALL, epochs=2, batch_size=8, **kw)
    return det.fit(blob_images(40), checkpoint_path=None if tmp_path is None else tmp_path / "m.pt")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, Path]:
    path = tmp_path_factory.mktemp("det") / "model.pt"
    det = Detector(**PAPER_SMALL, epochs=3, batch_size=8, lr=2e-3)
    det.fit(blob_images(60), checkpoint_path=path)
    return det, path


def test_fit_sets_threshold_from_validation_normals(fitted: tuple[Detector, Path]) -> None:
    det, _ = fitted
    assert det.threshold_ is not None and np.isfinite(det.threshold_)
    assert len(det.val_scores_) == 3  # 5% of 60
    assert np.mean(det.val_scores_ > det.threshold_) <= 0.5
    assert len(det.history_) == 3


def test_threshold_is_the_quantile_of_held_out_normals_never_trained_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import skipganomaly.detector as detector_module

    images = smooth_images(60)
    seen: dict[str, torch.Tensor] = {}
    real_train = detector_module.train

    def spy(model, data, val, config, on_epoch_end, train_index, **kwargs):  # type: ignore[no-untyped-def]
        seen["train"], seen["val"] = data[train_index], val
        return real_train(model, data, val, config, on_epoch_end, train_index=train_index, **kwargs)

    monkeypatch.setattr(detector_module, "train", spy)
    det = Detector(**PAPER_SMALL, epochs=1, batch_size=8, contamination=0.1).fit(images)
    train_keys = {bytes(x.numpy()) for x in seen["train"]}
    assert len(seen["val"]) == 3 and len(seen["train"]) == 57 and (det.n_train_images_, det.n_val_images_) == (57, 3)
    assert not any(bytes(x.numpy()) in train_keys for x in seen["val"])
    val_scores = det.decision_function(seen["val"].permute(0, 2, 3, 1).numpy())
    assert det.threshold_ == pytest.approx(float(val_scores.max()), rel=1e-9)  # 3 held out: too few for a quantile


def test_val_fraction_zero_trains_on_every_image_without_a_threshold(tmp_path: Path) -> None:
    det = Detector(**PAPER_SMALL, epochs=1, batch_size=8, val_fraction=0.0).fit(smooth_images(20),
                                                                              checkpoint_path=tmp_path / "m.pt")
    assert (det.n_train_images_, det.n_val_images_) == (20, 0) and det.threshold_ is None
    assert np.isnan(det.history_[0]["val_loss"])
    with pytest.raises(CheckpointError, match="val_fraction=0"):
        Detector.load(tmp_path / "m.pt", device="cpu").predict(smooth_images(2))
    with pytest.raises(ConfigError, match="patience"):
        Detector(val_fraction=0.0, patience=2)


def test_scores_predict_and_maps(fitted: tuple[Detector, Path]) -> None:
    det, _ = fitted
    x = np.concatenate([blob_images(4, seed=9), noise_images(4)])
    scores = det.decision_function(x)
    assert scores.shape == (8,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert np.array_equal(det.predict(x), (scores > det.threshold_).astype(int))
    assert det.anomaly_maps(x).shape == (8, 32, 32)


def test_a_batch_size_below_one_is_a_config_error(fitted: tuple[Detector, Path]) -> None:
    det, _ = fitted
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="batch_size must be a whole number of at least 1"):
            det.decision_function(noise_images(2), batch_size=bad)


def test_scores_do_not_depend_on_batch_size(fitted: tuple[Detector, Path]) -> None:
    det, _ = fitted
    x = np.concatenate([blob_images(5, seed=9), noise_images(5)])
    np.testing.assert_allclose(det.decision_function(x, batch_size=3), det.decision_function(x, batch_size=10),
                               rtol=1e-4)


def test_save_load_round_trip_gives_identical_scores(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    det, path = fitted
    loaded = Detector.load(path, device="cpu")
    x = np.concatenate([blob_images(4, seed=9), noise_images(4)])
    assert np.array_equal(loaded.decision_function(x), det.decision_function(x))
    assert loaded.threshold_ == det.threshold_
    assert loaded.val_scores_ is not None and np.array_equal(loaded.val_scores_, det.val_scores_)  # what set it
    det.save(tmp_path / "again.pt")
    assert np.array_equal(Detector.load(tmp_path / "again.pt").decision_function(x), det.decision_function(x))
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_a_saved_detector_has_the_permissions_of_any_new_file(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    """Written through a private temporary file, it must still end readable as the umask allows (a model on a
    shared inspection server is loaded by colleagues and services), not 0600."""
    import os

    det, _ = fitted
    det.save(tmp_path / "shared.pt")
    umask = os.umask(0o022)
    os.umask(umask)
    # under the usual umask 022 that is 0644 (a private temporary file is 0600); under 077 it is 0600 anyway
    assert (tmp_path / "shared.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_checkpoint_holds_only_plain_data(fitted: tuple[Detector, Path]) -> None:
    _, path = fitted
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION and payload["model_name"] == "skipganomaly++"


def test_same_seed_same_scores() -> None:
    x = noise_images(3)
    a, b = _fit(), _fit()
    assert np.array_equal(a.decision_function(x), b.decision_function(x))


def test_channel_mismatch_is_a_data_error(fitted: tuple[Detector, Path]) -> None:
    det, _ = fitted
    with pytest.raises(DataError, match="in_channels=3"):
        det.decision_function(np.zeros((2, 32, 32), dtype=np.uint8))


def test_scoring_a_list_of_paths_keeps_row_i_for_path_i(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    """A score per path, in order: an unreadable file among them is an error naming it, never a shorter
    array whose scores would pair with the wrong paths."""
    det, _ = fitted
    paths = write_images(tmp_path, blob_images(4, seed=7))
    scores = det.decision_function(paths)
    assert np.allclose(scores, det.decision_function(blob_images(4, seed=7)), atol=1e-5)
    paths[1].write_text("not an image")
    for score in (det.decision_function, det.predict, det.anomaly_maps):
        with pytest.raises(DataError, match=r"1 of 4 image files could not be read \(.*img_001\.png\)"):
            score(paths)
    with pytest.raises(DataError, match="list of image paths"):
        det.decision_function(str(tmp_path))


def test_fit_takes_a_folder_and_skips_unreadable_files(tmp_path: Path) -> None:
    """Training order does not matter, so a folder (every image below it) is accepted and a bad file is
    skipped with a warning: the same detector as from the readable images' array."""
    write_images(tmp_path / "normals" / "sub", blob_images(40))
    (tmp_path / "normals" / "broken.png").write_text("not an image")
    from_folder = Detector(**PAPER_SMALL, epochs=1, batch_size=8).fit(tmp_path / "normals")
    from_array = Detector(**PAPER_SMALL, epochs=1, batch_size=8).fit(blob_images(40))
    x = noise_images(3)
    assert from_folder.n_train_images_ + from_folder.n_val_images_ == 40
    assert np.allclose(from_folder.decision_function(x), from_array.decision_function(x), atol=1e-5)
    with pytest.raises(DataError, match="folder not found"):
        Detector(**PAPER_SMALL).fit(tmp_path / "nowhere")


def test_a_threshold_from_too_few_held_out_images_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="skipganomaly"):
        _fit()  # 40 images, 5% held out: 2
    assert "threshold_ rests on 2 held-out normal images" in caplog.text and "19 or more" in caplog.text
    assert "about 33.3% of normal images exceed" in caplog.text  # 1 / (2 + 1): more than asked, and said so
    caplog.clear()
    with caplog.at_level("WARNING", logger="skipganomaly"):
        _fit(val_fraction=0.5)  # 20 held out: the 20th of 20 is the rank of a 95% quantile
    assert "threshold_ rests on" not in caplog.text


def test_scikit_learn_and_pyod_shorthands(fitted: tuple[Detector, Path]) -> None:
    det, _ = fitted
    x = noise_images(3)
    assert np.array_equal(det.score_samples(x), -det.decision_function(x))
    images = blob_images(40)
    assert np.array_equal(_fit().fit_predict(images), _fit().predict(images))


def test_set_params_on_a_fitted_detector_keeps_it_only_for_how_it_runs(caplog: pytest.LogCaptureFixture) -> None:
    """Weights trained under other settings would be saved under the new ones: a change to anything but
    device, progress or compile drops the fitted model, with a warning."""
    det = _fit()
    x = noise_images(2)
    before = det.decision_function(x)
    assert np.array_equal(det.set_params(device="cpu", progress=True).decision_function(x), before)
    with caplog.at_level("WARNING", logger="skipganomaly"):
        det.set_params(lr=1e-3, widths=[8, 8, 16, 16, 16])
    assert "set_params changed lr, widths: the fitted model is dropped" in caplog.text
    with pytest.raises(ConfigError, match="not fitted"):
        det.decision_function(x)
    assert det.threshold_ is None


def test_repr_names_the_model_and_only_the_changed_parameters() -> None:
    assert repr(Detector()) == "Detector('rotation')"
    assert repr(Detector("skipganomaly++", epochs=3, widths=[8, 16, 32])) == \
        "Detector('skipganomaly++', epochs=3, widths=[8, 16, 32])"


def test_constructor_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of 8"):
        Detector(image_size=30)
    with pytest.raises(ConfigError, match="unknown model"):
        Detector(model="ganomalyy")
    with pytest.raises(ConfigError, match="val_fraction"):
        Detector(val_fraction=1.0)
    with pytest.raises(ConfigError, match="not fitted"):
        Detector().decision_function(np.zeros((1, 32, 32, 3), dtype=np.uint8))


def test_a_k_larger_than_the_training_set_fails_before_the_first_epoch() -> None:
    """The kNN bank needs more than k images: said before training, not after the last epoch."""
    epochs: list[object] = []
    det = Detector(device="cpu", progress=False, epochs=1, batch_size=8, widths=[8, 16, 32], k=50)
    with pytest.raises(ConfigError, match="needs at least 51 training images, got 38"):
        det.fit(blob_images(40), on_epoch_end=epochs.append)
    assert epochs == []


def test_too_few_images_is_a_data_error_that_says_how_many_are_needed() -> None:
    with pytest.raises(DataError, match="too few .* needs at least 11 images"):  # 5% of 10 rounds to none held out
        Detector(device="cpu", progress=False).fit(blob_images(3))
    with pytest.raises(DataError, match="needs at least 4 images"):  # half held out, 2 left to train on
        Detector("pca", progress=False, val_fraction=0.5).fit(blob_images(3))


def test_another_model_drops_the_options_of_the_last_one_it_has_no_use_for(caplog: pytest.LogCaptureFixture) -> None:
    """A grid search over models sets model=... on a detector built with the first model's options."""
    det = Detector("rotation", widths=[8, 16, 32], k=3)
    with caplog.at_level("WARNING", logger="skipganomaly"):
        det.set_params(model="knn")
    assert det.settings.model_options == {"k": 3} and "has no option widths" in caplog.text
    with pytest.raises(ConfigError, match="no option 'widths'"):  # given with the new model: a mistake
        Detector("rotation").set_params(model="knn", widths=[8, 16, 32])


def test_a_run_directory_loads_as_its_checkpoint(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    det, path = fitted
    assert Detector.load(path.parent).threshold_ == det.threshold_  # the folder that holds model.pt
    with pytest.raises(CheckpointError, match="is a folder without a model.pt"):
        Detector.load(tmp_path)


def test_missing_truncated_and_foreign_checkpoints(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    _, path = fitted
    with pytest.raises(CheckpointError, match="not found"):
        Detector.load(tmp_path / "none.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable skipganomaly checkpoint .not a complete PyTorch file"):
        Detector.load(truncated)
    text = tmp_path / "scores.csv"
    text.write_text("path,score,label\n")
    with pytest.raises(CheckpointError, match="not a complete PyTorch file"):
        Detector.load(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"netG": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a skipganomaly detector"):
        Detector.load(foreign)
    with pytest.raises(CheckpointError, match="not 'ganomaly'"):
        Detector.load(path, expect_model="ganomaly")


def test_other_format_version_is_refused(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    _, path = fitted
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version"):
        Detector.load(tmp_path / "future.pt")


def test_weights_that_do_not_fit_are_refused(fitted: tuple[Detector, Path], tmp_path: Path) -> None:
    _, path = fitted
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["widths"] = [16, 32, 64, 128, 256]
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        Detector.load(tmp_path / "mismatch.pt")


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.pop("fit"), r"a field of this checkpoint is missing or of the wrong type \(KeyError: 'fit'\)"),
    (lambda p: p.update(threshold="0.5"), "its threshold is '0.5', not a finite number"),
    (lambda p: p.update(threshold=float("nan")), "its threshold is nan, not a finite number"),
    (lambda p: p["fit"].update(bit_depth="12"), "its bit depth is '12', not one of 8, 10, 12"),
])
def test_an_edited_checkpoint_is_one_line(fitted: tuple[Detector, Path], tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint edited by hand is a CheckpointError naming what is wrong, not a traceback, and a NaN threshold
    (which would flag nothing, silently) is refused."""
    _, path = fitted
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=message):
        Detector.load(tmp_path / "edited.pt")


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {_Exploit.marker}",))


def test_a_checkpoint_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = marker  # type: ignore[attr-defined]
    evil = tmp_path / "evil.pt"
    torch.save({"format": "skipganomaly-detector", "x": _Exploit()}, evil)
    with pytest.raises(CheckpointError):
        Detector.load(evil)
    assert not marker.exists()


def test_an_interrupted_run_keeps_its_last_epoch_without_a_threshold(tmp_path: Path) -> None:
    det = Detector(**PAPER_SMALL, epochs=3, batch_size=8)

    def stop_after_first_epoch(record: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        det.fit(blob_images(20), checkpoint_path=tmp_path / "m.pt", on_epoch_end=stop_after_first_epoch)
    loaded = Detector.load(tmp_path / "m.pt")
    assert len(loaded.history_) == 1 and loaded.threshold_ is None
    x = noise_images(2)
    assert np.isfinite(loaded.decision_function(x)).all()
    with pytest.raises(CheckpointError, match="did not finish"):
        loaded.predict(x)


@pytest.mark.parametrize("bad", [dict(amp="false"), dict(progress="no"), dict(epochs="2"), dict(epochs=1.5),
                                 dict(lr="1e-3"), dict(val_fraction="0.2"), dict(patience=1.5), dict(beta1=1.5),
                                 dict(seed=-1), dict(eval_batch_size=0), dict(compile=3), dict(model=3)])
def test_settings_of_the_wrong_type_or_range_are_one_line_errors_at_construction(bad: dict[str, object]) -> None:
    """`amp="false"` would be true and `epochs="2"` fail deep in training: each is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Detector(**{"model": "pca", **bad})


def test_numpy_scalars_from_a_grid_search_are_plain_settings_and_options() -> None:
    det = Detector("rotation", seed=np.int64(3), epochs=np.int64(2), lr=np.float64(1e-3), amp=np.bool_(False),
                   k=np.int64(4))
    params = det.get_params()
    assert (params["seed"], params["epochs"], params["amp"], params["k"]) == (3, 2, False, 4)
    assert type(params["seed"]) is int and type(params["k"]) is int


def test_fit_leaves_the_callers_random_stream_alone() -> None:
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    Detector("pca", progress=False, val_fraction=0.1).fit(blob_images(40))
    assert torch.equal(torch.rand(3), expected)


def test_scoring_reads_eval_batch_size_and_save_takes_a_folder(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from skipganomaly import detector as detector_module

    det = Detector("pca", progress=False, val_fraction=0.1, eval_batch_size=3).fit(blob_images(40))
    batches: list[int] = []
    real = detector_module.batched_apply
    monkeypatch.setattr(detector_module, "batched_apply",
                        lambda fn, model, data, batch, *a, **k: batches.append(batch) or real(fn, model, data, batch,
                                                                                               *a, **k))
    det.decision_function(blob_images(7))
    det.set_params(eval_batch_size=5).decision_function(blob_images(7))
    assert batches == [3, 5]
    det.save(tmp_path)  # a folder: its model.pt, where load looks
    assert Detector.load(tmp_path).threshold_ == det.threshold_ and (tmp_path / "model.pt").is_file()


def test_arrays_of_every_numeric_type_that_holds_0_to_255_are_images() -> None:
    det = Detector("pca", progress=False, val_fraction=0.1).fit(blob_images(40))
    x = blob_images(3)
    expected = det.decision_function(x)
    tensor = torch.from_numpy(x)
    for same in (x.astype(np.uint16), x.astype(">u2"), x.astype(np.uint32), tensor.to(torch.int32).to(torch.uint16),
                 [tensor[i].float().div(255).requires_grad_() for i in range(3)],  # a list of tensors needing grad
                 [x[0], x[1].astype(np.float32) / 255, x[2].astype(np.int64)]):  # a list of mixed types
        assert np.allclose(det.decision_function(same), expected, rtol=1e-5)
    mask = x > 128
    assert np.array_equal(det.decision_function(mask), det.decision_function(mask.astype(np.uint8) * 255))
    with pytest.raises(DataError, match="0..255, got uint16 values up to"):
        det.decision_function(x.astype(np.uint16) * 300)
    with pytest.raises(DataError, match="4 channels"):
        det.decision_function(np.zeros((2, 32, 32, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="must be numbers"):
        det.decision_function(np.array([[1, "a"]], dtype=object))


def test_fit_warns_when_y_labels_some_images_as_anomalies(caplog: pytest.LogCaptureFixture) -> None:
    """scikit-learn hands y to fit (GridSearchCV's default splits): a detector trains on every image it is given,
    so anomalies among them are named in a warning instead of silently learnt as normal."""
    import logging

    x = blob_images(12)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        for y in (np.zeros(12), np.ones(12, int) * -1 + 2, ["normal"] * 12, np.arange(12)):  # 0s; +1s; names; ids
            Detector("knn", image_size=32, progress=False, val_fraction=0.25).fit(x, y)
    assert "ignores y" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):  # scikit-learn's outliers: -1 among +1
        Detector("knn", image_size=32, progress=False, val_fraction=0.25).fit(x, np.r_[np.ones(10), -np.ones(2)])
    assert "the 2 labelled as anomalies" in caplog.text
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        Detector("knn", image_size=32, progress=False, val_fraction=0.25).fit(x, np.r_[np.zeros(9), np.ones(3)])
    assert "fit ignores y and trains on every image given as normal, the 3 labelled as anomalies" in caplog.text


def test_a_fitted_detector_is_ready_for_a_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a production service meets: a freshly fitted GAN scores in eval mode (threads switching it back to
    train mode changed its BatchNorm statistics for good); a failed set_params changes nothing; save("dir/") writes
    dir/model.pt; a file that cannot be written or read, or a batch size that is not a whole number, is one
    project error naming the file or the setting."""
    import sklearn.base

    det = Detector("ganomaly", image_size=32, epochs=1, batch_size=16, val_fraction=0.2, progress=False)
    det.fit(blob_images(40))
    assert not det.model_.training
    before = (det.get_params(), det.device)
    monkeypatch.setattr(detector_module, "resolve_device", lambda name: (_ for _ in ()).throw(ConfigError("no cuda")))
    with pytest.raises(ConfigError, match="no cuda"):
        det.set_params(device="cuda")
    monkeypatch.undo()
    assert (det.get_params(), det.device) == before and sklearn.base.clone(det).get_params() == before[0]
    det.save(f"{tmp_path / 'models'}/")
    assert (tmp_path / "models" / "model.pt").is_file()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CheckpointError, match=r"cannot write .*a-file/model\.pt: "):
        det.save(tmp_path / "a-file" / "model.pt")
    monkeypatch.setattr(files_module.os, "access", lambda path, mode: False)
    with pytest.raises(CheckpointError, match="cannot be read: permission denied"):
        Detector.load(tmp_path / "models" / "model.pt")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        det.decision_function(blob_images(2), batch_size=1.5)
    # another contamination moves the threshold within the held-out scores, keeping the weights
    from skipganomaly.evaluation.metrics import quantile_threshold

    weights = {k: v.clone() for k, v in det.model_.state_dict().items()}
    det.set_params(contamination=0.5)
    assert det.model_ is not None and det.threshold_ == quantile_threshold(det.val_scores_, 0.5) < max(det.val_scores_)
    assert all(torch.equal(v, det.model_.state_dict()[k]) for k, v in weights.items())
    # without a threshold, predict says so before a scoring pass
    det.threshold_ = None
    monkeypatch.setattr(det, "_apply", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored first")))
    with pytest.raises(CheckpointError, match="no threshold"):
        det.predict(blob_images(2))


def test_scores_that_break_the_contract_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN score would set a NaN threshold (flagging nothing) or pass as normal, and a score that is not one
    value per image would misalign with the images: each is a ModelError naming the model."""
    from skipganomaly.models.knn.model import Knn

    det = Detector("knn", k=2, progress=False).fit(smooth_images(30))
    images = smooth_images(6)
    real = Knn.score
    for broken, message in ((lambda self, x: real(self, x).masked_fill(torch.arange(len(x)) % 2 == 0, float("nan")),
                             "NaN or infinite"),
                            (lambda self, x: real(self, x).mean(), r"returned shape \(\) for \d+ images"),
                            (lambda self, x: x.flatten(), r"returned shape \(\d+,\) for \d+ images"),
                            (lambda self, x: real(self, x)[:, None], r"score returned shape \(1,\) per image")):
        monkeypatch.setattr(Knn, "score", broken)
        with pytest.raises(ModelError, match=f"model 'knn': .*{message}"):
            det.decision_function(images)
        with pytest.raises(ModelError, match=message):
            Detector("knn", k=2, progress=False).fit(smooth_images(30))
    monkeypatch.setattr(Knn, "score", real)
    assert np.isfinite(det.decision_function(images)).all()


def test_scikit_learn_outlier_labels_are_named_as_inverting_its_scorers(caplog: pytest.LogCaptureFixture) -> None:
    """roc_auc with +1 = normal, -1 = anomaly labels scores this detector 0 where it is perfect: fit says why,
    for normal-only splits of such labels (all +1) as for mixed ones; 0/1 labels and names say nothing."""
    import logging

    x = blob_images(12)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        for y in (np.zeros(12), ["normal"] * 12, np.arange(12), None):
            Detector("knn", image_size=32, progress=False, val_fraction=0.25).fit(x, y)
    assert "outlier labels" not in caplog.text
    for y, said in ((np.ones(12, int), "y is all 1s: scikit-learn's label of normal images (+1), or, in 0/1 labels, "
                                       "every image an anomaly"),
                    (np.r_[np.ones(10), -np.ones(2)], "y holds scikit-learn's outlier labels (+1 normal, -1 anomaly)")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="skipganomaly"):
            Detector("knn", image_size=32, progress=False, val_fraction=0.25).fit(x, y)
        assert said in caplog.text and "(y == -1).astype(int)" in caplog.text


def test_inputs_a_table_or_a_mask_gives(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Paths as a numpy array (a table's column) are paths; integer images that reach only 0..16 (a 0/1 mask,
    digits) are said to be nearly black; a float array past [0, 1] names its range; a detector loads with its
    saved progress setting unless told."""
    import logging

    det = Detector("knn", image_size=32, progress=False).fit(smooth_images(30))
    paths = write_images(tmp_path / "imgs", smooth_images(3))
    np.testing.assert_array_equal(det.decision_function(np.array([str(p) for p in paths])),
                                  det.decision_function([str(p) for p in paths]))
    np.testing.assert_array_equal(det.decision_function(np.array([str(p) for p in paths], dtype=object)),
                                  det.decision_function(list(map(str, paths))))
    mask = (smooth_images(4) > 128).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        det.decision_function(mask * 255)
        det.decision_function(np.zeros_like(mask))  # all black: a dark frame, not a scale
        det.decision_function([mask[0], mask[1] * 200, mask[2, :20, :20]])  # one dark image in a bright set
        assert "nearly black" not in caplog.text
        det.decision_function(mask)
    assert caplog.text.count("integer images are read as 0..255, and these reach only 1: nearly black") == 1
    overshoot = smooth_images(2) / 255.0
    overshoot[0, 0, 0] = 1.001  # after a resize, say
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\].*got [\d.e-]+ to 1\.001"):
        det.decision_function(overshoot)
    det.save(tmp_path / "d.pt")
    assert Detector.load(tmp_path / "d.pt").get_params()["progress"] is False
    assert Detector.load(tmp_path / "d.pt", progress=True).get_params()["progress"] is True


# --- a demanding notebook user's calls (an audit of the API) ----------------------------------------------------------
ROTATION_SMALL: dict[str, object] = {"widths": [8, 16, 32], "epochs": 1, "batch_size": 8, "device": "cpu",
                                     "progress": False}


def test_a_fit_that_fails_before_its_first_epoch_leaves_the_detector_as_it_was() -> None:
    from sklearn.exceptions import NotFittedError

    images = smooth_images(40)
    det = Detector(**ROTATION_SMALL).fit(images)
    before, threshold = det.decision_function(images[:4]), det.threshold_
    with pytest.raises(DataError, match="too few"):
        det.fit(images[:3])  # refused before training: the fitted detector is kept, not a fresh untrained one
    assert det.threshold_ == threshold and np.array_equal(det.decision_function(images[:4]), before)
    det.set_params(compile="no-such-backend")  # refused inside train(), after this fit began its own record
    with pytest.raises(ConfigError, match="unknown torch.compile backend"):
        det.fit(images)
    assert det.threshold_ == threshold and np.array_equal(det.decision_function(images[:4]), before)
    frames = (images[..., 0].astype(np.uint16) * 16)  # 12-bit frames: the depth is part of what fit sets
    deep = Detector("pca", in_channels=1, progress=False).fit(frames, bit_depth=12)
    deep_scores = deep.decision_function(frames[:3])
    with pytest.raises(DataError, match="too few"):
        deep.fit(images[:1, ..., 0])  # 8-bit, and too few: refused after reading them
    assert deep.bit_depth_ == 12 and np.array_equal(deep.decision_function(frames[:3]), deep_scores)
    fresh = Detector(**ROTATION_SMALL, compile="no-such-backend")
    with pytest.raises(ConfigError, match="unknown torch.compile backend 'no-such-backend'"):
        fresh.fit(images)
    with pytest.raises(NotFittedError):  # not an untrained network that scores
        fresh.decision_function(images[:2])


def test_set_params_keeps_the_fitted_model_where_nothing_that_scores_changes(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    images = smooth_images(40)
    det = Detector(**{**ROTATION_SMALL, "widths": (8, 16, 32)}).fit(images)
    det.save(tmp_path / "m.pt")
    loaded = Detector.load(tmp_path / "m.pt")  # its widths read back as a list
    knn = Detector("knn", progress=False).fit(images)
    scoreless = Detector("knn", progress=False, val_fraction=0.0).fit(images)
    with caplog.at_level("WARNING", logger="skipganomaly"):
        loaded.set_params(widths=(8, 16, 32))
        knn.set_params(k=5, epochs=3)  # its default k, and an epoch count it is not trained by
        scoreless.set_params(contamination=0.2)  # no threshold to move
    assert loaded.model_ is not None and knn.model_ is not None and scoreless.model_ is not None
    assert "dropped" not in caplog.text
    knn.set_params(k=3)
    assert knn.model_ is None and "set_params changed k: the fitted model is dropped" in caplog.text


def test_fit_into_a_folder_keeps_the_training_state_in_it_and_resume_needs_that_folder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    images = smooth_images(40)
    Detector(**ROTATION_SMALL).fit(images, checkpoint_path=folder)
    assert sorted(os.listdir(folder)) == ["model.pt", "model.state.pt"] and os.listdir(tmp_path) == ["run"]
    more = Detector(**{**ROTATION_SMALL, "epochs": 2}).fit(images, checkpoint_path=folder, resume=True)
    assert [r["epoch"] for r in more.history_] == [1, 2]
    with pytest.raises(ConfigError, match="resume=True continues from the training state saved beside checkpoint_path"):
        Detector(**ROTATION_SMALL).fit(images, resume=True)


def test_fit_and_maps_work_whatever_the_callers_torch_state() -> None:
    images = smooth_images(40)
    reference = Detector(**ROTATION_SMALL).fit(images).decision_function(images[:3])
    with torch.no_grad():
        assert np.allclose(Detector(**ROTATION_SMALL).fit(images).decision_function(images[:3]), reference)
    with torch.inference_mode():
        det = Detector(**ROTATION_SMALL).fit(torch.from_numpy(images))
        assert det.anomaly_maps(images[:2]).shape == (2, 32, 32)  # a saliency map needs gradients
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert np.allclose(Detector(**ROTATION_SMALL).fit(images).decision_function(images[:3]), reference)
        assert torch.get_default_dtype() == torch.float64  # the caller's setting is left as it was
    finally:
        torch.set_default_dtype(previous)


def test_fit_says_what_its_arguments_cannot_mean(caplog: pytest.LogCaptureFixture) -> None:
    images = smooth_images(40)
    with pytest.raises(DataError, match="y has 3 labels for 40 images"):
        Detector("pca", progress=False).fit(images, y=np.zeros(3))
    with pytest.raises(DataError, match="^1 image is too few to train on: that needs at least 2$"):
        Detector("pca", progress=False, val_fraction=0.0).fit(images[:1])
    with pytest.raises(DataError, match=r"^4 images are too few to hold out 5% .* needs at least 11 images \(at least 1 "
                                        r"held out, 2 to train on\); or set val_fraction \(--val-fraction\) to 0.13, "
                                        r"which holds out 1 of these"):
        Detector("pca", progress=False).fit(images[:4])
    Detector("pca", progress=False, val_fraction=0.13).fit(images[:4])  # the advice works
    with caplog.at_level("WARNING", logger="skipganomaly"):
        det = Detector("pca", progress=False, contamination=0.0).fit(images)
    assert det.threshold_ == det.val_scores_.max()
    assert "contamination 0: threshold_ is the largest of the 2 held-out normal scores, which about 33.3% of new " \
           "normal images exceed (1 in 3)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="skipganomaly"):  # fit_predict passes y on to fit's label check
        Detector("pca", progress=False).fit_predict(images, np.ones(40))
    assert "scikit-learn's label of normal images" in caplog.text
    assert Detector(widths=np.array([8, 16, 32])).get_params()["widths"] == [8, 16, 32]
    assert Detector(widths=[np.int64(8), 16, 32]).get_params()["widths"] == [8, 16, 32]
    with pytest.raises(DataError, match="file names among arrays"):
        Detector("pca", progress=False).fit(images).decision_function([images[0], "a.png"])


def test_an_unfinished_run_of_a_model_with_a_feature_bank_says_to_finish_it(tmp_path: Path) -> None:
    from skipganomaly.errors import StatisticsMissing

    def stop(record: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Detector(**{**ROTATION_SMALL, "epochs": 2}).fit(smooth_images(40), checkpoint_path=tmp_path, on_epoch_end=stop)
    with pytest.raises(StatisticsMissing, match=r"training did not finish \(1 of 2 epochs\): its rotation score "
                                                r".*skipganomaly train --resume RUN_DIR"):
        Detector.load(tmp_path).decision_function(smooth_images(2))
    pytest.importorskip("onnx")
    with pytest.raises(StatisticsMissing, match=r"training did not finish \(1 of 2 epochs\)"):  # nor be exported
        Detector.load(tmp_path).export_onnx(tmp_path / "m.onnx")
