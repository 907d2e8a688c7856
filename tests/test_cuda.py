"""The GPU paths: device auto-detection, data on the GPU, bf16 autocast, the fused Adam, scoring that
agrees with the CPU, checkpoints that move between devices, the speed benchmark.

Skipped where there is no CUDA device (CI); run them on a GPU machine with `pytest tests/test_cuda.py`
(`benchmarks/gpu_check.sh` does, and records the result).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.detector import Detector
from skipganomaly.models import create, get_model_class, list_models
from skipganomaly.throughput import bench_model
from skipganomaly.training import TrainConfig, batched_apply, resolve_device, train
from skipganomaly.training.loop import make_optimizers, train_step
from skipganomaly.training.optim import Adam
from skipganomaly.training.device import prepare_batch, to_device
from tests.conftest import SMALL_WIDTHS, blob_images, fast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(blob_images(n, seed=seed)).permute(0, 3, 1, 2).contiguous()


def _small(name: str) -> dict[str, object]:
    return {**fast(name), **({"widths": SMALL_WIDTHS} if name == "skipganomaly++" else {})}


def test_auto_picks_the_gpu() -> None:
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_class(n).trained_by_gradient])
def test_every_model_trains_on_the_gpu_under_bf16_autocast(name: str) -> None:
    """Under `--amp` (bf16 autocast) losses stay finite, every parameter gets a finite gradient, and
    the weights stay float32 on the GPU."""
    torch.manual_seed(0)
    model = to_device(create(name, **_small(name)), CUDA).train()
    config = TrainConfig(batch_size=8, device="cuda", progress=False, amp=True)
    x = prepare_batch(_images(8).to(CUDA), CUDA)
    opts = make_optimizers(model, config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        values = train_step(model, x, opts, config, CUDA)
        assert all(np.isfinite(v) for v in values.values()), values
    cache: dict[str, torch.Tensor] = {}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = []
        for phase in model.training_phases():
            step = phase.loss(x, cache)
            cache.update(step.cache)
            losses.append(step.loss)
    sum(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient on the GPU: {missing}"
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_keeps_data_on_the_gpu_and_scores_match_the_cpu() -> None:
    """A short run on the GPU (the default: float32, with cuDNN's TF32 convolutions); then the same
    weights score alike on both devices in float32 (TF32 off, so the GPU computes in full float32),
    nearly alike with TF32 and under bf16 autocast."""
    torch.manual_seed(0)
    model = create("skipganomaly++", widths=SMALL_WIDTHS)
    data = _images(40)
    history = train(model, data[:32], data[32:], TrainConfig(epochs=2, batch_size=8, device="cuda", progress=False))
    assert len(history) == 2 and all(np.isfinite(r.val_loss) for r in history)
    assert next(model.parameters()).device.type == "cuda"
    test = _images(24, seed=3)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        gpu = batched_apply(model.score, model, test, 16, CUDA, amp=False)
    gpu_tf32 = batched_apply(model.score, model, test, 16, CUDA)
    gpu_bf16 = batched_apply(model.score, model, test, 16, CUDA, amp=True)
    cpu_model = to_device(copy.deepcopy(model), torch.device("cpu"))
    cpu = batched_apply(cpu_model.score, cpu_model, test, 16, torch.device("cpu"))
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gpu_tf32, cpu, rtol=0.02, atol=1e-4)
    assert np.corrcoef(gpu_bf16.numpy(), cpu.numpy())[0, 1] > 0.99
    torch.testing.assert_close(gpu_bf16, cpu, rtol=0.05, atol=1e-3)


def test_fused_adam_on_the_gpu_equals_torch_fused_adam() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(288, 2)).to(CUDA)
    twin = copy.deepcopy(net)
    ours = Adam(net.parameters(), 1e-2, betas=(0.5, 0.999))
    theirs = torch.optim.Adam(twin.parameters(), 1e-2, betas=(0.5, 0.999), fused=True)
    for step in range(4):
        x = torch.randn(4, 3, 8, 8, device=CUDA, generator=torch.Generator(CUDA).manual_seed(step))
        for module, opt in ((net, ours), (twin, theirs)):
            opt.zero_grad(set_to_none=True)
            module(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_detector_fitted_on_the_gpu_loads_on_the_cpu(tmp_path: Path) -> None:
    """Checkpoints hold CPU tensors: a detector fitted on the GPU scores on a CPU-only machine, with
    scores close to the GPU's (TF32 convolutions there, float32 here) and the same stored threshold."""
    images = blob_images(48)
    det = Detector(model="skipganomaly++", epochs=1, batch_size=8, device="cuda", progress=False,
                   widths=SMALL_WIDTHS)
    det.fit(images)
    assert det.threshold_ is not None and next(det.model_.parameters()).device.type == "cuda"
    det.save(tmp_path / "det.pt")
    back = Detector.load(tmp_path / "det.pt", device="cpu", progress=False)
    assert back.threshold_ == det.threshold_
    gpu, cpu = det.decision_function(images[:16]), back.decision_function(images[:16])
    assert np.corrcoef(gpu, cpu)[0, 1] > 0.99
    np.testing.assert_allclose(gpu, cpu, rtol=0.05, atol=1e-3)


def test_resume_on_the_gpu_continues_the_run(tmp_path: Path) -> None:
    """Interrupted after epoch 1 and resumed: the run ends at epoch 2 with epoch 1's record kept."""
    data = _images(40)
    state = tmp_path / "state.pt"
    config = TrainConfig(epochs=1, batch_size=8, device="cuda", progress=False)
    first = train(create("ganomaly"), data[:32], data[32:], config, state_path=state)
    resumed = train(create("ganomaly"), data[:32], data[32:], TrainConfig(epochs=2, batch_size=8, device="cuda",
                                                                         progress=False),
                    state_path=state, resume=True)
    assert [r.epoch for r in resumed] == [1, 2]
    assert resumed[0].val_loss == first[0].val_loss and np.isfinite(resumed[1].val_loss)


def test_speed_benchmark_runs_on_the_gpu() -> None:
    row = bench_model("skipganomaly++", batch_size=8, steps=1, repeats=1, score_batch=8, onnx=True,
                      options={"widths": SMALL_WIDTHS}, amp=True, device="cuda")
    assert row["device"] == torch.cuda.get_device_name(0) and row["cuda_peak_memory_mb"] > 0
    assert "onnx_score_images_per_s" not in row  # onnxruntime is measured on the CPU only
    for key in ("train_images_per_s", "score_images_per_s", "amp_train_images_per_s", "peak_gflops"):
        assert row[key] > 0, key
