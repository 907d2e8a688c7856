"""Threshold-free and threshold metrics; the threshold comes from validation normals, never test labels."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError


def quantile_threshold(normal_scores: np.ndarray, contamination: float = 0.05) -> float:
    """The k-th smallest of n held-out *normal* scores, k = ceil((n + 1) * (1 - contamination)): a new normal
    image exceeds it with probability at most `contamination` (it is as likely to rank anywhere among the
    n + 1), whatever the test set holds. The interpolated quantile would flag up to twice that share when n
    is small (about 9.5% for 5% at n = 20). Below `min_calibration_images`, k is past the largest score,
    which is taken: a new normal exceeds it with probability 1 / (n + 1)."""
    if not 0.0 <= contamination < 1.0:
        raise ConfigError(f"contamination must be in [0, 1), got {contamination}")
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if scores.size == 0:
        raise ConfigError("no validation scores to calibrate a threshold on")
    return float(scores[min(threshold_rank(scores.size, contamination), scores.size) - 1])


def threshold_rank(n: int, contamination: float) -> int:
    """k = ceil((n + 1)(1 - contamination)): the rank among n held-out scores that `quantile_threshold` takes
    (past n: the largest is taken, which a new normal exceeds with probability 1 / (n + 1))."""
    return math.ceil(round((n + 1) * (1.0 - contamination), 9))  # rounded: 0.95 * 20 is 19.000000000000004


def min_calibration_images(contamination: float) -> int:
    """The fewest held-out normals whose threshold flags at most `contamination` of normal images (n + 1 >= 1/c)."""
    return math.ceil(round(1.0 / contamination - 1.0, 9)) if contamination > 0 else 0


def threshold_note(threshold: float, calibration: Mapping[str, Any]) -> str:
    """Where a threshold came from, in words, from a detector's `calibration` (n_val_images, val_fraction,
    contamination): what a report states beside the metrics computed at it."""
    n, c = int(calibration["n_val_images"]), float(calibration["contamination"])
    held = (f"Threshold {threshold:.6g}: from the scores of {n} training normals held out of training "
            f"(val_fraction {calibration['val_fraction']}), no test label used; ")
    if threshold_rank(n, c) > n:
        return held + (f"their largest score ({n} held-out images, contamination {c}), so a new normal image exceeds it "
                       f"with probability 1/{n + 1} ({1 / (n + 1):.1%}).")
    return held + (f"the k-th smallest, k = ceil((n + 1)(1 - {c})), so a new normal image exceeds it with "
                   f"probability at most {c:.1%} (the contamination setting).")


def evaluate_scores(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict[str, float]:
    """AUROC, AUPRC, and precision/recall/F1 and the false-alarm rate when flagging scores strictly above
    `threshold`, with the counts behind them.

    Undefined values are NaN, not 0: AUROC and AUPRC when the labels hold a single class, precision when
    nothing is flagged, recall without abnormal images, the false-alarm rate without normal ones.
    """
    # Imported here, not with the package: scikit-learn is heavy to import (it brings scipy), and a
    # training run needs it only at the end.
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    both = 0 < y.sum() < y.size
    pred = s > threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    n_normal = int(np.sum(y == 0))
    nan = float("nan")
    return {
        "auroc": float(roc_auc_score(y, s)) if both else nan,
        "auprc": min(1.0, float(average_precision_score(y, s))) if both else nan,  # sums may round above 1
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fn else nan,  # no abnormal image: recall, and so F1, undefined
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
        "false_alarm_rate": fp / n_normal if n_normal else nan,
        "threshold": float(threshold),
        "n_normal": n_normal,
        "n_abnormal": int(np.sum(y == 1)),
        "n_flagged": tp + fp,
    }


def auroc_interval(scores: Sequence[float], labels: Sequence[int], level: float = 0.95, resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the AUROC: normal and abnormal images resampled separately (each count
    kept), so it says how far the number could move on another test set of the same sizes and kinds; seeded, so a
    redrawn report shows the same interval. NaN where either label is missing."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    normal, abnormal = s[y == 0], s[y == 1]
    if not normal.size or not abnormal.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n0, n1 = normal.size, abnormal.size
    values = []
    for start in range(0, resamples, 64):  # 64 resamples at a time: one array of 64 x (n0 + n1) ranks
        count = min(64, resamples - start)
        drawn = np.concatenate([rng.choice(normal, (count, n0)), rng.choice(abnormal, (count, n1))], axis=1)
        ranks = rankdata(drawn, axis=1)  # ties share their mean rank, as the AUROC counts them half
        values.append((ranks[:, n0:].sum(axis=1) - n1 * (n1 + 1) / 2) / (n0 * n1))  # Mann-Whitney U / (n0 n1)
    low, high = np.quantile(np.concatenate(values), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def metrics_per_folder(scores: Sequence[float], labels: Sequence[int], folders: Sequence[str],
                       threshold: float) -> dict[str, dict[str, float]]:
    """Per folder of a labelled test set (MVTec AD's defect types): its image count, the share flagged at
    `threshold` (for the normal folder, the false-alarm rate; for a defect folder, its recall) and, for a
    defect folder, the AUROC of its images against all normal ones, so one defect type the model misses
    is not hidden in the pooled AUROC."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    names = np.asarray(folders, dtype=object)
    if not s.shape == y.shape == names.shape:
        raise ValueError(f"{s.size} scores, {y.size} labels and {names.size} folder names")
    normal = y == 0
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(folders):  # in the order of the test set: the normal folder first
        part = names == name
        row: dict[str, float] = {"label": int(y[part][0]), "n": int(part.sum()),
                                 "flagged": float(np.mean(s[part] > threshold))}
        if row["label"] == 1:
            both = np.concatenate([s[normal], s[part]])
            row["auroc"] = (float(roc_auc_score(np.r_[np.zeros(normal.sum()), np.ones(part.sum())], both))
                            if normal.any() else float("nan"))
        out[str(name)] = row
    return out


def pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Pixel-level AUROC and AUPRC of anomaly maps [N, H, W] against binary masks [N, H, W] (1 = defect pixel),
    over every pixel of every image given (normal images contribute their all-zero masks), as MVTec AD's
    pixel-level ROC is computed; here at the model's image size."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    m = np.asarray(maps, dtype=np.float64).ravel()
    y = (np.asarray(masks) > 0).ravel()
    if m.shape != y.shape:
        raise ValueError(f"{np.shape(maps)} maps but {np.shape(masks)} masks")
    both = 0 < y.sum() < y.size
    return {"pixel_auroc": float(roc_auc_score(y, m)) if both else float("nan"),
            "pixel_auprc": min(1.0, float(average_precision_score(y, m))) if both else float("nan")}
