"""Aggregate training throughput of N training processes sharing one device, against one alone, in turns.

On a GPU a Skip-GANomaly++ step at batch 64 launches several hundred small kernels from Python, so the
GPU idles most of each step; several cells (each its own process, as `benchmark --workers N` runs them)
can fill it. This script measures that directly: for each N in `--processes`, N spawned processes each
train the model through the real loop (`training.train`, random CIFAR-10-shaped images, no data set
needed) and start their timed epoch together (a barrier); aggregate images/s = N x images / the slowest
process's epoch seconds. The list is run in turns (e.g. 1,4,8,1) so drift shows, and each ratio is to
the mean of the N=1 runs of the same invocation. On a CPU the threads are shared out (`--threads` in
all, divided among the N processes), so there the question is whether processes beat threads.

    python benchmarks/concurrent_cells.py --processes 1,2,4,8,1 --images 6400 --device cuda --out c.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from typing import Any

import torch


def _worker(rank: int, args: argparse.Namespace, threads: int, barrier: Any, results: Any) -> None:
    from skipganomaly.models import create
    from skipganomaly.training import TrainConfig, resolve_device, train

    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    torch.manual_seed(rank)
    images = torch.randint(0, 256, (args.images + 64, 3, 32, 32), dtype=torch.uint8)
    warm = TrainConfig(epochs=1, batch_size=args.batch_size, device=str(device), progress=False, amp=args.amp)
    model = create(args.model)
    train(model, images[:args.batch_size * 4], images[-64:], warm)  # warm-up: allocator, cuDNN plans
    barrier.wait()
    config = TrainConfig(epochs=1, batch_size=args.batch_size, device=str(device), progress=False, amp=args.amp,
                         seed=rank)
    start = time.perf_counter()
    train(model, images[:args.images], images[-64:], config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    results.put({"rank": rank, "seconds": seconds, "peak_gpu_mib": peak})


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    threads = max(1, args.threads // n)
    procs = [ctx.Process(target=_worker, args=(r, args, threads, barrier, results)) for r in range(n)]
    for p in procs:
        p.start()
    rows = [results.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join()
    slowest = max(r["seconds"] for r in rows)
    steps = args.images // args.batch_size
    return {"processes": n, "threads_each": threads, "slowest_seconds": round(slowest, 3),
            "aggregate_images_per_s": round(n * steps * args.batch_size / slowest, 1),
            "per_process_seconds": [round(r["seconds"], 3) for r in sorted(rows, key=lambda r: r["rank"])],
            "peak_gpu_mib_each": [r["peak_gpu_mib"] for r in sorted(rows, key=lambda r: r["rank"])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="skipganomaly++")
    parser.add_argument("--processes", default="1,2,1", help="the N to measure, in this order (repeat 1 for drift)")
    parser.add_argument("--images", type=int, default=6400, help="training images per process in the timed epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads in all")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a measurement")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for n in [int(t) for t in args.processes.split(",")]:
        rows.append(measure(n, args))
        print(json.dumps(rows[-1]), flush=True)
    alone = [r["aggregate_images_per_s"] for r in rows if r["processes"] == 1]
    base = sum(alone) / len(alone) if alone else None
    for r in rows:
        r["ratio_to_one_alone"] = round(r["aggregate_images_per_s"] / base, 3) if base else None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    result = {"model": args.model, "device": device, "torch": torch.__version__, "images": args.images,
              "batch_size": args.batch_size, "amp": args.amp, "threads": args.threads,
              "command": " ".join(sys.argv), "rows": rows}
    for r in rows:
        print(f"{r['processes']} process(es) x {r['threads_each']} thread(s): {r['aggregate_images_per_s']:.0f} img/s "
              f"in all, {r['ratio_to_one_alone']}x one alone")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
