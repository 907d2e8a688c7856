"""Peak RSS and speed of Skip-GANomaly++ training steps at a given image size, batch and channel count.

Sizing help for your own images: memory grows with batch x pixels. Runs 3 steps on random images (after
loading nothing else), in float32 on the CPU, and prints the process's peak RSS and images/s.

    python benchmarks/step_memory.py --image-size 128 --batch-size 16 [--channels 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from skipganomaly.models import create
from skipganomaly.training import TrainConfig, make_optimizers, prepare_batch, to_device, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--model", default="skipganomaly++")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = to_device(create(args.model, image_size=args.image_size, in_channels=args.channels), device).train()
    config = TrainConfig(batch_size=args.batch_size, device="cpu", progress=False)
    opts = make_optimizers(model, config)
    shape = (args.batch_size, args.channels, args.image_size, args.image_size)
    x = prepare_batch(torch.randint(0, 256, shape, dtype=torch.uint8), device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    for _ in range(3):
        train_step(model, x, opts, config, device)
    speed = 3 * args.batch_size / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.model}, {args.image_size}x{args.image_size}x{args.channels}, batch {args.batch_size}: peak RSS "
          f"{peak:.0f} MiB ({before:.0f} before the steps), {speed:.1f} images/s over 3 steps, {args.threads} threads")


if __name__ == "__main__":
    main()
