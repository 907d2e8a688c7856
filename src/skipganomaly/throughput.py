"""Speed benchmark: training and scoring throughput per model, FLOPs, and how close to the machine's peak.

Each model is measured in a fresh process (so its peak RSS is its own), with the medians of repeated
timings after warm-up. The machine's peak is measured in the same run, in turns with the training steps
(an fp32 matmul and a large 3x3 convolution; see `peak_kernels`), so the ratio compares like with like.
On a GPU, every timing waits for the device to finish. Timings are reported, never asserted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .models import create
from .models.skip_family import SkipFamilyModel
from .models.skipganomaly_pp.networks import DilatedConv3x3
from .training import (TrainConfig, batched_apply, compile_blocks, make_optimizers, prepare_batch, resolve_device,
                       to_device, train_step)
from .training.device import native_bf16
from .training.loop import fit_statistics
from .training.optim import Adam


def _median_seconds(*fns: Callable[[], object], repeats: int, warmup: int = 1,
                    sync: Callable[[], None] = lambda: None) -> list[float]:
    """Median seconds per call of each function, timed in turns (A, B, A, B, ...) so that a machine
    whose speed drifts during the run slows every contender alike and their ratio stays fair.
    `sync` waits for queued device work (torch.cuda.synchronize), which a host clock cannot see."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_kernels(device: str | torch.device = "cpu") -> dict[str, tuple[Callable[[], object], int]]:
    """The kernels that define this machine's peak, with their FLOPs: an fp32 matmul (2048^3 on CPUs,
    8192^3 on GPUs, which 2048 cannot fill), a large 3x3 convolution, and the matmul in bf16 (the ceiling
    for `--amp`; far above fp32 on CPUs with AMX and on GPUs; 512^3 on CPUs that emulate bf16, where
    2048^3 takes seconds per call and measures only the emulation)."""
    device = torch.device(device)
    n, maps = (8192, 64) if device.type == "cuda" else (2048, 16)
    n16 = n if device.type != "cpu" or native_bf16(device) else 512
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a16, b16 = a[:n16, :n16].bfloat16(), b[:n16, :n16].bfloat16()
    x, w = torch.randn(64, 256, maps, maps, device=device), torch.randn(256, 256, 3, 3, device=device)
    return {"matmul_gflops": (lambda: a @ b, 2 * n**3),
            "conv_gflops": (lambda: F.conv2d(x, w, padding=1), count_flops(lambda: F.conv2d(x, w, padding=1))),
            "bf16_matmul_gflops": (lambda: a16 @ b16, 2 * n16**3)}


def _peak_from(seconds: dict[str, float], kernels: dict[str, tuple[Callable[[], object], int]]) -> dict[str, float]:
    rates = {name: kernels[name][1] / t / 1e9 for name, t in seconds.items()}
    return {**rates, "peak_gflops": max(rates["matmul_gflops"], rates["conv_gflops"])}


@contextlib.contextmanager
def _full_dilations(model: nn.Module) -> Iterator[None]:
    """Run every dilated conv as the full 3x3 conv the reference computes (padding taps included)."""
    convs = [m for m in model.modules() if isinstance(m, DilatedConv3x3)]
    for conv in convs:
        conv.forward = nn.Conv2d.forward.__get__(conv)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward


def _reference_d(model: SkipFamilyModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """D as the reference runs it: features, then the 3x3 head on the 1x1 map, then a sigmoid."""
    feat = model.discriminator.features(x)
    return model.discriminator.classifier(feat).reshape(-1).sigmoid(), feat


def reference_style_step(model: SkipFamilyModel, x: Tensor, opt_g: Adam | torch.optim.Optimizer,
                         opt_d: Adam | torch.optim.Optimizer) -> None:
    """One training step computed the way the reference code does (spec C), for a same-run comparison.

    D is not frozen during G's backward (its gradients are computed, then discarded), dilated convs
    and D's head run as full 3x3 convolutions, tensors stay in the default NCHW layout, and the G
    graph is retained for D's backward. The weights it produces equal `train_step`'s (tested).
    """
    with _full_dilations(model):
        fake = model.generator(x)
        p_real, feat_real = _reference_d(model, x)
        p_fake, feat_fake = _reference_d(model, fake)
        lat = F.mse_loss(feat_fake, feat_real).detach() if model.detach_latent else F.mse_loss(feat_fake, feat_real)
        loss_g = (model.w_adv * F.binary_cross_entropy(p_fake, torch.ones_like(p_fake))
                  + model.w_con * F.l1_loss(fake, x) + model.w_lat * lat)
        opt_g.zero_grad()
        loss_g.backward(retain_graph=True)
        opt_g.step()
        p_fake_d, _ = _reference_d(model, fake.detach())
        loss_d = (F.binary_cross_entropy(p_real, torch.ones_like(p_real))
                  + F.binary_cross_entropy(p_fake_d, torch.zeros_like(p_fake_d)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()


def reference_optimizers(model: SkipFamilyModel, config: TrainConfig) -> dict[str, torch.optim.Adam]:
    """The reference's optimisers: torch.optim.Adam in its default (per-tensor loop) implementation."""
    return make_optimizers(model, config, adam=torch.optim.Adam)


def reference_style_score(model: SkipFamilyModel, x: Tensor) -> Tensor:
    """The score computed the reference way (full 3x3 convs, D's head as a 3x3 conv, NCHW; no_grad, as ours)."""
    with _full_dilations(model), torch.no_grad():
        fake = model.generator(x)
        _, feat_real = _reference_d(model, x)
        _, feat_fake = _reference_d(model, fake)
        rec = (x - fake).pow(2).flatten(1).mean(1)
        lat = (feat_real - feat_fake).pow(2).flatten(1).mean(1)
        return model.score_weight * rec + (1.0 - model.score_weight) * lat


def reference_style_runners(model: SkipFamilyModel, images: Tensor, batch_size: int, steps: int,
                            score_batch: int) -> tuple[Callable[[], None], Callable[[], None], float]:
    """On a CPU copy of `model` in the default layout (the reference code runs on the CPU only, also on
    machines with a GPU): a function running `steps` reference-style training steps on the first
    `batch_size` images, one scoring the first `score_batch` images the reference way (one batch),
    and the reference-style step's FLOPs per image."""
    ref = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format)
    images = images.cpu()
    config = TrainConfig(batch_size=batch_size, device="cpu", progress=False)
    opts = reference_optimizers(ref, config)
    opt_g, opt_d = opts["generator"], opts["discriminator"]
    x = prepare_batch(images[:batch_size], torch.device("cpu")).contiguous()
    to_score = prepare_batch(images[:score_batch], torch.device("cpu")).contiguous()

    def train_steps() -> None:
        ref.train()
        for _ in range(steps):
            reference_style_step(ref, x, opt_g, opt_d)

    def score() -> None:
        ref.eval()
        reference_style_score(ref, to_score)

    ref.train()
    flops = count_flops(lambda: reference_style_step(ref, x, opt_g, opt_d)) / batch_size
    return train_steps, score, flops


def bench_model(name: str, batch_size: int = 64, steps: int = 3, repeats: int = 3, score_batch: int = 256,
                onnx: bool = True, options: dict[str, Any] | None = None, threads: int | None = None,
                reference_style: bool = False, compile: str | None = None, amp: bool = False,
                device: str = "cpu") -> dict[str, Any]:
    """Training and scoring throughput of one model at 3x32x32 on `device` (float32 unless `amp`).

    With `reference_style` (Skip-GANomaly and ++ only), the reference code's way of computing the
    same step and score is timed in the same process, and the speed-ups are reported. With `compile`
    (a torch.compile backend), a compiled copy is also timed in the same process, with its first
    step's seconds (mostly compiling; a warm inductor cache shortens it). With `amp`, a copy is also
    trained and scored under bf16 autocast, in turns with the float32 model. On a GPU the images are
    on the GPU, as the training loop keeps them, and the reference style still runs on the CPU.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    model = to_device(create(name, **(options or {})), dev)
    if not model.trained_by_gradient:
        raise ConfigError(f"model {name!r} is fitted in closed form, not trained by steps: there is no training "
                          "step to time")
    config = TrainConfig(batch_size=batch_size, device=str(dev), progress=False, amp=False)
    opts = make_optimizers(model, config)
    images = torch.randint(0, 256, (max(batch_size, score_batch), 3, 32, 32), dtype=torch.uint8).to(dev)
    x = prepare_batch(images[:batch_size], dev)
    if reference_style and not isinstance(model, SkipFamilyModel):
        raise ConfigError(f"the reference-style comparison exists for the skip family only, not {name!r}")
    model.train()
    # FLOPs counted eagerly (the counter does not see inside compiled kernels); the same maths either way.
    train_flops = count_flops(lambda: train_step(model, x, opts, config, dev)) / batch_size

    def run_steps(net: nn.Module, opts: dict[str, Adam]) -> None:
        for _ in range(steps):
            train_step(net, x, opts, config, dev)

    compiled: dict[str, float] = {}
    if compile:  # timed first, on a copy, so the eager model below is measured exactly as without the flag
        net = copy.deepcopy(model)
        compile_blocks(net, compile)
        opts = make_optimizers(net, config)
        start = time.perf_counter()
        train_step(net, x, opts, config, dev)
        sync()
        compiled["compile_seconds"] = time.perf_counter() - start
        [compiled_s] = _median_seconds(lambda: run_steps(net, opts), repeats=repeats, sync=sync)
        compiled["compiled_train_images_per_s"] = batch_size * steps / compiled_s
        del net, opts
    if model.fits_statistics:  # a score with a feature bank: fitted on these images, so its kNN search is timed
        if len(images) < model.min_training_images():
            raise ConfigError(f"{model.name}'s score searches a bank of the timed images, here the larger of "
                              f"--batch-size and --score-batch ({len(images)}): it needs at least "
                              f"{model.min_training_images()}; raise --score-batch")
        fit_statistics(model, images, torch.arange(len(images)), score_batch, dev)  # against a bank of that size
    to_score = images[:score_batch]
    trainers: list[Callable[[], object]] = [lambda: run_steps(model, opts)]
    scorers: list[Callable[[], object]] = [
        lambda: batched_apply(model.score, model, to_score, score_batch, dev, amp=False)]
    if reference_style:  # timed in turns with ours (see _median_seconds)
        assert isinstance(model, SkipFamilyModel)
        ref_train, ref_score, ref_flops = reference_style_runners(model, images, batch_size, steps, score_batch)
        trainers.append(ref_train)
        scorers.append(ref_score)
    if amp:
        amp_model = copy.deepcopy(model)
        amp_config = TrainConfig(batch_size=batch_size, device=str(dev), progress=False, amp=True)
        amp_opts = make_optimizers(amp_model, amp_config)
        trainers.append(lambda: [train_step(amp_model, x, amp_opts, amp_config, dev) for _ in range(steps)])
        scorers.append(lambda: batched_apply(amp_model.score, amp_model, to_score, score_batch, dev, amp=True))
    # The peak kernels take turns with the training steps, so the fraction of peak compares rates measured
    # under the same conditions (a machine's peak can drift between runs).
    kernels = peak_kernels(dev)
    timed = _median_seconds(*trainers, *(fn for fn, _ in kernels.values()), repeats=repeats, sync=sync)
    peak = _peak_from(dict(zip(kernels, timed[len(trainers):], strict=True)), kernels)
    train_s = [t / steps for t in timed[:len(trainers)]]
    score_s = _median_seconds(*scorers, repeats=repeats, sync=sync)
    train_ips = batch_size / train_s[0]
    score_flops = count_flops(lambda: batched_apply(model.score, model, to_score[:8], 8, dev, amp=False)) / 8
    result: dict[str, Any] = {
        "model": name, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": train_ips, "train_gflop_per_image": train_flops / 1e9,
        "train_achieved_gflops": train_ips * train_flops / 1e9,
        "peak_gflops": peak["peak_gflops"], "fraction_of_peak": train_ips * train_flops / 1e9 / peak["peak_gflops"],
        "peak_kernels_gflops": peak,
        "score_batch": score_batch, "score_images_per_s": score_batch / score_s[0],
        "score_gflop_per_image": score_flops / 1e9,
        "steps": steps, "repeats": repeats,
        "method": f"each rate: the median of {repeats} timings after one warm-up ({steps} training steps each); "
                  "the training steps and the peak kernels timed in turns, and the scorers in turns"
                  + ("; onnxruntime timed on its own" if onnx and model.exportable and dev.type == "cpu" else ""),
    }
    if model.fits_statistics:  # its score searches a bank of the training normals: here only these images
        result["score_bank_images"] = len(images)
    if onnx and model.exportable and dev.type == "cpu":  # onnxruntime is the CPU deployment backend
        from .onnx_export import OnnxScorer, export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            scorer = OnnxScorer(export_onnx(model, Path(tmp) / "model.onnx"), threads=torch.get_num_threads())
            [onnx_s] = _median_seconds(lambda: scorer.score(to_score, score_batch), repeats=repeats)
        result["onnx_score_images_per_s"] = score_batch / onnx_s
    if reference_style:
        result.update({
            "reference_style_train_images_per_s": batch_size / train_s[1],
            "reference_style_train_gflop_per_image": ref_flops / 1e9,
            "reference_style_score_images_per_s": score_batch / score_s[1],
            "timing": "ours and the reference style timed in turns, median of each",
        })
        result["train_speedup"] = train_ips / result["reference_style_train_images_per_s"]
        result["score_speedup"] = result["score_images_per_s"] / result["reference_style_score_images_per_s"]
    if amp:
        result["amp_train_images_per_s"] = batch_size / train_s[-1]
        result["amp_score_images_per_s"] = score_batch / score_s[-1]
        result["amp_train_achieved_gflops"] = result["amp_train_images_per_s"] * train_flops / 1e9
        result["amp_fraction_of_bf16_peak"] = result["amp_train_achieved_gflops"] / peak["bf16_matmul_gflops"]
    result.update(compiled)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        result["device"] = torch.cuda.get_device_name(dev)
        result["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def run(models: list[str], threads: int, isolate: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Measure each model (in its own process unless `isolate=False`), with the peak kernels in turns."""
    torch.set_num_threads(threads)
    rows = []
    for name in models:
        if isolate:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                row = pool.submit(bench_model, name, threads=threads, **kwargs).result()
        else:
            row = bench_model(name, threads=threads, **kwargs)
        rows.append(row)
    return {"torch": torch.__version__, "threads": threads, "models": rows}


def measure_models(models: list[str], threads: int, options: dict[str, dict[str, Any]], out: Path | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """What `bench-speed` does: each model in its own process, one line printed per model as it is measured,
    and (with `out`) every row with the environment as JSON."""
    from .provenance import environment
    from .run_directory import write_json

    result: dict[str, Any] = {"environment": environment(), "models": []}
    for name in models:
        row = run([name], threads, options=options.get(name), **kwargs)["models"][0]
        if not result["models"]:
            print(f"({row['method']})", flush=True)
        result["models"].append(row)
        print(speed_line(row), flush=True)
    if out is not None:
        write_json(out, result)
    return result


def speed_line(row: dict[str, Any]) -> str:
    peak = row["peak_kernels_gflops"]
    onnx = row.get("onnx_score_images_per_s")
    return (f"{row['model']}" + (f" on {row['device']}" if "device" in row else "")
            + f": train {row['train_images_per_s']:.1f} img/s ({row['train_gflop_per_image']:.2f} "
            f"GFLOP/img, {row['train_achieved_gflops']:.1f} GFLOP/s = {row['fraction_of_peak']:.0%} of peak "
            f"{peak['peak_gflops']:.1f}), score {row['score_images_per_s']:.1f} img/s"
            + (f" against a bank of {row['score_bank_images']} training images (a real run's holds them all)"
               if "score_bank_images" in row else "")
            + (f", onnxruntime {onnx:.1f} img/s" if onnx else "") + f", peak RSS {row['peak_rss_mb']:.0f} MB"
            + (f"; reference-style train {row['reference_style_train_images_per_s']:.1f} img/s "
               f"({row['train_speedup']:.2f}x), score {row['reference_style_score_images_per_s']:.1f} img/s "
               f"({row['score_speedup']:.2f}x)" if "train_speedup" in row else "")
            + (f"; bf16 autocast: train {row['amp_train_images_per_s']:.1f} img/s "
               f"({row['amp_fraction_of_bf16_peak']:.0%} of bf16 peak {peak['bf16_matmul_gflops']:.0f}), score "
               f"{row['amp_score_images_per_s']:.1f} img/s" if "amp_train_images_per_s" in row else "")
            + (f"; compiled: train {row['compiled_train_images_per_s']:.1f} img/s after a "
               f"{row['compile_seconds']:.0f} s first step" if "compile_seconds" in row else ""))
