"""Wall time of whole training epochs through the real loop (`training.train`), on CIFAR-10-shaped data.

bench-speed times isolated steps; this times what a user waits for: shuffling, batching from the
uint8 tensor on the device, the steps, the per-step loss read-back and the validation pass. The images
are random (the time does not depend on them), so no data set is needed: a GPU machine without
CIFAR-10 can run it.

    python benchmarks/epoch_time.py --images 45000 --epochs 2 [--device cuda] [--amp | --no-amp]
                                    [--batch-size 64] [--cudnn-benchmark]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from skipganomaly.models import create
from skipganomaly.training import TrainConfig, resolve_device, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="skipganomaly++")
    parser.add_argument("--images", type=int, default=45000, help="training images (the paper's: 45,000)")
    parser.add_argument("--val-images", type=int, default=2250)
    parser.add_argument("--epochs", type=int, default=2, help="the first epoch includes warm-up; see the last")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    amp = parser.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_const", const=True, help="bf16 autocast (default: float32)")
    amp.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="float32 (the default)")
    parser.set_defaults(amp=False)  # what the runs without --amp measured (gpu_check.sh's float32 rows)
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick its fastest algorithms")
    parser.add_argument("--out", help="also write the records as JSON here")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images + args.val_images, 3, 32, 32), dtype=torch.uint8)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=str(device), amp=args.amp)
    records = train(create(args.model), images[:args.images], images[args.images:], config)
    result = {"model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "images": args.images,
              "batch_size": args.batch_size, "amp": args.amp, "cudnn_benchmark": args.cudnn_benchmark,
              "command": " ".join(sys.argv), "epochs": [r.as_dict() for r in records]}
    last = records[-1]
    print(f"{args.model} on {result['device']}, amp={args.amp}, batch {args.batch_size}, cudnn.benchmark="
          f"{args.cudnn_benchmark}: last epoch {last.seconds:.1f} s for {args.images} images = "
          f"{last.images_per_second:.0f} img/s (training steps only; validation not included)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
