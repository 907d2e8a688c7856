"""Time a model's training pass (forward and backward of each phase's loss) in float32 and under bf16 autocast,
in turns, on this CPU.

On a CPU with AVX512-BF16 or AMX, bf16 autocast is faster; on one without, torch emulates bf16 and the step
is many times slower (`training.device.warn_emulated_bf16` warns). The ratio is measured in one process,
the two settings alternating, so that the machine's drift slows both alike.

    python benchmarks/amp_cpu_ratio.py --model rotation --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from skipganomaly.models import create
from skipganomaly.provenance import git_commit
from skipganomaly.training.device import native_bf16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--model", default="rotation")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.model).train().to(memory_format=torch.channels_last)
    x = (torch.rand(args.batch_size, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    phases = model.training_phases()
    seconds: dict[str, list[float]] = {"float32": [], "bf16": []}
    for _ in range(args.repeats + 1):  # the first turn of each warms up and is dropped
        for name in seconds:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                losses = [phase.loss(x, {}).loss for phase in phases]
            sum(losses).backward()
            model.zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - start)
    median = {k: sorted(v[1:])[len(v[1:]) // 2] for k, v in seconds.items()}
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "threads": args.threads,
                      "native_bf16": native_bf16(torch.device("cpu")), "processor": platform.processor(),
                      "git_commit": git_commit(), "median_seconds": median,
                      "bf16_over_float32": round(median["bf16"] / median["float32"], 2)}))


if __name__ == "__main__":
    main()
