"""Peak RSS of the phases of a full-size CIFAR-10 Skip-GANomaly++ run, without running a whole epoch.

Loads and splits CIFAR-10 as the benchmark does (45,000 / 15,000 images), hands the loading's freed heap
back as the training loop does, runs training steps at batch 64, the validation loss on 2,250 images and
scores the 15,000 test images, printing the peak RSS (VmHWM) after each, and the RSS between phases.

    python benchmarks/memory_phases.py --data-dir ../shared/data [--low-memory] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from skipganomaly.training.memory import reduce_heap_fragmentation, release_free_memory


def peak_mib() -> str:
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB (now {_rss_mib()} MiB)"


def _rss_mib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--low-memory", action="store_true", help="as `skipganomaly --low-memory`")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.low_memory:
        reduce_heap_fragmentation()
    torch.set_num_threads(args.threads)

    from skipganomaly.data.cifar10 import leave_one_class_out, load_cifar10
    from skipganomaly.models import create
    from skipganomaly.training import TrainConfig, batched_apply, make_optimizers, prepare_batch, to_device, train_step
    from skipganomaly.training.inference import default_eval_batch

    split = leave_one_class_out(load_cifar10(args.data_dir), "ship", 1.0, 1.0, 0)
    release_free_memory()
    print(f"after loading CIFAR-10: peak {peak_mib()}", flush=True)
    device = torch.device("cpu")
    model = to_device(create("skipganomaly++"), device).train()
    config = TrainConfig(batch_size=64, device="cpu", progress=False)
    opts = make_optimizers(model, config)
    start = time.perf_counter()
    for i in range(args.steps):
        train_step(model, prepare_batch(split.train[i * 64:(i + 1) * 64], device), opts, config, device)
    speed = args.steps * 64 / (time.perf_counter() - start)
    print(f"after {args.steps} training steps: peak {peak_mib()} ({speed:.1f} images/s)", flush=True)
    batched_apply(model.validation_loss, model, split.train[:2250], default_eval_batch(device), device)
    print(f"after the validation loss: peak {peak_mib()}", flush=True)
    batched_apply(model.score, model, split.test, default_eval_batch(device), device)
    print(f"after scoring {len(split.test)} test images: peak {peak_mib()}", flush=True)


if __name__ == "__main__":
    main()
