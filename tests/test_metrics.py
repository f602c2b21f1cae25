"""Tests of the pure metric functions and the cluster bootstrap (models.evaluation.metrics).

Every metric is checked against scikit-learn (a test dependency only).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import (
    confusion_matrix as sk_confusion_matrix,
)
from sklearn.metrics import (
    roc_curve as sk_roc_curve,
)

from models.evaluation.metrics import (
    BinaryCounts,
    accuracy,
    auroc,
    binary_counts,
    bootstrap_ci,
    cluster_bootstrap_weights,
    cohen_kappa,
    confusion_matrix,
    percentile_interval,
    reliability_bins,
    roc_curve,
    sensitivity,
    specificity,
)


def _case(seed: int, n: int = 200, decimals: int | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0.0, 1.0)
    if decimals is not None:
        scores = np.round(scores, decimals)  # many tied scores
    return y, scores, (scores >= 0.5).astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_binary_metrics_match_sklearn(seed: int, decimals: int | None) -> None:
    y, scores, calls = _case(seed, decimals=decimals)
    assert accuracy(y, calls) == pytest.approx(accuracy_score(y, calls))
    assert sensitivity(y, calls) == pytest.approx(recall_score(y, calls, pos_label=1))
    assert specificity(y, calls) == pytest.approx(recall_score(y, calls, pos_label=0))
    assert cohen_kappa(y, calls) == pytest.approx(cohen_kappa_score(y, calls))
    assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    (tn, fp), (fn, tp) = sk_confusion_matrix(y, calls, labels=[0, 1])
    assert binary_counts(y, calls) == (tp, fp, tn, fn)


def test_auroc_with_ties_counts_half() -> None:
    y = [0, 1, 0, 1, 1, 0]
    scores = [0.5, 0.5, 0.5, 0.5, 0.9, 0.1]
    # Pairs (pos, neg): 9; pos 0.9 beats all 3 negatives; each 0.5 positive beats 0.1 and ties
    # two 0.5 negatives: 3 + 2 * (1 + 0.5 * 2) = 7 -> 7 / 9.
    assert auroc(y, scores) == pytest.approx(7 / 9)
    assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert auroc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_perfect_and_inverted_classifiers() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert auroc(y, scores) == 1.0 == roc_auc_score(y, scores)
    assert auroc(y, 1 - scores) == 0.0 == roc_auc_score(y, 1 - scores)
    assert cohen_kappa(y, y) == pytest.approx(1.0) == cohen_kappa_score(y, y)
    assert cohen_kappa(y, 1 - y) == pytest.approx(-1.0) == cohen_kappa_score(y, 1 - y)
    assert accuracy(y, 1 - y) == 0.0
    assert sensitivity(y, y) == specificity(y, y) == 1.0
    assert sensitivity(y, 1 - y) == specificity(y, 1 - y) == 0.0


def test_single_class_gives_nan() -> None:
    y = np.ones(5, dtype=int)
    calls = np.array([1, 1, 0, 1, 1])
    assert sensitivity(y, calls) == pytest.approx(recall_score(y, calls))
    assert math.isnan(specificity(y, calls))  # no negatives
    assert math.isnan(auroc(y, [0.1, 0.2, 0.3, 0.4, 0.5]))  # sklearn raises ValueError here
    assert cohen_kappa(y, calls) == pytest.approx(cohen_kappa_score(y, calls)) == 0.0
    assert math.isnan(cohen_kappa(y, y))  # chance agreement 1: sklearn gives nan too
    assert math.isnan(sensitivity(np.zeros(3, int), np.zeros(3, int)))
    assert math.isnan(accuracy([], []))


def test_kappa_hand_computed() -> None:
    counts = BinaryCounts(tp=20, fp=5, tn=15, fn=10)
    # p_o = 35/50 = 0.7; p_e = (30/50)(25/50) + (20/50)(25/50) = 0.5; kappa = 0.2/0.5 = 0.4
    assert counts.kappa == pytest.approx(0.4)
    y = [1] * 20 + [0] * 5 + [0] * 15 + [1] * 10
    calls = [1] * 20 + [1] * 5 + [0] * 15 + [0] * 10
    assert cohen_kappa(y, calls) == pytest.approx(0.4)


def test_weights_one_row_per_resample_match_repetition() -> None:
    y, scores, calls = _case(3, n=60, decimals=1)
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 4, size=(5, y.size)).astype(float)
    for name, function, sk_function, values in (
            ("accuracy", accuracy, accuracy_score, calls),
            ("sensitivity", sensitivity, recall_score, calls),
            ("kappa", cohen_kappa, cohen_kappa_score, calls),
            ("auroc", auroc, roc_auc_score, scores)):
        batch = function(y, values, weights)
        assert isinstance(batch, np.ndarray) and batch.shape == (5,), name
        for b in range(5):
            repeat = weights[b].astype(int)
            expected = sk_function(np.repeat(y, repeat), np.repeat(values, repeat))
            assert batch[b] == pytest.approx(expected), name
            assert function(y, values, weights[b]) == pytest.approx(expected), name


def test_confusion_matrix_matches_sklearn() -> None:
    labels = ["ELBOW", "HAND", "WRIST", "OTHER"]
    rng = np.random.default_rng(4)
    true = list(rng.choice(labels, 50))
    pred = list(rng.choice(labels, 50))
    expected = sk_confusion_matrix(true, pred, labels=labels)
    np.testing.assert_array_equal(confusion_matrix(true, pred, labels), expected)
    with pytest.raises(ValueError, match="FOOT"):
        confusion_matrix(["FOOT"], ["HAND"], labels)


def test_roc_curve_matches_sklearn() -> None:
    y, scores, _ = _case(5, decimals=2)
    fpr, tpr, thresholds = roc_curve(y, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)  # trapezoids
    assert area == pytest.approx(auroc(y, scores))


def test_reliability_bins() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.05, 0.15, 0.15, 0.95, 1.0]
    bins = reliability_bins(y, p, n_bins=10)
    assert bins.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins.mean_probability[1] == pytest.approx(0.15)
    assert bins.observed_rate[1] == pytest.approx(0.5)
    assert bins.observed_rate[9] == 1.0
    assert math.isnan(bins.mean_probability[5])
    # |0 - 0.05| * 1 + |0.5 - 0.15| * 2 + |1 - 0.975| * 2, over 5
    assert bins.expected_calibration_error == pytest.approx((0.05 + 0.7 + 0.05) / 5)


# --------------------------------------------------------------------------- bootstrap


def _studies(n_studies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-level labels, scores and study keys: 3 images per study."""
    rng = np.random.default_rng(seed)
    study_label = rng.integers(0, 2, n_studies)
    clusters = np.repeat(np.arange(n_studies), 3)
    y = study_label[clusters]
    scores = rng.normal(0.4 + 0.3 * y, 0.25)
    return y, scores, clusters


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data() -> None:
    widths = []
    for n_studies in (40, 400):
        y, scores, clusters = _studies(n_studies, seed=1)
        point = auroc(y, scores)
        low, high = bootstrap_ci(lambda w, y=y, s=scores: auroc(y, s, w), clusters,
                                 n_bootstrap=500, seed=0)
        assert low is not None and high is not None
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10)


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    y, scores, clusters = _studies(50, seed=2)

    def statistic(w: np.ndarray) -> np.ndarray:
        return np.asarray(auroc(y, scores, w))

    first = bootstrap_ci(statistic, clusters, n_bootstrap=200, seed=7)
    assert bootstrap_ci(statistic, clusters, n_bootstrap=200, seed=7) == first
    assert bootstrap_ci(statistic, clusters, n_bootstrap=200, seed=8) != first
    # Study keys are indexed in sorted order: shuffling the items does not change the draws.
    order = np.random.default_rng(0).permutation(y.size)
    shuffled = bootstrap_ci(lambda w: np.asarray(auroc(y[order], scores[order], w)),
                            clusters[order], n_bootstrap=200, seed=7)
    assert shuffled == pytest.approx(first)


def test_bootstrap_resamples_studies_not_images() -> None:
    # 10 studies of 100 images each: 5 studies entirely right, 5 entirely wrong. Resampling
    # studies, accuracy varies like a mean of 10 coin flips (CI about [0.2, 0.8]); resampling
    # the 1,000 images independently would give about [0.47, 0.53].
    clusters = np.repeat([f"study{k}" for k in range(10)], 100)
    y = np.ones(1000, dtype=int)
    calls = np.repeat([1, 0] * 5, 100)
    low, high = bootstrap_ci(lambda w: accuracy(y, calls, w), clusters, n_bootstrap=1000, seed=0)
    assert low is not None and high is not None
    assert low <= 0.5 <= high
    assert high - low > 0.4
    weights = cluster_bootstrap_weights(clusters, n_bootstrap=50, seed=0)
    per_study = weights.reshape(50, 10, 100)
    assert (per_study == per_study[:, :, :1]).all()  # a study's images move together
    assert (per_study[:, :, 0].sum(axis=1) == 10).all()  # each resample draws 10 studies


def test_percentile_interval_ignores_undefined_replicates() -> None:
    assert percentile_interval([np.nan, np.nan]) == (None, None)
    low, high = percentile_interval([np.nan, *np.linspace(0, 1, 101)], confidence=0.9)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.95)


def test_bootstrap_rejects_a_statistic_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="statistic must return"):
        bootstrap_ci(lambda w: np.zeros(3), np.arange(5), n_bootstrap=10)


def test_imports_neither_torch_nor_onnxruntime() -> None:
    code = ("import sys, models.evaluation.metrics, models.evaluation.report; "
            "bad = {'torch', 'onnxruntime', 'matplotlib', 'sklearn'} & set(sys.modules); "
            "sys.exit(sorted(bad) or 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
