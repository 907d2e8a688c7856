"""Scratch (validate splits only): kNN vs density-normalised kNN (LOF-like) on an untrained rotation net's map features."""
import functools, sys
import numpy as np, torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.data.cifar10 import CLASSES, load_cifar10
from skipganomaly.detector import DetectorSettings
from skipganomaly.models import create
from skipganomaly.training.device import prepare_batch

torch.set_num_threads(1)
classes = sys.argv[1].split(",")
load = functools.partial(load_cifar10, "/work/shared/data")
config = SweepConfig(models=["rotation"], classes=list(CLASSES), seeds=[0], protocols=["validate"],
                     settings=DetectorSettings.from_params(epochs=3, batch_size=64, progress=False),
                     train_fraction=0.2, test_fraction=0.5)
K = 5
def feats(net, x):
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 512):
            _, _, cells = net._outputs(prepare_batch(x[i:i+512], torch.device("cpu")).contiguous())
            out.append(cells)
    return [torch.cat([o[j] for o in out]) for j in range(len(out[0]))]

def knn(q, bank, self_out):
    d = 1 - q @ bank.T
    if self_out: d.fill_diagonal_(9)
    v, i = d.topk(K, 1, largest=False)
    return v, i

res = {}
for cls in classes:
    split = load_split(load, cls, 0, "validate", config)
    torch.manual_seed(0)
    net = create("rotation", in_channels=3, image_size=32).eval()
    ftr, fte = feats(net, split.train), feats(net, split.test)
    y = split.test_labels.numpy()
    tot = {"knn": 0, "lof": 0, "knn1": 0, "lof_mean": 0}
    for a, b in zip(ftr, fte):
        vtr, _ = knn(a, a, True)
        own = vtr.mean(1)            # each normal's leave-one-out mean kNN distance
        v, i = knn(b, a, False)
        dq = v.mean(1)
        lof = dq / own[i].mean(1)    # query distance relative to its neighbours' typical distance
        z = lambda s, ref: (s - ref.mean()) / ref.std()
        # training reference for lof: each normal's own ratio
        _, itr = knn(a, a, True)
        lof_tr = own / own[itr].mean(1)
        tot["knn"] = tot["knn"] + z(dq, own)
        tot["lof"] = tot["lof"] + z(lof, lof_tr)
        tot["lof_mean"] = tot["lof_mean"] + z(dq - own[i].mean(1), own - own[itr].mean(1))
    line = {k: roc_auc_score(y, v.numpy()) for k, v in tot.items() if not isinstance(v, int)}
    res[cls] = line
    print(cls, {k: round(v, 3) for k, v in line.items()}, flush=True)
print("mean", {k: round(float(np.mean([r[k] for r in res.values()])), 3) for k in next(iter(res.values()))})
