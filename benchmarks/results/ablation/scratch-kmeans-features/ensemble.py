"""Scratch (validate only): the rotation model's saved `map` term plus the k-means patch term (standardised on
the training normals, as the product's `map+patch` score sums them)."""
import sys
from pathlib import Path
import numpy as np
from sklearn.metrics import roc_auc_score

rot = Path(sys.argv[1])  # e.g. benchmarks/results/ablation/rotation-map-cpu-medium-validate.scores
patch = Path(sys.argv[2])  # scores-k400
rows = {}
for f in sorted(patch.glob("*.npz")):
    p, r = np.load(f), np.load(rot / f.name)
    assert np.array_equal(p["labels"], r["labels"]), f
    y = p["labels"]
    rows[f.stem] = {"map": roc_auc_score(y, r["map"]), "patch": roc_auc_score(y, p["knn_std_z"]),
                    "map+patch": roc_auc_score(y, r["map"] + p["knn_std_z"]),
                    "ce+map+patch": roc_auc_score(y, r["ce_map"] + p["knn_std_z"])}
names = list(next(iter(rows.values())))
print("| score | " + " | ".join(rows) + " | mean | lowest |")
print("|---" * (len(rows) + 3) + "|")
for n in names:
    v = [rows[c][n] for c in rows]
    print(f"| {n} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {np.mean(v):.3f} | {min(v):.3f} |")
