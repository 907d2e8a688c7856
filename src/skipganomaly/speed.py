"""Speed benchmark: training and scoring throughput per model, FLOPs, and how close to the machine's peak.

Each model is measured in a fresh process (so its peak RSS is its own), with the medians of repeated
timings after warm-up. The machine's peak is measured in the same run (a 2048^3 fp32 matmul and a large
3x3 convolution), so the ratio compares like with like. Timings are reported, never asserted.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .models import create
from .training import TrainConfig, batched_apply, make_optimizers, prepare_batch, to_device, train_step


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def machine_peak(repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a 2048^3 fp32 matmul and of a large 3x3 convolution on this machine, now."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / _median_seconds(lambda: a @ b, repeats) / 1e9
    x, w = torch.randn(64, 256, 16, 16), torch.randn(256, 256, 3, 3)
    conv_flops = count_flops(lambda: F.conv2d(x, w, padding=1))
    conv = conv_flops / _median_seconds(lambda: F.conv2d(x, w, padding=1), repeats) / 1e9
    return {"matmul_gflops": matmul, "conv_gflops": conv, "peak_gflops": max(matmul, conv)}


def bench_model(name: str, batch_size: int = 64, steps: int = 3, repeats: int = 3, score_batch: int = 256,
                onnx: bool = True, options: dict[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Training and scoring throughput of one model at 3x32x32 on the CPU."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = to_device(create(name, **(options or {})), device)
    config = TrainConfig(batch_size=batch_size, device="cpu", progress=False)
    opt_g, opt_d = make_optimizers(model, config)
    images = torch.randint(0, 256, (max(batch_size, score_batch), 3, 32, 32), dtype=torch.uint8)
    x = prepare_batch(images[:batch_size], device)
    model.train()

    def run_steps() -> None:
        for _ in range(steps):
            train_step(model, x, opt_g, opt_d, config, device)

    train_flops = count_flops(lambda: train_step(model, x, opt_g, opt_d, config, device)) / batch_size
    train_s = _median_seconds(run_steps, repeats) / steps
    to_score = images[:score_batch]
    score_flops = count_flops(lambda: batched_apply(model.score, model, to_score[:8], 8, device)) / 8
    score_s = _median_seconds(lambda: batched_apply(model.score, model, to_score, score_batch, device), repeats)
    train_ips = batch_size / train_s
    result: dict[str, Any] = {
        "model": name, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": train_ips, "train_gflop_per_image": train_flops / 1e9,
        "train_achieved_gflops": train_ips * train_flops / 1e9,
        "score_batch": score_batch, "score_images_per_s": score_batch / score_s,
        "score_gflop_per_image": score_flops / 1e9,
    }
    if onnx and model.exportable:
        from .onnx_export import OnnxScorer, export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            scorer = OnnxScorer(export_onnx(model, Path(tmp) / "model.onnx"), threads=torch.get_num_threads())
            onnx_s = _median_seconds(lambda: scorer.score(to_score, score_batch), repeats)
        result["onnx_score_images_per_s"] = score_batch / onnx_s
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run(models: list[str], threads: int, isolate: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Measure the peak, then each model (in its own process unless `isolate=False`)."""
    torch.set_num_threads(threads)
    peak = machine_peak(max(kwargs.get("repeats", 3), 2))
    rows = []
    for name in models:
        if isolate:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                row = pool.submit(bench_model, name, threads=threads, **kwargs).result()
        else:
            row = bench_model(name, threads=threads, **kwargs)
        row["fraction_of_peak"] = row["train_achieved_gflops"] / peak["peak_gflops"]
        rows.append(row)
    return {"peak": peak, "torch": torch.__version__, "threads": threads, "models": rows}
