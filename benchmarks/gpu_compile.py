"""Training steps/s of a model eager and under torch.compile modes, with each mode's compile time.

On a GPU, Skip-GANomaly++ at batch 64 runs at ~2% of the chip's peak: the time goes to launching
hundreds of small kernels, which compiling (fewer, fused kernels) and CUDA graphs ("reduce-overhead")
attack. Each mode gets a fresh model; the first step (compiling) is timed apart from the median of
the steps after it.

    python benchmarks/gpu_compile.py [--device cuda] [--modes eager,default,reduce-overhead] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from skipganomaly.models import create
from skipganomaly.training import TrainConfig, make_optimizers, prepare_batch, resolve_device, to_device, train_step
from skipganomaly.training.device import compile_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="skipganomaly++")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--modes", default="eager,default,reduce-overhead")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    x = prepare_batch(images, device)
    config = TrainConfig(batch_size=args.batch_size, device=str(device), progress=False)
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        model = to_device(create(args.model), device).train()
        if mode != "eager":
            compile_blocks(model, mode=None if mode == "default" else mode)
        opts = make_optimizers(model, config)
        start = time.perf_counter()
        for _ in range(3):  # compiling, and CUDA-graph recording after warm-up steps
            train_step(model, x, opts, config, device)
        sync()
        first = time.perf_counter() - start
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            train_step(model, x, opts, config, device)
            sync()
            times.append(time.perf_counter() - start)
        step = statistics.median(times)
        print(f"{args.model} {mode:>15} on {device}: first 3 steps {first:6.1f} s, then "
              f"{args.batch_size / step:8.0f} images/s ({step * 1e3:.1f} ms per step)", flush=True)


if __name__ == "__main__":
    main()
