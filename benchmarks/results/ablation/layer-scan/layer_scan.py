"""Scratch: kNN on intermediate features of a trained rotation net, validate protocol only."""
import argparse, functools, json, sys, time
import numpy as np, torch, torch.nn.functional as F
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.data.cifar10 import CLASSES, load_cifar10
from skipganomaly.data.labelled import load_labelled
from skipganomaly.detector import Detector, DetectorSettings
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly import models as M

ap = argparse.ArgumentParser()
ap.add_argument("--data"); ap.add_argument("--data-dir", default="/work/shared/data")
ap.add_argument("--classes", default="all"); ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--train-fraction", type=float, default=1.0); ap.add_argument("--test-fraction", type=float, default=1.0)
ap.add_argument("--model-arg", action="append", default=[]); ap.add_argument("--out", required=True)
ap.add_argument("--random", action="store_true"); ap.add_argument("--model", default="rotation")
a = ap.parse_args()
opts = dict(kv.split("=", 1) for kv in a.model_arg)
opts = {k: (v == "true" if v in ("true", "false") else v) for k, v in opts.items()}
if a.data:
    load = functools.partial(load_labelled, a.data, 32); all_classes = load().present()
else:
    load, all_classes = functools.partial(load_cifar10, a.data_dir), list(CLASSES)
classes = all_classes if a.classes == "all" else a.classes.split(",")
config = SweepConfig(models=["rotation"], classes=classes, seeds=[0], protocols=["validate"],
                     settings=DetectorSettings.from_params(epochs=a.epochs, batch_size=a.batch_size, progress=False),
                     train_fraction=a.train_fraction, test_fraction=a.test_fraction)

def feats(m, x):
    """dict name -> [B, D] L2-normalised features."""
    out = {}
    x = x.float()
    out["pix"] = F.normalize(x.flatten(1) - 0.0, dim=1)
    if hasattr(m, "stem"):
        h = m.stem(x); maps = {"stem": h}
        for i, b in enumerate(m.blocks):
            h = b(h); maps[f"b{i}"] = h
        maps["top"] = F.relu(m.bn(h))
    else:
        maps = {}; h = x; j = 0
        for layer in m.discriminator.features:
            h = layer(h)
            if isinstance(layer, torch.nn.LeakyReLU):
                maps[f"b{j}"] = h.clone(); j += 1
        maps["top"] = h
    for name, f in maps.items():
        for g in (1, 2, 4):
            if f.shape[-1] >= g:
                out[f"{name}g{g}"] = F.normalize(F.adaptive_avg_pool2d(f, g).flatten(1).float(), dim=1)
    return out

def knn(bank, q, k=5, self_out=False):
    d = torch.cdist(q, bank) ** 2 / 2  # = 1 - cos for unit vectors
    kk = k + int(self_out)
    v = d.topk(kk, largest=False).values[:, int(self_out):]
    return v.mean(1)

res = []
for cls in classes:
    split = load_split(load, cls, 0, "validate", config)
    det = Detector(model=a.model, image_size=32, in_channels=split.train.shape[1], amp=True, epochs=(1 if a.random else a.epochs),
                   batch_size=a.batch_size, lr=(1e-12 if a.random else a.lr), seed=0, progress=False, **opts)
    t = time.perf_counter(); det.fit(split.train); sec = time.perf_counter() - t
    m = det.model_
    m.featdict = lambda x, m=m: torch.cat([v for v in feats(m, x).values()], 1)
    names = list(feats(m.eval(), torch.zeros(1, split.train.shape[1], 32, 32)).keys())
    dims = [v.shape[1] for v in feats(m, torch.zeros(1, split.train.shape[1], 32, 32)).values()]
    def allf(data):
        return det._apply("featdict", data, None).float()
    with torch.no_grad():
        ftr, fte = allf(split.train), allf(split.test)
    labels = split.test_labels.numpy()
    au = {}
    off = 0; per = {}
    for n, dsz in zip(names, dims):
        btr, bte = ftr[:, off:off + dsz], fte[:, off:off + dsz]; off += dsz
        s = knn(btr, bte); per[n] = (s, knn(btr, btr, self_out=True))
        au[n] = round(float(evaluate_scores(s.numpy(), labels, 0.0)["auroc"]), 4)
    # standardised sums over layer groups at grid g
    for g in (1, 2, 4):
        for combo in (["stem", "b0", "b1", "b2"], ["b0", "b1", "b2"], ["b1", "b2", "top"], ["stem", "b0", "b1", "b2", "top"], ["b0", "b1"], ["b1", "b2"], ["b0", "b1", "b2", "top"]):
            keys = [f"{c}g{g}" for c in combo if f"{c}g{g}" in per]
            z = sum((per[k][0] - per[k][1].mean()) / per[k][1].std() for k in keys)
            au["+".join(combo) + f"g{g}"] = round(float(evaluate_scores(z.numpy(), labels, 0.0)["auroc"]), 4)
    ce = torch.as_tensor(det.decision_function(split.test)) if False else None
    if a.model == "rotation":
        m.score_name = "ce"; ce = det.decision_function(split.test)
        au["ce"] = round(float(evaluate_scores(ce, labels, 0.0)["auroc"]), 4)
        m.score_name = "ce+knn"; au["ce+knn"] = round(float(evaluate_scores(det.decision_function(split.test), labels, 0.0)["auroc"]), 4)
    else:
        ce = det.decision_function(split.test); au["ce"] = round(float(evaluate_scores(ce, labels, 0.0)["auroc"]), 4)
        au["ce+knn"] = 0.0
    np.savez(a.out + f".{cls}.npz", labels=labels, ce=ce, **{n: per[n][0].numpy() for n in per}, **{n + "_own": per[n][1].numpy() for n in per})
    row = {"class": cls, "pseudo": split.abnormal_class, "sec": round(sec), "auroc": au, "random": a.random}
    res.append(row)
    with open(a.out, "a") as f: f.write(json.dumps(row) + "\n")
    print(cls, split.abnormal_class, round(sec), {k: v for k, v in au.items() if k in ("pix", "ce", "ce+knn", "topg1", "b1g4", "stem+b0+b1+b2g4")}, flush=True)
keys = res[0]["auroc"].keys()
print("MEAN", json.dumps({k: round(float(np.mean([r["auroc"][k] for r in res])), 3) for k in keys}))
