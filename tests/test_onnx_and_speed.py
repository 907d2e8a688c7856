"""ONNX export agrees with PyTorch; the speed benchmark runs at a tiny size (timings are not asserted)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.cli import main
from skipganomaly.errors import CheckpointError, ConfigError
from skipganomaly.models import create, list_models
from skipganomaly.onnx_export import SCORE_RTOL, SCORE_SPREAD_TOL, OnnxScorer, export_onnx
from skipganomaly.throughput import (_median_seconds, bench_model, count_flops, reference_optimizers,
                                reference_style_score, reference_style_step, speed_line)
from skipganomaly.training import TrainConfig, batched_apply, make_optimizers, prepare_batch, to_device, train_step
from tests.conftest import SMALL_WIDTHS, blob_images, fast, noise_images

EXPORTABLE = [n for n in list_models() if create(n, **fast(n)).exportable]


@pytest.mark.parametrize("name", EXPORTABLE)
@pytest.mark.parametrize("channels", [1, 3])
def test_onnx_scores_match_pytorch(name: str, channels: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create(name, in_channels=channels).eval()
    images = torch.from_numpy(np.concatenate([blob_images(5, channels=channels), noise_images(4, channels=channels)]))
    images = images.permute(0, 3, 1, 2).contiguous()
    train = prepare_batch(torch.from_numpy(blob_images(30, channels=channels, seed=3)).permute(0, 3, 1, 2),
                          torch.device("cpu"))
    with torch.no_grad():
        if not model.trained_by_gradient:
            model.fit_closed_form(train)
        if model.fits_statistics:
            model.fit_statistics(train)
    path = export_onnx(model, tmp_path / "m.onnx")
    # the file holds the model's tensors as stored (a kNN bank stays uint8, a feature bank float16), not copies
    # cast to float32 at export (8x a CIFAR-10 kNN's checkpoint, past ONNX's 2 GiB limit at 45,000 images)
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert path.stat().st_size <= 1.1 * stored + 100_000, (path.stat().st_size, stored)
    expected = batched_apply(model.score, model, images, 4, torch.device("cpu")).double().numpy()
    scorer = OnnxScorer(path)
    got = scorer.score(images, batch_size=3)  # another batch size than the export's
    # what a user holds: a channels-last uint8 numpy array, or floats in [0, 1]
    np.testing.assert_array_equal(scorer.score(images.permute(0, 2, 3, 1).numpy(), batch_size=3), got)
    np.testing.assert_allclose(scorer.score(images.numpy() / 255.0), got, rtol=1e-5, atol=1e-6)
    # to 1e-4 relative, or to a thousandth of the scores' spread (what a ranking can notice), whichever is
    # looser: a standardised score (rotation's ce+knn) turns float32 rounding into larger absolute numbers
    np.testing.assert_allclose(got, expected, rtol=SCORE_RTOL, atol=SCORE_SPREAD_TOL * float(np.std(expected)))


def test_anogan_refuses_export(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be exported"):
        export_onnx(create("anogan"), tmp_path / "a.onnx")


def test_flop_counter_counts_a_conv() -> None:
    x, w = torch.randn(2, 4, 8, 8), torch.randn(5, 4, 3, 3)
    assert count_flops(lambda: torch.nn.functional.conv2d(x, w, padding=1)) == 2 * 2 * 5 * 4 * 9 * 64


def test_bench_model_reports_every_field() -> None:
    row = bench_model("ganomaly", batch_size=4, steps=1, repeats=1, score_batch=4, onnx=True)
    for key in ("train_images_per_s", "train_gflop_per_image", "score_images_per_s", "onnx_score_images_per_s",
                "peak_rss_mb"):
        assert row[key] > 0, key
    peak = row["peak_kernels_gflops"]
    assert peak["peak_gflops"] == max(peak["matmul_gflops"], peak["conv_gflops"]) > 0 and peak["bf16_matmul_gflops"] > 0
    assert row["fraction_of_peak"] == pytest.approx(row["train_achieved_gflops"] / peak["peak_gflops"])


def test_bench_model_times_the_default_model_whose_score_needs_a_feature_bank() -> None:
    """The default model's score reads a bank of training features: bench-speed fits it on the timed
    images (it failed with 'no feature bank yet', so the README's `--models all` stopped at once)."""
    row = bench_model("rotation", batch_size=4, steps=1, repeats=1, score_batch=8, onnx=True,
                      options={"widths": [8, 16, 32]})
    assert row["score_images_per_s"] > 0 and row["onnx_score_images_per_s"] > 0
    assert row["score_bank_images"] == 8  # said beside the rate: a real run's bank holds every training image
    assert "against a bank of 8 training images" in speed_line(row)
    assert "the median of 1 timings after one warm-up (1 training steps each)" in row["method"]


def test_bench_model_times_bf16_autocast_when_asked() -> None:
    row = bench_model("skipganomaly++", batch_size=4, steps=1, repeats=1, score_batch=4, onnx=False,
                      options={"widths": SMALL_WIDTHS}, amp=True)
    for key in ("amp_train_images_per_s", "amp_score_images_per_s", "amp_train_achieved_gflops"):
        assert row[key] > 0, key
    assert "amp_train_images_per_s" not in bench_model("skipganomaly++", batch_size=4, steps=1, repeats=1,
                                                       score_batch=4, onnx=False, options={"widths": SMALL_WIDTHS})


def test_bench_speed_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    assert main(["bench-speed", "--models", "anogan", "--batch-size", "4", "--score-batch", "4", "--steps", "1",
                 "--repeats", "1", "--model-arg", "anogan:search_steps=2", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["models"][0]["model"] == "anogan" and "onnx_score_images_per_s" not in saved["models"][0]
    assert saved["models"][0]["peak_gflops"] > 0 and saved["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize("detach_latent", [False, True])
def test_fast_step_and_score_equal_the_reference_style_computation(detach_latent: bool) -> None:
    """The fast path (D frozen in G's step, centre-tap dilations, linear D head, channels-last) must
    give the weights and scores the reference's way of computing gives. In float64: Adam's first steps
    normalise each gradient, so rounding noise in the gradients of conv biases that feed a BatchNorm
    (mathematically zero) becomes updates of up to ~2e-7 here; one real Adam step moves a weight by
    up to lr = 2e-4, so 1e-6 still catches any real difference."""
    torch.manual_seed(0)
    fast_model = create("skipganomaly++", widths=SMALL_WIDTHS, detach_latent=detach_latent).double()
    slow_model = copy.deepcopy(fast_model)
    images = torch.from_numpy(blob_images(8)).permute(0, 3, 1, 2).contiguous()
    device = torch.device("cpu")
    config = TrainConfig(batch_size=8, device="cpu", progress=False)
    to_device(fast_model, device).train()
    slow_model.train()
    x_fast = prepare_batch(images, device).double()
    x_slow = x_fast.contiguous()
    opts_fast, opts_slow = make_optimizers(fast_model, config), reference_optimizers(slow_model, config)
    for _ in range(2):
        train_step(fast_model, x_fast, opts_fast, config, device)
        reference_style_step(slow_model, x_slow, opts_slow["generator"], opts_slow["discriminator"])
    for (name, a), b in zip(fast_model.state_dict().items(), slow_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    fast_model.eval()
    slow_model.eval()
    torch.testing.assert_close(fast_model.score(x_fast), reference_style_score(slow_model, x_slow), rtol=1e-6, atol=0)


def test_reference_style_comparison_reports_speedups() -> None:
    row = bench_model("skipganomaly++", batch_size=4, steps=1, repeats=1, score_batch=4, onnx=False,
                      options={"widths": SMALL_WIDTHS}, reference_style=True)
    for key in ("reference_style_train_images_per_s", "reference_style_score_images_per_s", "train_speedup",
                "score_speedup", "reference_style_train_gflop_per_image"):
        assert row[key] > 0, key
    # The reference computes the full 3x3 taps and D's gradients in G's step: more FLOPs, not fewer.
    assert row["reference_style_train_gflop_per_image"] > row["train_gflop_per_image"]
    with pytest.raises(ConfigError, match="skip family"):
        bench_model("ganomaly", batch_size=4, steps=1, repeats=1, score_batch=4, onnx=False, reference_style=True)


def test_timing_waits_for_queued_device_work() -> None:
    """On a GPU the host clock must stop only after the device has finished: sync runs after every call."""
    events: list[str] = []
    times = _median_seconds(lambda: events.append("a"), lambda: events.append("b"), repeats=2, warmup=0,
                            sync=lambda: events.append("sync"))
    assert len(times) == 2 and events == ["sync", "a", "sync", "sync", "b", "sync"] * 2


def test_bench_speed_on_an_absent_gpu_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench-speed", "--models", "ganomaly", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bench_speed_refuses_a_folder_as_out_before_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from skipganomaly import throughput

    def measured(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured before --out was checked")

    monkeypatch.setattr(throughput, "measure_models", measured)
    assert main(["bench-speed", "--models", "ganomaly", "--out", str(tmp_path)]) == 2
    assert "is a folder; give the JSON file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_export_command_writes_a_file_that_predicts_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`skipganomaly export` of a trained run: the ONNX file carries the threshold (and model name), so
    OnnxScorer alone labels images as the detector does; a folder as --out is refused in one line."""
    from skipganomaly import Detector
    from tests.conftest import write_images

    write_images(tmp_path / "train", blob_images(40))
    run = tmp_path / "run"
    assert main(["train", "--model", "pca", "--data", str(tmp_path / "train"), "--out", str(run), "--val-fraction",
                 "0.5", "--no-progress", "--device", "cpu"]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path)]) == 2
    assert "is a folder; give the ONNX file to write" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    scorer, det = OnnxScorer(tmp_path / "m.onnx"), Detector.load(run)
    assert (scorer.model_name, scorer.threshold_) == ("pca", det.threshold_)
    images = np.concatenate([blob_images(6, seed=7), noise_images(6)])
    assert np.array_equal(scorer.predict(images), det.predict(images)) and scorer.predict(images)[6:].all()
    from skipganomaly.errors import CheckpointError, ConfigError

    (tmp_path / "junk.onnx").write_text("not onnx")  # every failure one project error, naming the file
    for path, message in ((tmp_path / "none.onnx", "ONNX file not found"),
                          (tmp_path / "junk.onnx", "is not a readable ONNX")):
        with pytest.raises(CheckpointError, match=message):
            OnnxScorer(path)
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        scorer.score(images, batch_size=0)
    with pytest.raises(CheckpointError, match=r"cannot write .*junk\.onnx/m\.onnx: "):  # under a file: not a folder
        det.export_onnx(tmp_path / "junk.onnx" / "m.onnx")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    bare = OnnxScorer(export_onnx(det.model_, tmp_path / "bare.onnx"))  # a model alone has no threshold
    with pytest.raises(CheckpointError, match="no threshold"):  # as Detector.predict without one
        bare.predict(images)
    before = (run / "model.pt").read_bytes()
    assert main(["export", "--checkpoint", str(run), "--out", str(run / "model.pt")]) == 2  # the detector stays
    assert "is the model.pt of the run in" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == before
    with pytest.raises(CheckpointError, match="is a folder; give the ONNX file"):
        OnnxScorer(tmp_path)
    unthresholded = Detector("pca", progress=False, val_fraction=0.0).fit(blob_images(20))
    unthresholded.save(tmp_path / "vf0.pt")  # the CLI exports it as the API does: scores only, said
    assert main(["export", "--checkpoint", str(tmp_path / "vf0.pt"), "--out", str(tmp_path / "vf0.onnx")]) == 0
    assert "(pca, no threshold: scores only)" in capsys.readouterr().out


def test_an_onnx_file_says_how_to_prepare_its_input_and_refuses_what_is_not_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A service with only the .onnx file learns the input scale, channels, resizing and score direction from its
    metadata and doc string; plain onnxruntime fed as described gives OnnxScorer's scores. Files that are not a
    skipganomaly export (another graph, damaged metadata, a checkpoint) and bad arguments are one clear error."""
    import logging

    import onnx
    import onnxruntime as ort
    from PIL import Image

    from skipganomaly import Detector
    from skipganomaly.errors import CheckpointError

    det = Detector("pca", val_fraction=0.5, progress=False).fit(blob_images(40))
    path = det.export_onnx(tmp_path / "m.onnx")
    graph = onnx.load(str(path))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert "pixel / 127.5 - 1" in meta["skipganomaly.input"] and "RGB" in meta["skipganomaly.input"]
    assert "higher = more anomalous" in meta["skipganomaly.score"] and meta["skipganomaly.version"]
    assert "stretched" in graph.doc_string
    picture = tmp_path / "p.png"
    Image.fromarray(noise_images(1)[0]).resize((48, 40)).save(picture)
    as_described = np.asarray(Image.open(picture).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    plain = ort.InferenceSession(str(path)).run(["scores"], {"images": (as_described.transpose(2, 0, 1)[None]
                                                                        .astype(np.float32) / 127.5 - 1)})[0]
    assert plain[0] == pytest.approx(OnnxScorer(path).score([picture])[0], rel=1e-5)

    for key, value in (("skipganomaly.threshold", "nan"), ("skipganomaly.bit_depth", "x")):
        damaged = onnx.load(str(path))
        next(p for p in damaged.metadata_props if p.key == key).value = value
        onnx.save(damaged, str(tmp_path / "damaged.onnx"))
        with pytest.raises(CheckpointError, match="damaged metadata"):
            OnnxScorer(tmp_path / "damaged.onnx")
    foreign = onnx.load(str(path))
    foreign.graph.input[0].name = "input"
    for node in foreign.graph.node:
        node.input[:] = ["input" if name == "images" else name for name in node.input]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(CheckpointError, match="not a skipganomaly export"):
        OnnxScorer(tmp_path / "foreign.onnx")
    det.save(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="is a zip file .*Detector.load"):
        OnnxScorer(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="is an ONNX export, not a detector checkpoint"):
        Detector.load(path)
    for threads in (1.5, "2", 0, -1, True):
        with pytest.raises(ConfigError, match="threads must be a whole number"):
            OnnxScorer(path, threads=threads)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="finite"):
        export_onnx(det.model_, tmp_path / "nan.onnx", threshold=float("nan"))
    with pytest.raises(ConfigError, match="is a folder; give the ONNX file"):
        det.export_onnx(f"{tmp_path / 'newdir'}/")
    assert not (tmp_path / "newdir").exists()
    with pytest.raises(CheckpointError, match="m.onnx is a file, not a folder"):
        det.export_onnx(f"{path}/")
    with pytest.raises(Exception, match="grayscale \\+ alpha"):
        OnnxScorer(path).score(np.zeros((2, 32, 32, 2), np.uint8))
    det.threshold_ = None  # as an unfinished run's detector
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        det.export_onnx(tmp_path / "unfinished.onnx")
    assert "exported without a threshold (an unfinished training run)" in caplog.text
    with pytest.raises(CheckpointError, match="unfinished training run"):
        OnnxScorer(tmp_path / "unfinished.onnx").predict(blob_images(2))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no private export folder left


def test_onnx_scoring_batches_keep_pixels_per_batch_constant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 128 px the default batch is 4 images (the detector's on a CPU), not 256: memory stays flat."""
    model = create("pca", image_size=128).eval()
    train = prepare_batch(torch.from_numpy(blob_images(10, size=128, seed=3)).permute(0, 3, 1, 2), torch.device("cpu"))
    model.fit_closed_form(train)
    scorer = OnnxScorer(export_onnx(model, tmp_path / "m.onnx"))
    seen: list[int] = []
    real = scorer.session.run
    monkeypatch.setattr(scorer.session, "run", lambda out, feed: seen.append(len(feed["images"])) or real(out, feed))
    scorer.score(blob_images(9, size=128))
    assert seen == [4, 4, 1]


def test_onnx_scorer_warns_of_files_unlike_the_training_files_as_the_detector_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from PIL import Image

    from skipganomaly import Detector
    from tests.conftest import write_images

    pytest.importorskip("onnxruntime")
    write_images(tmp_path / "train", blob_images(30))
    det = Detector("pca", progress=False).fit(tmp_path / "train")
    scorer = OnnxScorer(det.export_onnx(tmp_path / "m.onnx"))
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((32, 96, 3), np.uint8)).save(strip)
    for score in (det.decision_function, scorer.score):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="skipganomaly"):
            score([str(strip)])
        assert "shaped unlike the training images (32x32)" in caplog.text


def test_an_onnx_scorer_pickles_with_its_export_and_refuses_a_changed_file(tmp_path: Path) -> None:
    """A scorer sent to a worker process (pickled) carries the export's bytes and scores as the original does; a
    file changed since it was opened is refused rather than sent."""
    import pickle

    from skipganomaly import Detector

    pytest.importorskip("onnxruntime")
    images = blob_images(30)
    det = Detector("pca", progress=False).fit(images)
    path = det.export_onnx(tmp_path / "m.onnx")
    scorer = OnnxScorer(path, threads=1)
    copy = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(copy.score(images[:5]), scorer.score(images[:5]))
    assert copy.threshold_ == scorer.threshold_ and copy.predict(images[:5]).tolist() == scorer.predict(images[:5]).tolist()
    again = pickle.loads(pickle.dumps(copy))  # a copy of a copy: from the bytes it holds
    np.testing.assert_array_equal(again.score(images[:5]), scorer.score(images[:5]))
    Detector("pca", progress=False).fit(images[::-1]).export_onnx(path)  # replaced under the open scorer
    with pytest.raises(CheckpointError, match="changed since this scorer opened it"):
        pickle.dumps(scorer)
