"""Scratch: other scores on the saved rotation networks of the validate tasks (no retraining).

python probe_scores.py CLASS[,CLASS...]  -> prints and appends JSON lines to probe.jsonl
"""
from __future__ import annotations

import functools
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from skipganomaly.data.cifar10 import load_cifar10
from skipganomaly.detector import Detector, DetectorSettings
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.training.device import prepare_batch

torch.set_grad_enabled(False)


def auroc(s, y):
    return round(float(evaluate_scores(np.asarray(s, dtype=np.float64), y, 0.0)["auroc"]), 4)


def taps(model, x, rot=0):
    x = torch.rot90(x, rot, dims=(2, 3)) if rot else x
    h = model.stem(x)
    out = []
    for block in model.blocks:
        h = block(h)
        out.append(h)
    out.append(F.relu(model.bn(h)))  # index 3: the head's input map
    return out


def features(model, images, rots=(0,)):
    """dict name -> [N, D] float32."""
    feats: dict[str, list] = {}
    for i in range(0, len(images), 500):
        x = prepare_batch(images[i:i + 500], torch.device("cpu"))
        for r in rots:
            t = taps(model, x, r)
            for b, m in enumerate(t):
                for g in (1, 2, 4):
                    if m.shape[-1] % g:
                        continue
                    if r and (g != 4 or b not in (1, 2)):
                        continue
                    p = F.avg_pool2d(m.float(), m.shape[-1] // g)  # [B, C, g, g]
                    feats.setdefault(f"b{b}g{g}r{r}", []).append(p.flatten(1))
    return {k: torch.cat(v) for k, v in feats.items()}


def knn_dist(bank, q, k, exclude_self=False):
    """mean cosine distance to k nearest rows (both L2-normalised)."""
    out = []
    for i in range(0, len(q), 1024):
        sim = q[i:i + 1024] @ bank.T
        if exclude_self:
            idx = torch.arange(i, min(i + 1024, len(q)))
            sim[torch.arange(len(idx)), idx] = -2
        out.append(1 - sim.topk(k, dim=1).values.mean(1))
    return torch.cat(out)


def std_knn(bank, q, k):
    """standardised on a subset of the training normals, each left out of its own neighbours."""
    sub = bank[:1500]
    ref = knn_dist(bank, sub, k, exclude_self=True)
    return (knn_dist(bank, q, k) - ref.mean()) / ref.std()


def gauss_fit(x, shrink):
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / (len(x) - 1)
    tr = cov.trace() / len(cov)
    cov = (1 - shrink) * cov + shrink * tr * torch.eye(len(cov))
    return mu, torch.linalg.inv(cov.double()).float()


def maha(mu, prec, q):
    d = q - mu
    return ((d @ prec) * d).sum(1)


def std(train_vals, q_vals):
    return (q_vals - train_vals.mean()) / train_vals.std()


def main():
    classes = sys.argv[1].split(",")
    config = SweepConfig(models=["rotation"], classes=classes, seeds=[0], protocols=["validate"],
                         settings=DetectorSettings.from_params(epochs=3, batch_size=64, progress=False),
                         train_fraction=0.2, test_fraction=0.5)
    load = functools.partial(load_cifar10, "../shared/data")
    for cls in classes:
        t0 = time.time()
        split = load_split(load, cls, 0, "validate", config)
        det = Detector.load(f"/work/scratch/rotnets/{cls}.pt", device="cpu")
        model = det.model_.eval()
        fit_idx = det.holdout(len(split.train))[1]
        tr = features(model, split.train[fit_idx], rots=(0, 1, 2, 3))
        te = features(model, split.test, rots=(0, 1, 2, 3))
        y = split.test_labels.numpy()
        # held-out half of train for standardising Gaussian scores without self-bias
        n = len(fit_idx)
        perm = torch.from_numpy(np.random.default_rng(1).permutation(n))
        A, B = perm[: n * 4 // 5], perm[n * 4 // 5:]
        res = {}

        def nrm(v):
            return F.normalize(v, dim=1)

        # knn map (the model's map score): blocks 1,2 grid 4, view 0
        for k in (1, 5, 20):
            s = sum(std_knn(nrm(tr[f"b{b}g4r0"]), nrm(te[f"b{b}g4r0"]), k) for b in (1, 2))
            res[f"knn_map_k{k}"] = auroc(s, y)
        s_all = sum(std_knn(nrm(tr[f"b{b}g4r{r}"]), nrm(te[f"b{b}g4r{r}"]), 5) for b in (1, 2) for r in range(4))
        res["knn_map_all"] = auroc(s_all, y)
        for b in (0, 1, 2, 3):
            for g in (1, 2, 4):
                key = f"b{b}g{g}r0"
                if key in tr:
                    res[f"knn_{key}"] = auroc(std_knn(nrm(tr[key]), nrm(te[key]), 5), y)

        # Gaussian per position (PaDiM-like) on raw (un-normalised) features, and on the whole normalised vector
        for shrink in (0.01, 0.1):
            tot_te = 0
            for b in (1, 2):
                key = f"b{b}g4r0"
                C = tr[key].shape[1] // 16
                xtr = tr[key].reshape(-1, C, 16)
                xte = te[key].reshape(-1, C, 16)
                sA = 0
                sT = 0
                for p in range(16):
                    mu, prec = gauss_fit(xtr[A, :, p], shrink)
                    sA = sA + maha(mu, prec, xtr[B, :, p])
                    sT = sT + maha(mu, prec, xte[:, :, p])
                tot_te = tot_te + std(sA, sT)
                res[f"padim_b{b}_s{shrink}"] = auroc(sT, y)
            res[f"padim_b12_s{shrink}"] = auroc(tot_te, y)
            for key in ("b3g1r0", "b2g2r0", "b2g1r0"):
                mu, prec = gauss_fit(tr[key][A], shrink)
                res[f"gauss_{key}_s{shrink}"] = auroc(maha(mu, prec, te[key]), y)
            # global head features of all four rotations, concatenated
            cat_tr = torch.cat([tr[f"b2g1r0"]] + [tr[f"b2g4r{r}"].reshape(len(tr['b2g1r0']), 128, 16).mean(2)
                                                  for r in (1, 2, 3)], 1)
            cat_te = torch.cat([te[f"b2g1r0"]] + [te[f"b2g4r{r}"].reshape(len(te['b2g1r0']), 128, 16).mean(2)
                                                  for r in (1, 2, 3)], 1)
            mu, prec = gauss_fit(cat_tr[A], shrink)
            res[f"gauss_b2g1_rots_s{shrink}"] = auroc(maha(mu, prec, cat_te), y)
        # whitened euclidean kNN on the normalised map vector (blocks 1,2)
        v_tr = torch.cat([nrm(tr["b1g4r0"]), nrm(tr["b2g4r0"])], 1)
        v_te = torch.cat([nrm(te["b1g4r0"]), nrm(te["b2g4r0"])], 1)
        mu = v_tr.mean(0)
        U, S, Vh = torch.linalg.svd(v_tr - mu, full_matrices=False)
        ev = S ** 2 / (len(v_tr) - 1)
        for ncomp in (32, 128):
            for a in (1.0,):
                W = Vh[:ncomp].T / (ev[:ncomp] + a * ev[:ncomp].mean()).sqrt()
                # PCA-Gaussian: maha in the top components
                res[f"pcagauss_c{ncomp}_a{a}"] = auroc((((v_te - mu) @ W) ** 2).sum(1), y)
        row = {"class": cls, "pseudo": split.abnormal_class, "auroc": res, "s": round(time.time() - t0)}
        with open("/work/scratch/probe.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(cls, split.abnormal_class, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
