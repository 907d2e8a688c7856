"""Scratch: the map term with a kNN bank augmented by mirror images, and mirror test-time averaging.

python mirrored.py CLASS[,CLASS...] NETS_DIR   (from the repository root, PYTHONPATH=src; appends to mirrored-output.jsonl beside it)
"""
from __future__ import annotations
import functools, json, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "scratch-gaussian-features"))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from probe_scores import auroc
from centred import feats
from skipganomaly.data.cifar10 import load_cifar10
from skipganomaly.detector import Detector, DetectorSettings
from skipganomaly.sweep import SweepConfig, load_split
torch.set_grad_enabled(False)

def knn(bank, q, k=5, exclude=None):
    out = []
    for i in range(0, len(q), 1024):
        sim = q[i:i + 1024] @ bank.T
        if exclude is not None:
            for cols in exclude:
                c = cols[i:i + 1024]
                sim[torch.arange(len(c)), c] = -2
        out.append(1 - sim.topk(k, dim=1).values.mean(1))
    return torch.cat(out)

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
        train = split.train[det.holdout(len(split.train))[1]]
        n = len(train)
        tr, trf = feats(model, train), feats(model, torch.flip(train, dims=(-1,)) if isinstance(train, torch.Tensor) else train[..., ::-1].copy())
        te, tef = feats(model, split.test), feats(model, torch.flip(split.test, dims=(-1,)) if isinstance(split.test, torch.Tensor) else split.test[..., ::-1].copy())
        y = split.test_labels.numpy()
        res = {}
        idx = torch.arange(1500)
        tot = {"map": 0, "mapf": 0, "mapft": 0}
        for b in (1, 2):
            a, af = F.normalize(tr[b], dim=1), F.normalize(trf[b], dim=1)
            q, qf = F.normalize(te[b], dim=1), F.normalize(tef[b], dim=1)
            ref = knn(a, a[:1500], exclude=[idx])
            tot["map"] += (knn(a, q) - ref.mean()) / ref.std()
            big = torch.cat([a, af])
            ref = knn(big, a[:1500], exclude=[idx, idx + n])
            tot["mapf"] += (knn(big, q) - ref.mean()) / ref.std()
            tot["mapft"] += ((knn(big, q) + knn(big, qf)) / 2 - ref.mean()) / ref.std()
        res = {k: auroc(v, y) for k, v in tot.items()}
        row = {"class": cls, "pseudo": split.abnormal_class, "auroc": res, "s": round(time.time() - t0)}
        with open(__import__("pathlib").Path(__file__).parent / "mirrored-output.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
