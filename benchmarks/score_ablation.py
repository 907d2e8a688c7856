"""Choose a model's settings on the validate protocol: train once per task, score with every score option.

For each abnormal class c, c is removed from CIFAR-10 first and a pseudo-anomaly class is scored against the
other eight (`benchmark --protocol validate`, the same split): no number here depends on c. One model is
trained per task and then scored with each value of its `score` option (the training does not depend on it),
which makes an ablation over score functions cost one training run.

    python benchmarks/score_ablation.py --data-dir ../shared/data --model rotation --scores ce,knn,ce+knn \
        --train-fraction 0.2 --test-fraction 0.5 --epochs 3 --out benchmarks/results/ablation/rotation.jsonl

Options that change only what is fitted after training (e.g. the rotation model's `map_layers` and `map_grid`,
which choose its feature banks) are ablated from the same training too: each `--variant "KEY=VALUE ..."` rebuilds
the model with those options, copies the trained weights, refits its statistics on the same training images
and scores it again (reported as `score@variant`).

Each finished task appends one JSON line to --out (a rerun skips tasks already there with the same settings).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipganomaly.options import parse_model_args
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.data.cifar10 import CLASSES, load_cifar10
from skipganomaly.data.labelled import load_labelled
from skipganomaly.detector import Detector, DetectorSettings
from skipganomaly.models import create
from skipganomaly.training.config import LR_SCHEDULES, TrainConfig
from skipganomaly.training.device import autocast, prepare_batch
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.provenance import git_commit

# rows written at the default schedule omit it, so that they still match the rows written before the option existed
DEFAULT_SCHEDULE = TrainConfig.defaults()["lr_schedule"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py")
    ap.add_argument("--data", type=Path, help="your labelled images instead (an .npz or a folder per class)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--model", default="rotation")
    ap.add_argument("--scores", default="ce,knn,ce+knn", help="values of the model's score option")
    ap.add_argument("--classes", default="all")
    ap.add_argument("--seed", type=int, default=0, help="draws the split (and, unless --train-seed, the training)")
    ap.add_argument("--train-seed", type=int,
                    help="the detector's seed (initial weights, batch order, held-out normals), where it differs "
                         "from --seed: the same tasks trained again, to measure what a seed moves or to ensemble")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-schedule", default=DEFAULT_SCHEDULE, choices=LR_SCHEDULES)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-fraction", type=float, default=0.2)
    ap.add_argument("--test-fraction", type=float, default=0.5)
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--variant", action="append", default=[], metavar='"KEY=VALUE ..."',
                    help="options that change only the fitted statistics, scored from the same training (repeatable)")
    ap.add_argument("--variant-scores", default="map,ce+map", help="the score values each variant is scored with")
    ap.add_argument("--untrained", action="store_true",
                    help="a control: no training, the statistics fitted on the initial (seeded) weights")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--save-dir", type=Path,
                    help="also save each task's fitted detector as DIR/CLASS.pt (to probe other scores later)")
    args = ap.parse_args()
    train_seed = args.seed if args.train_seed is None else args.train_seed
    variants = {v: parse_model_args(v.split(), [args.model])[args.model] for v in args.variant}

    options = parse_model_args(args.model_arg, [args.model])[args.model]
    if args.data:
        load = functools.partial(load_labelled, args.data, args.image_size)
        all_classes = load().present()
    else:
        load, all_classes = functools.partial(load_cifar10, args.data_dir), list(CLASSES)
    classes = all_classes if args.classes == "all" else args.classes.split(",")
    config = SweepConfig(models=[args.model], classes=classes, seeds=[args.seed], protocols=["validate"],
                         settings=DetectorSettings.from_params(epochs=args.epochs, batch_size=args.batch_size,
                                                               progress=False),
                         train_fraction=args.train_fraction, test_fraction=args.test_fraction)
    settings = {"model": args.model, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                "train_fraction": args.train_fraction, "test_fraction": args.test_fraction, "seed": args.seed,
                "model_options": options, "amp": args.amp, "data": str(args.data or "cifar10"),
                "image_size": args.image_size, "variants": args.variant,
                "variant_scores": args.variant_scores if args.variant else None,
                **({"untrained": True} if args.untrained else {}),
                **({"train_seed": train_seed} if train_seed != args.seed else {}),
                **({"lr_schedule": args.lr_schedule} if args.lr_schedule != DEFAULT_SCHEDULE else {})}
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            if row["settings"] == settings:
                done.add(row["class"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    for cls in classes:
        if cls in done:
            continue
        split = load_split(load, cls, args.seed, "validate", config)
        det = Detector(model=args.model, image_size=args.image_size, in_channels=split.train.shape[1],
                       amp=args.amp, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       lr_schedule=args.lr_schedule,
                       seed=train_seed, progress=False, **options)
        start = time.perf_counter()
        if args.untrained:
            torch.manual_seed(train_seed)  # the initial weights Detector.fit would start from
            det.model_ = create(args.model, in_channels=det.in_channels, image_size=det.image_size, **options)
            det = refitted(det, {}, split.train)
        else:
            det.fit(split.train)
        seconds = time.perf_counter() - start
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            det.save(args.save_dir / f"{cls}.pt")
        labels = split.test_labels.numpy()
        aurocs: dict[str, Any] = {}
        assert det.model_ is not None
        all_scores: dict[str, np.ndarray] = {}
        scored = {"": det, **{v: refitted(det, opts, split.train) for v, opts in variants.items()}}
        for variant, d in scored.items():
            assert d.model_ is not None
            # a model whose scores are sums of standardised terms gives every one of them from one pass
            terms = getattr(type(d.model_), "TERMS", None)
            columns = d._apply("score_terms", split.test, None).double().numpy() if terms else None
            for score in (args.variant_scores if variant else args.scores).split(","):
                name = f"{score}@{variant}" if variant else score
                if columns is not None and terms is not None:
                    all_scores[name] = columns[:, [terms.index(t) for t in score.split("+")]].sum(1)
                else:
                    d.model_.score_name = score
                    all_scores[name] = np.asarray(d.decision_function(split.test))
                aurocs[name] = round(float(evaluate_scores(all_scores[name], labels, 0.0)["auroc"]), 4)
        # the test scores, in the split's order (the order the benchmark's cells save theirs in), for ensembles
        scores_dir = args.out.with_suffix(".scores")
        scores_dir.mkdir(exist_ok=True)
        np.savez_compressed(scores_dir / f"{cls}.npz", labels=labels.astype(np.int8),
                            **{k.replace("+", "_").replace(" ", "_"): v.astype(np.float32) for k, v in all_scores.items()})
        row = {"class": cls, "pseudo_anomaly": split.abnormal_class, "auroc": aurocs, "train_seconds": seconds,
               "val_loss": [round(float(r["val_loss"]), 4) for r in det.history_],
               "threads": torch.get_num_threads(), "git_commit": commit, "settings": settings}
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{cls:>10} (pseudo-anomaly {split.abnormal_class}): "
              + "  ".join(f"{k} {v:.3f}" for k, v in aurocs.items()) + f"  [{seconds:.0f} s]", flush=True)


def refitted(det: Detector, options: dict[str, Any], images: torch.Tensor) -> Detector:
    """A copy of the fitted `det` whose model is rebuilt with `options`, given the trained weights (every
    tensor whose name and shape match) and refitted statistics on the training images `det.fit` used."""
    assert det.model_ is not None
    model = create(det.model_name, in_channels=det.in_channels, image_size=det.image_size,
                   **{**det.settings.model_options, **options})
    target = model.state_dict()
    model.load_state_dict({k: v for k, v in det.model_.state_dict().items()
                           if k in target and target[k].shape == v.shape}, strict=False)
    index = det.holdout(len(images))[1]  # the images Detector.fit filled the banks with
    device = next(det.model_.parameters()).device
    model.to(device).eval()
    with torch.no_grad(), autocast(device, det.train_config.amp):
        model.fit_statistics(torch.cat([prepare_batch(images[index[i:i + 512]].to(device), device)
                                        for i in range(0, len(index), 512)]))
    out = copy.copy(det)
    out.model_ = model
    return out


if __name__ == "__main__":
    main()
