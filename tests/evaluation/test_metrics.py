"""Metrics and the validation-quantile threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skipganomaly.errors import ConfigError
from skipganomaly.evaluation import evaluate_scores, per_class_table, quantile_threshold
from skipganomaly.evaluation.metrics import min_calibration_images


def test_quantile_threshold_flags_the_contamination_share_of_normals() -> None:
    scores = np.arange(1000, dtype=float)
    t = quantile_threshold(scores, 0.05)
    assert np.mean(scores > t) == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ConfigError):
        quantile_threshold(scores, 1.0)
    with pytest.raises(ConfigError):
        quantile_threshold(np.array([]), 0.05)


@pytest.mark.parametrize("n_held_out", [20, 40, 100])
def test_the_threshold_flags_at_most_the_contamination_share_of_new_normals(n_held_out: int) -> None:
    """Over many draws of held-out and new normal scores from one distribution, the share of new normals above
    the threshold is at most `contamination` (about 1/21 at n = 20), not the ~2x an interpolated quantile of
    few scores gives."""
    rng = np.random.default_rng(0)
    flagged = [np.mean(rng.normal(size=500) > quantile_threshold(rng.normal(size=n_held_out), 0.05))
               for _ in range(3000)]
    assert 0.04 < np.mean(flagged) <= 0.0505
    assert min_calibration_images(0.05) == 19 and min_calibration_images(0.1) == 9 and min_calibration_images(0) == 0


def test_evaluate_scores_known_values() -> None:
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.9]
    m = evaluate_scores(scores, labels, threshold=0.55)
    assert m["auroc"] == pytest.approx(5 / 6)
    # flagged: 0.6 (normal) and 0.9 (abnormal) -> precision 1/2, recall 1/2
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["false_alarm_rate"] == pytest.approx(1 / 3)
    assert m["n_normal"] == 3 and m["n_abnormal"] == 2 and m["n_flagged"] == 2


def test_the_threshold_note_says_the_rule_quantile_threshold_applies() -> None:
    """Where the rank is past the held-out scores (too few of them, or contamination 0) the note says the largest
    score and 1/(n + 1), as quantile_threshold takes it; otherwise the promised rate."""
    from skipganomaly.evaluation.metrics import threshold_note

    scores = np.arange(1.0, 21.0)
    for n, c, says in ((20, 0.05, "at most 5.0%"), (4, 0.05, "1/5 (20.0%)"), (20, 0.0, "1/21 (4.8%)")):
        note = threshold_note(quantile_threshold(scores[:n], c), {"n_val_images": n, "val_fraction": 0.1,
                                                                 "contamination": c})
        assert says in note, note
        assert ("largest score" in note) == (n < 19 or c == 0)


def test_undefined_threshold_metrics_are_nan_not_zero() -> None:
    """Nothing flagged: precision is undefined (NaN), F1 and recall 0; no abnormal image: recall undefined, no
    normal one: the false-alarm rate. A report must not print 0 for what was never measured."""
    quiet = evaluate_scores([0.1, 0.2, 0.3], [0, 0, 1], threshold=0.9)
    assert math.isnan(quiet["precision"]) and quiet["recall"] == 0 and quiet["f1"] == 0
    assert quiet["false_alarm_rate"] == 0 and quiet["n_flagged"] == 0
    assert math.isnan(evaluate_scores([0.1, 0.2], [0, 0], threshold=0.15)["recall"])
    assert math.isnan(evaluate_scores([0.1, 0.2], [0, 0], threshold=0.15)["f1"])  # flagged, but no abnormal image
    assert math.isnan(evaluate_scores([0.1, 0.2], [1, 1], threshold=0.15)["false_alarm_rate"])
    assert math.isnan(evaluate_scores([0.1, 0.2], [0, 0], threshold=0.9)["f1"])


def test_perfect_and_single_class() -> None:
    assert evaluate_scores([0, 1], [0, 1], 0.5)["auroc"] == 1.0
    assert math.isnan(evaluate_scores([0, 1], [0, 0], 0.5)["auroc"])


def test_per_class_table_has_mean_row() -> None:
    table = per_class_table({"a": {"auroc": 0.5}, "b": {"auroc": 1.0}}, ["auroc"])
    assert "| mean | 0.750 |" in table


def test_the_auroc_interval_holds_the_auroc_and_narrows_with_more_images() -> None:
    """A seeded stratified bootstrap: the same interval twice, around the AUROC, narrower on ten times the images,
    undefined without both labels."""
    from skipganomaly.evaluation.metrics import auroc_interval

    rng = np.random.default_rng(1)
    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.r_[rng.normal(0, 1, n), rng.normal(1, 1, n)], np.r_[np.zeros(n, int), np.ones(n, int)]

    small, large = sample(30), sample(300)
    low, high = auroc_interval(*small)
    assert (low, high) == auroc_interval(*small) and low < evaluate_scores(*small, 0.0)["auroc"] < high
    big_low, big_high = auroc_interval(*large)
    assert big_high - big_low < (high - low) / 2
    assert all(math.isnan(v) for v in auroc_interval([0.1, 0.2], [0, 0]))
