"""Scratch (validate splits only): kNN on single-layer k-means features (Coates, Lee & Ng 2011) learned from the
normals. Usage: kmeans_features.py CLASSES [K] [n_patches]"""
import functools, sys, time
import numpy as np, torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.data.cifar10 import CLASSES, load_cifar10
from skipganomaly.detector import DetectorSettings

torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
classes = list(CLASSES) if sys.argv[1] == "all" else sys.argv[1].split(",")
K = int(sys.argv[2]) if len(sys.argv) > 2 else 400
NP = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
P = 6
load = functools.partial(load_cifar10, "/work/shared/data")
config = SweepConfig(models=["rotation"], classes=list(CLASSES), seeds=[0], protocols=["validate"],
                     settings=DetectorSettings.from_params(epochs=3, batch_size=64, progress=False),
                     train_fraction=0.2, test_fraction=0.5)


def to255(x):
    x = x.float()
    return (x + 1) * 127.5 if x.min() < 0 else (x * 255 if x.max() <= 1 else x)


def patches(x):  # (B,C,H,W) -> (B*L, C*P*P), contrast-normalised
    u = F.unfold(x, P).transpose(1, 2)  # B, L, D
    u = u - u.mean(-1, keepdim=True)
    u = u / torch.sqrt(u.var(-1, keepdim=True) + 10)
    return u


def fit(train, g):
    per = 10  # patches per sampled image
    L = (32 - P + 1) ** 2
    imgs = torch.randint(len(train), (NP // per,), generator=g)
    sample = []
    for s in range(0, len(imgs), 500):
        u = patches(to255(train[imgs[s:s + 500]]))  # b, L, D
        loc = torch.randint(L, (len(u), per), generator=g)
        sample.append(torch.gather(u, 1, loc[..., None].expand(-1, -1, u.shape[-1])).flatten(0, 1))
    X = torch.cat(sample).double()
    mean = X.mean(0)
    cov = torch.cov((X - mean).T)
    e, V = torch.linalg.eigh(cov)
    W = (V @ torch.diag(1 / torch.sqrt(e + 0.1)) @ V.T).float()
    Xw = ((X - mean).float() @ W)
    C = Xw[torch.randperm(len(Xw), generator=g)[:K]].clone()
    for it in range(10):
        d = (C * C).sum(1) - 2 * Xw @ C.T
        a = d.argmin(1)
        counts = torch.bincount(a, minlength=K).float()
        sums = torch.zeros_like(C).index_add_(0, a, Xw)
        empty = counts == 0
        C = torch.where(empty[:, None], Xw[torch.randint(len(Xw), (K,), generator=g)], sums / counts.clamp(min=1)[:, None])
    return mean.float(), W, C


def encode(x, mean, W, C, bs=200):
    out = []
    n = 32 - P + 1
    h = n // 2
    for s in range(0, len(x), bs):
        u = patches(to255(x[s:s + bs]))  # B, L, D
        w = ((u - mean) @ W).reshape(-1, u.shape[-1])
        z = ((w * w).sum(1, keepdim=True) + (C * C).sum(1) - 2 * w @ C.T).clamp(min=0).sqrt().view(u.shape[0], -1, K)
        f = (z.mean(-1, keepdim=True) - z).clamp(min=0).view(-1, n, n, K)
        q = torch.stack([f[:, :h, :h].sum((1, 2)), f[:, :h, h:].sum((1, 2)), f[:, h:, :h].sum((1, 2)),
                         f[:, h:, h:].sum((1, 2))], 1).flatten(1)
        out.append(q)
    return torch.cat(out)


def knn_score(q, bank, k=5, self_out=False):
    d = torch.cdist(q, bank)
    if self_out:
        d.fill_diagonal_(float("inf"))
    return d.topk(k, 1, largest=False).values.mean(1)


res = {}
for cls in classes:
    t0 = time.time()
    split = load_split(load, cls, 0, "validate", config)
    g = torch.Generator().manual_seed(0)
    mean, W, C = fit(split.train, g)
    ftr, fte = encode(split.train, mean, W, C), encode(split.test, mean, W, C)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-3
    ztr, zte = (ftr - mu) / sd, (fte - mu) / sd
    y = split.test_labels.numpy()
    std_scores = knn_score(zte, ztr).numpy()
    line = {"knn_std": roc_auc_score(y, std_scores)}
    out_dir = __import__("pathlib").Path(f"scores-k{K}")
    out_dir.mkdir(exist_ok=True)
    own = knn_score(ztr, ztr, self_out=True)  # each training normal's leave-one-out distance
    np.savez(out_dir / f"{cls}.npz", labels=y, knn_std=std_scores,
             knn_std_z=(std_scores - own.mean().item()) / own.std().item())
    ntr, nte = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
    line["knn_cos"] = roc_auc_score(y, knn_score(nte, ntr).numpy())
    ntr, nte = F.normalize(ztr, dim=1), F.normalize(zte, dim=1)
    line["knn_std_cos"] = roc_auc_score(y, knn_score(nte, ntr).numpy())
    # whitened PCA-ish: Mahalanobis in top components of standardised features
    res[cls] = line
    print(cls, split.abnormal_class if hasattr(split, "abnormal_class") else "", {k: round(v, 3) for k, v in line.items()},
          f"{time.time() - t0:.0f}s", flush=True)
print("mean", {k: round(float(np.mean([r[k] for r in res.values()])), 3) for k in next(iter(res.values()))})
