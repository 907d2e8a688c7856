"""ONNX export agrees with PyTorch; the speed benchmark runs at a tiny size (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.cli import main
from skipganomaly.errors import ConfigError
from skipganomaly.models import create, list_models
from skipganomaly.onnx_export import OnnxScorer, export_onnx
from skipganomaly.speed import bench_model, count_flops, machine_peak
from skipganomaly.training import batched_apply
from tests.conftest import blob_images, fast, noise_images

EXPORTABLE = [n for n in list_models() if create(n, **fast(n)).exportable]


@pytest.mark.parametrize("name", EXPORTABLE)
@pytest.mark.parametrize("channels", [1, 3])
def test_onnx_scores_match_pytorch(name: str, channels: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create(name, in_channels=channels).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    images = torch.from_numpy(np.concatenate([blob_images(5, channels=channels), noise_images(4, channels=channels)]))
    images = images.permute(0, 3, 1, 2).contiguous()
    expected = batched_apply(model.score, model, images, 4, torch.device("cpu")).double().numpy()
    got = OnnxScorer(path).score(images, batch_size=3)  # another batch size than the export's
    np.testing.assert_allclose(got, expected, rtol=1e-4)


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
    assert machine_peak(repeats=1)["peak_gflops"] > 0


def test_bench_speed_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    assert main(["bench-speed", "--models", "anogan", "--batch-size", "4", "--score-batch", "4", "--steps", "1",
                 "--repeats", "1", "--model-arg", "anogan:search_steps=2", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["models"][0]["model"] == "anogan" and "onnx_score_images_per_s" not in saved["models"][0]
    assert saved["peak"]["peak_gflops"] > 0 and saved["environment"]["torch"].startswith("2.13")
