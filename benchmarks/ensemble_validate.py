"""Validate-protocol AUROC of score ensembles, from scores already saved on the same splits.

Reads the test scores `score_ablation.py` saved (one .npz per task) and the `.scores.npz` of benchmark cells run
on the same validate splits (e.g. `knn` and `pca` at the same preset), checks that the labels agree, and prints
the AUROC of each score alone and of label-free combinations: each score turned into its rank among the task's
test images (no label is used), then averaged or maximised.

    python benchmarks/ensemble_validate.py benchmarks/results/ablation/rotation-cpu-medium-validate.scores \
        benchmarks/results/cpu-medium-validate/cells --cells-models knn,pca
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ablation_scores", type=Path)
    ap.add_argument("cells", type=Path)
    ap.add_argument("--cells-models", default="knn,pca")
    args = ap.parse_args()
    table: dict[str, dict[str, float]] = {}
    for path in sorted(args.ablation_scores.glob("*.npz")):
        cls = path.stem
        saved = np.load(path)
        labels = saved["labels"]
        scores = {k: saved[k] for k in saved.files if k != "labels"}
        for model in args.cells_models.split(","):
            (cell,) = args.cells.glob(f"{model.replace('+', 'p')}__{cls}__*__validate__*.scores.npz")
            other = np.load(cell)
            if not np.array_equal(other["labels"], labels):
                raise SystemExit(f"{cell} was scored on another split than {path}")
            scores[f"cell:{model}"] = other["scores"]  # apart from a score option of the same name
        ranks = {k: rankdata(v) / len(v) for k, v in scores.items()}
        row = {k: roc_auc_score(labels, v) for k, v in scores.items()}
        for a, b in itertools.combinations(sorted(ranks), 2):
            row[f"mean({a},{b})"] = roc_auc_score(labels, ranks[a] + ranks[b])
            row[f"max({a},{b})"] = roc_auc_score(labels, np.maximum(ranks[a], ranks[b]))
        table[cls] = row
    names = list(next(iter(table.values())))
    print("| score | " + " | ".join(table) + " | mean |")
    print("|---" * (len(table) + 2) + "|")
    for name in names:
        values = [table[c][name] for c in table]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
