"""Scratch: the map term with features centred / z-scored on the training normals (saved networks, no retraining).

python centred.py CLASS[,CLASS...] NETS_DIR   (from the repository root, PYTHONPATH=src; appends to centred-output.jsonl beside it)
"""
from __future__ import annotations
import functools, json, sys, time
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "scratch-gaussian-features"))
from probe_scores import auroc, taps, knn_dist
from skipganomaly.data.cifar10 import load_cifar10
from skipganomaly.detector import Detector, DetectorSettings
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.training.device import prepare_batch
torch.set_grad_enabled(False)

def feats(model, images):
    out = {1: [], 2: []}
    for i in range(0, len(images), 500):
        t = taps(model, prepare_batch(images[i:i + 500], torch.device("cpu")))
        for b in (1, 2):
            out[b].append(F.adaptive_avg_pool2d(t[b].float(), 4).flatten(1))
    return {b: torch.cat(v) for b, v in out.items()}

def std_knn(bank, q, k=5):
    ref = knn_dist(bank, bank[:1500], k, exclude_self=True)
    return (knn_dist(bank, q, k) - ref.mean()) / ref.std()

def main():
    classes = sys.argv[1].split(",")
    config = SweepConfig(models=["rotation"], classes=classes, seeds=[0], protocols=["validate"],
                         settings=DetectorSettings.from_params(epochs=3, batch_size=64, progress=False),
                         train_fraction=0.2, test_fraction=0.5)
    load = functools.partial(load_cifar10, "../shared/data")
    for cls in classes:
        t0 = time.time()
        split = load_split(load, cls, 0, "validate", config)
        det = Detector.load(f"{sys.argv[2]}/{cls}.pt", device="cpu")
        model = det.model_.eval()
        fit_idx = det.holdout(len(split.train))[1]
        tr, te = feats(model, split.train[fit_idx]), feats(model, split.test)
        y = split.test_labels.numpy()
        res = {}
        for name in ("map", "mapc", "mapz"):
            s = 0
            for b in (1, 2):
                a, q = tr[b], te[b]
                if name != "map":
                    mu = a.mean(0)
                    sd = a.std(0) + 1e-6 if name == "mapz" else 1.0
                    a, q = (a - mu) / sd, (q - mu) / sd
                s = s + std_knn(F.normalize(a, dim=1), F.normalize(q, dim=1))
            res[name] = auroc(s, y)
        row = {"class": cls, "pseudo": split.abnormal_class, "auroc": res, "s": round(time.time() - t0)}
        with open(__import__("pathlib").Path(__file__).parent / "centred-output.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
