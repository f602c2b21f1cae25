"""Pure classification metrics and a cluster (study-level) percentile bootstrap, in numpy.

Every binary metric takes an optional ``weights`` argument so that one function gives both the
point estimate and, vectorised, every bootstrap replicate at once:

* ``weights=None``: each item counts once; the result is a ``float``;
* ``weights`` of shape ``(n,)``: item ``i`` counts ``weights[i]`` times; a ``float``;
* ``weights`` of shape ``(B, n)``: one row per bootstrap resample; an array of ``B`` values.

A resample of clusters (studies) with replacement is a matrix of weights: the number of times
each cluster was drawn, copied onto each of its items (images). :func:`cluster_bootstrap_weights`
builds that matrix, so an image-level statistic is resampled by study, never by image, and the
images of one study stay together (MURA studies hold 1-4 correlated images).

Undefined values (a sensitivity without positives, an AUROC with one class present, a kappa
when chance agreement is total) are ``nan``; callers turn them into ``null`` in JSON.
Positive means abnormal (label 1).

This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

#: A point estimate (``float``) or one value per bootstrap resample (1-D array).
FloatOrArray = float | NDArray[np.float64]


def _as_bool(values: npt.ArrayLike, name: str) -> NDArray[np.bool_]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype != np.bool_:
        if array.size and not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 or booleans")
        array = array.astype(bool)
    return array


def _weights(weights: npt.ArrayLike | None, n: int) -> NDArray[np.float64]:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] != n:
        raise ValueError(f"weights must have shape (n,) or (B, n) with n={n}, got {array.shape}")
    return array


def _out(value: NDArray[np.float64]) -> FloatOrArray:
    return float(value) if value.ndim == 0 else value


def _divide(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> FloatOrArray:
    """``numerator / denominator``, ``nan`` where the denominator is 0."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    result = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=result, where=den != 0)
    return _out(result)


class BinaryCounts(NamedTuple):
    """Confusion counts of binary calls (positive = abnormal), possibly weighted.

    Each field is a ``float`` (or an array of one value per bootstrap resample).
    """

    tp: FloatOrArray
    fp: FloatOrArray
    tn: FloatOrArray
    fn: FloatOrArray

    @property
    def total(self) -> FloatOrArray:
        return _out(np.asarray(self.tp) + self.fp + self.tn + self.fn)

    @property
    def accuracy(self) -> FloatOrArray:
        """(TP + TN) / N."""
        return _divide(np.asarray(self.tp) + self.tn, np.asarray(self.total))

    @property
    def sensitivity(self) -> FloatOrArray:
        """True-positive rate (recall of abnormal); ``nan`` without positives."""
        return _divide(np.asarray(self.tp), np.asarray(self.tp) + self.fn)

    @property
    def specificity(self) -> FloatOrArray:
        """True-negative rate; ``nan`` without negatives."""
        return _divide(np.asarray(self.tn), np.asarray(self.tn) + self.fp)

    @property
    def kappa(self) -> FloatOrArray:
        """Cohen's kappa between labels and calls; ``nan`` when chance agreement is total."""
        tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in self)
        n = tp + fp + tn + fn
        # kappa = (p_o - p_e) / (1 - p_e), multiplied through by n**2 to avoid two divisions.
        observed = (tp + tn) * n
        expected = (tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)
        return _divide(observed - expected, n * n - expected)


def binary_counts(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                  weights: npt.ArrayLike | None = None) -> BinaryCounts:
    """Confusion counts of binary labels ``y_true`` against calls ``y_pred``.

    Parameters
    ----------
    y_true, y_pred : array_like of bool or {0, 1}, shape (n,)
        Labels and calls (1 = abnormal).
    weights : array_like, shape (n,) or (B, n), optional
        Item weights; one row per bootstrap resample when 2-D.

    Returns
    -------
    BinaryCounts
        Weighted TP, FP, TN, FN.
    """
    true = _as_bool(y_true, "y_true")
    pred = _as_bool(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} != {pred.size}")
    w = _weights(weights, true.size)
    cells = np.stack([true & pred, ~true & pred, ~true & ~pred, true & ~pred], axis=1)
    counts = w @ cells.astype(np.float64)
    return BinaryCounts(*(_out(counts[..., k]) for k in range(4)))


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
             weights: npt.ArrayLike | None = None) -> FloatOrArray:
    """Fraction of items whose call equals the label; any labels (binary or class names).

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
        Labels and calls, compared with ``==``.
    weights : array_like, shape (n,) or (B, n), optional
        Item weights; one row per bootstrap resample when 2-D.

    Returns
    -------
    float or ndarray
        Accuracy; ``nan`` for no items.
    """
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.ndim != 1 or true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {true.shape} "
                         f"and {pred.shape}")
    w = _weights(weights, true.size)
    return _divide(w @ (true == pred).astype(np.float64), w.sum(axis=-1))


def sensitivity(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                weights: npt.ArrayLike | None = None) -> FloatOrArray:
    """True-positive rate; ``nan`` without positives (see :func:`binary_counts`)."""
    return binary_counts(y_true, y_pred, weights).sensitivity


def specificity(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                weights: npt.ArrayLike | None = None) -> FloatOrArray:
    """True-negative rate; ``nan`` without negatives (see :func:`binary_counts`)."""
    return binary_counts(y_true, y_pred, weights).specificity


def cohen_kappa(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                weights: npt.ArrayLike | None = None) -> FloatOrArray:
    """Cohen's kappa of binary calls; ``nan`` when chance agreement is 1.

    See :func:`binary_counts` for the arguments.
    """
    return binary_counts(y_true, y_pred, weights).kappa


def auroc(y_true: npt.ArrayLike, scores: npt.ArrayLike,
          weights: npt.ArrayLike | None = None) -> FloatOrArray:
    """Area under the ROC curve as the Mann-Whitney statistic, ties counted one half.

    AUROC = P(score of a positive > score of a negative) + 0.5 P(equal), over all
    (positive, negative) pairs weighted by the product of their weights. One sort serves
    every bootstrap row: O(B n) after an O(n log n) sort.

    Parameters
    ----------
    y_true : array_like of bool or {0, 1}, shape (n,)
        Labels (1 = abnormal).
    scores : array_like of float, shape (n,)
        Scores, higher = more abnormal; must not hold ``nan``.
    weights : array_like, shape (n,) or (B, n), optional
        Item weights; one row per bootstrap resample when 2-D.

    Returns
    -------
    float or ndarray
        AUROC; ``nan`` when positives or negatives are missing (weigh zero).
    """
    true = _as_bool(y_true, "y_true")
    score = np.asarray(scores, dtype=np.float64)
    if score.shape != true.shape:
        raise ValueError(f"y_true and scores differ in shape: {true.shape} != {score.shape}")
    if np.isnan(score).any():
        raise ValueError("scores must not hold nan")
    w = _weights(weights, true.size)
    order = np.argsort(score, kind="stable")
    sorted_score, sorted_true = score[order], true[order]
    w_sorted = w[..., order]
    pos = w_sorted * sorted_true
    neg = w_sorted * ~sorted_true
    # Start and end (exclusive) of each item's run of tied scores in sorted order.
    start = np.searchsorted(sorted_score, sorted_score, side="left")
    end = np.searchsorted(sorted_score, sorted_score, side="right")
    cum_neg = np.concatenate([np.zeros((*neg.shape[:-1], 1)), np.cumsum(neg, axis=-1)], axis=-1)
    below = cum_neg[..., start]
    tied = cum_neg[..., end] - below
    numerator = np.sum(pos * (below + 0.5 * tied), axis=-1)
    return _divide(numerator, pos.sum(axis=-1) * neg.sum(axis=-1))


def roc_curve(y_true: npt.ArrayLike, scores: npt.ArrayLike
              ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """ROC points at every distinct score, as sklearn's ``roc_curve(drop_intermediate=False)``.

    Returns
    -------
    fpr, tpr, thresholds : ndarray
        Starting at (0, 0) with threshold ``inf``; a call is positive when score >= threshold.
        ``nan`` rates when a class is missing.
    """
    true = _as_bool(y_true, "y_true")
    score = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    score, true = score[order], true[order]
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1].astype(np.int64)
    tps = np.cumsum(true)[last].astype(np.float64)
    fps = np.cumsum(~true)[last].astype(np.float64)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    fpr = np.asarray(_divide(fps, np.asarray(fps[-1])), dtype=np.float64)
    tpr = np.asarray(_divide(tps, np.asarray(tps[-1])), dtype=np.float64)
    return fpr, tpr, np.r_[np.inf, score[last]]


def confusion_matrix(y_true: Sequence[Any], y_pred: Sequence[Any],
                     labels: Sequence[Any]) -> NDArray[np.int64]:
    """Counts of (true, predicted) pairs: rows true, columns predicted, both in ``labels`` order.

    Raises ``ValueError`` for a value not in ``labels``.
    """
    index = {label: k for k, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("labels must be distinct")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} != {len(y_pred)}")
    unknown = sorted({str(v) for v in (*y_true, *y_pred) if v not in index})
    if unknown:
        raise ValueError(f"values not in labels: {unknown}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    rows = np.fromiter((index[v] for v in y_true), dtype=np.int64, count=len(y_true))
    cols = np.fromiter((index[v] for v in y_pred), dtype=np.int64, count=len(y_pred))
    np.add.at(matrix, (rows, cols), 1)
    return matrix


class ReliabilityBins(NamedTuple):
    """Equal-width probability bins of a reliability (calibration) diagram.

    ``mean_probability`` and ``observed_rate`` are ``nan`` for an empty bin.
    """

    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    mean_probability: NDArray[np.float64]
    observed_rate: NDArray[np.float64]

    @property
    def expected_calibration_error(self) -> float:
        """Count-weighted mean of |observed rate - mean probability|; ``nan`` when empty."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        gaps = np.abs(self.observed_rate - self.mean_probability)
        return float(np.nansum(self.counts * gaps) / total)


def reliability_bins(y_true: npt.ArrayLike, probabilities: npt.ArrayLike,
                     n_bins: int = 10) -> ReliabilityBins:
    """Bin probabilities into ``n_bins`` equal bins of [0, 1] (the last one closed).

    Parameters
    ----------
    y_true : array_like of bool or {0, 1}, shape (n,)
        Labels (1 = abnormal).
    probabilities : array_like of float, shape (n,)
        Predicted probabilities of the positive class, in [0, 1].
    n_bins : int
        Number of bins.

    Returns
    -------
    ReliabilityBins
    """
    true = _as_bool(y_true, "y_true")
    prob = np.asarray(probabilities, dtype=np.float64)
    if prob.shape != true.shape:
        raise ValueError(f"y_true and probabilities differ in shape: {true.shape} != {prob.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if prob.size and (np.isnan(prob).any() or prob.min() < 0.0 or prob.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.floor(prob * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    prob_sum = np.bincount(index, weights=prob, minlength=n_bins)
    true_sum = np.bincount(index, weights=true.astype(np.float64), minlength=n_bins)
    mean_probability = np.asarray(_divide(prob_sum, counts.astype(np.float64)))
    observed_rate = np.asarray(_divide(true_sum, counts.astype(np.float64)))
    return ReliabilityBins(edges, counts, mean_probability, observed_rate)


def cluster_bootstrap_weights(clusters: npt.ArrayLike, *, n_bootstrap: int,
                              seed: int | np.random.Generator = 0) -> NDArray[np.float64]:
    """Resample clusters with replacement; return each item's weight in each resample.

    Parameters
    ----------
    clusters : array_like, shape (n,)
        Cluster (study) key of each item (image); items of one cluster share it.
    n_bootstrap : int
        Number of resamples ``B``.
    seed : int or numpy.random.Generator
        Seed; the same seed and the same set of cluster keys give the same resamples (clusters
        are indexed in sorted key order, so the order of the items does not matter).

    Returns
    -------
    ndarray, shape (B, n)
        ``weights[b, i]``: how many times the cluster of item ``i`` was drawn in resample ``b``
        (each resample draws as many clusters as there are).
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    keys = np.asarray(clusters)
    if keys.ndim != 1:
        raise ValueError(f"clusters must be 1-D, got shape {keys.shape}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    _, inverse = np.unique(keys, return_inverse=True)
    m = int(inverse.max()) + 1 if keys.size else 0
    if m == 0:
        return np.zeros((n_bootstrap, 0))
    draws = rng.integers(0, m, size=(n_bootstrap, m))
    offsets = (np.arange(n_bootstrap) * m)[:, None]
    per_cluster = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * m)
    return per_cluster.reshape(n_bootstrap, m)[:, inverse.ravel()].astype(np.float64)


def percentile_interval(samples: npt.ArrayLike, confidence: float = 0.95
                        ) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap replicates, ignoring undefined (``nan``) ones.

    Returns ``(None, None)`` when no replicate is defined.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(samples, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(statistic: Callable[[NDArray[np.float64]], npt.ArrayLike],
                 clusters: npt.ArrayLike, *, n_bootstrap: int = 1000,
                 confidence: float = 0.95, seed: int | np.random.Generator = 0
                 ) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval, resampling clusters (studies), not items.

    Parameters
    ----------
    statistic : callable
        ``statistic(weights)`` with ``weights`` of shape ``(B, n)`` (see
        :func:`cluster_bootstrap_weights`) returns ``B`` values, ``nan`` where undefined; the
        metric functions of this module do so when given ``weights``, e.g.
        ``lambda w: auroc(y, s, w)``. ``statistic(np.ones(n))`` is the point estimate.
    clusters : array_like, shape (n,)
        Cluster key of each item.
    n_bootstrap : int
        Number of resamples.
    confidence : float
        Coverage of the interval, e.g. 0.95.
    seed : int or numpy.random.Generator
        Seed of the resampling.

    Returns
    -------
    tuple of (float or None, float or None)
        Lower and upper bound; ``None`` when no resample gives a defined value.
    """
    weights = cluster_bootstrap_weights(clusters, n_bootstrap=n_bootstrap, seed=seed)
    values = np.asarray(statistic(weights), dtype=np.float64)
    if values.shape != (n_bootstrap,):
        raise ValueError(f"statistic must return {n_bootstrap} values for weights of shape "
                         f"{weights.shape}, got shape {values.shape}")
    return percentile_interval(values, confidence)
