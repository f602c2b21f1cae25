"""Evaluation metrics of the two-stage classifier and the report ``ossa evaluate`` writes.

The caller (``ossa evaluate``) runs the classifier on every image of a split and passes one
:class:`EvaluatedImage` per image to :func:`compute_metrics`, then to :func:`write_report`.

Definitions
-----------
*In scope*: an image or study whose TRUE class is in ``assessed_classes`` (has a stage-2
network). Images of other classes (e.g. ``OTHER``) only count in stage 1 and in abstention.

*Study probability*: the mean of its images' probabilities (MURA's rule, Rajpurkar et al.
2017). A study is called abnormal when its probability >= the threshold of its class.

*Merged two-stage* (what Ossa reports): each image is scored by the stage-2 network of the
class stage 1 named (routing errors included) and is called with that class's threshold; a
study's probability is the mean over its ASSESSED images, its class the most frequent predicted
class of those images (ties: the higher summed stage-1 probability, then the first seen; the
rule of :class:`models.serving.results.StudyPrediction`). Results are counted under the TRUE class.

**Rule for not-assessed studies**: merged metrics are computed over ASSESSED in-scope images
and studies only (a study is assessed when at least one of its images is); not-assessed
in-scope images and studies are left out of them -- neither counted normal nor abnormal -- and
reported beside every merged figure as ``not_assessed`` and ``coverage`` (assessed / in scope).
Assessed images of out-of-scope classes (OTHER named as a bone) are left out of the merged
metrics as well; they show as a not-assessed rate below 1 in ``abstention``.

*Oracle routing*: every in-scope image is scored by its TRUE class's network
(``oracle_probability``), with its true class's threshold, and nothing abstains. Merged minus
oracle therefore mixes the cost of routing errors and the effect of abstention.

*Confidence intervals*: 95% percentile bootstrap with ``n_bootstrap`` resamples of STUDIES
(images of a study move together, at image level as at study level), one set of resamples
(``seed``) shared by every figure, so differences are paired. Resamples in which a figure is
undefined are ignored.

``metrics.json`` (the dict :func:`compute_metrics` returns; ``null`` where undefined)
------------------------------------------------------------------------------------
``format``                 ``"ossa-evaluation/1"``
``n_images``, ``n_studies``  all rows / all studies
``classes``, ``assessed_classes``, ``thresholds``  as given
``bootstrap``              ``{resamples, seed, confidence, unit: "study", method: "percentile"}``
``not_assessed_rule``      the rule above, in words
``stage1``                 ``{n_images, accuracy: EST, confusion_matrix: {labels, rows: "true",
                           columns: "predicted", counts}}`` over all images (labels: ``classes``
                           then any other name seen, e.g. ``UNKNOWN``)
``merged``, ``oracle``     ``{"image": LEVEL, "study": LEVEL}``
LEVEL                      ``{per_class: {CLASS: GROUP}, pooled: GROUP, mean_over_classes: MEAN}``
GROUP                      ``{n, positives, negatives, tp, fp, tn, fn, n_in_scope, not_assessed,
                           coverage, accuracy: EST, sensitivity: EST, specificity: EST,
                           kappa: EST, auroc: EST}``; counts unweighted; ``n`` the items scored,
                           ``n_in_scope`` those of the (in-scope) class, ``not_assessed`` the
                           difference (for oracle: in-scope images without an oracle probability)
MEAN                       ``{accuracy: EST, ..., classes: {METRIC: [names]}}``: the unweighted
                           mean over the assessed classes where the figure is defined (the
                           paper's "average accuracy"); in a resample, over the classes where
                           it is defined there. ``pooled`` weighs every study (image) alike
EST                        ``{value, ci_low, ci_high}``
``merged_minus_oracle``    ``{"image"|"study": {pooled|mean_over_classes: {METRIC: EST}}}``
``abstention``             ``{per_class: {CLASS: {assessed_class, images, images_not_assessed,
                           image_rate, studies, studies_not_assessed, study_rate}},
                           coverage: {images: EST, studies: EST}}``; rates per TRUE class, all
                           classes (for OTHER a high rate is the goal)
``calibration``            ``{image: {bins: [{low, high, n, mean_probability, observed_rate}],
                           expected_calibration_error}}``, merged image-level probabilities

This module imports neither torch nor onnxruntime; matplotlib is imported (Agg canvas, no
pyplot state) only when plots are drawn.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.evaluation.metrics import (
    auroc,
    binary_counts,
    cluster_bootstrap_weights,
    confusion_matrix,
    percentile_interval,
    reliability_bins,
    roc_curve,
)

logger = logging.getLogger(__name__)

FORMAT = "ossa-evaluation/1"
CONFIDENCE = 0.95
#: Published reference figures, both measured on MURA-v1.1.
PAPER_AVERAGE_ACCURACY = 0.7342  # El-Saadawy et al., AICV 2020
MURA_BASELINE_KAPPA = 0.705  # DenseNet-169, Rajpurkar et al. 2017, study level
METRICS = ("accuracy", "sensitivity", "specificity", "kappa", "auroc")
NOT_ASSESSED_RULE = (
    "Merged metrics cover assessed in-scope images and studies only (a study is assessed when "
    "at least one of its images is); not-assessed ones are neither normal nor abnormal and are "
    "reported as not_assessed and coverage beside them. Oracle metrics cover every in-scope "
    "image and study."
)
PREDICTION_COLUMNS = ("path", "true_type", "pred_type", "type_probability", "assessed",
                      "abnormal_probability", "label", "study", "oracle_probability")
ROC_PNG = "roc_study_merged.png"
CONFUSION_PNG = "stage1_confusion_matrix.png"
RELIABILITY_PNG = "reliability_image_merged.png"


def _check_probability(name: str, value: object) -> None:
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not 0.0 <= float(value) <= 1.0):  # also rejects nan
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class EvaluatedImage:
    """One evaluated image: the truth and what the two-stage classifier said.

    Parameters
    ----------
    path : str
        Image path as given.
    study : str
        Study key, unique in the dataset; the images of one study share it.
    true_type : str
        True class (body part) name.
    label : int
        The study's label: 1 = abnormal, 0 = normal.
    pred_type : str
        Class named by stage 1.
    type_probability : float
        Stage-1 softmax probability of ``pred_type``.
    assessed : bool
        ``False`` when the classifier abstained ("not assessed").
    abnormal_probability : float or None
        Routed two-stage probability of abnormality; ``None`` exactly when not assessed.
    oracle_probability : float or None
        Probability from the TRUE class's stage-2 network; ``None`` when the true class is not
        assessed.
    """

    path: str
    study: str
    true_type: str
    label: int
    pred_type: str
    type_probability: float
    assessed: bool
    abnormal_probability: float | None
    oracle_probability: float | None

    def __post_init__(self) -> None:
        for name in ("path", "study", "true_type", "pred_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        _check_probability("type_probability", self.type_probability)
        if not isinstance(self.assessed, bool):
            raise ValueError(f"assessed must be a bool, got {self.assessed!r}")
        if self.assessed:
            _check_probability("abnormal_probability", self.abnormal_probability)
        elif self.abnormal_probability is not None:
            raise ValueError("abnormal_probability must be None for an image not assessed, "
                             f"got {self.abnormal_probability!r}")
        if self.oracle_probability is not None:
            _check_probability("oracle_probability", self.oracle_probability)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Tables:
    """Rows as numpy arrays, per image and per study (studies in sorted key order)."""

    study_keys: NDArray[Any]
    img_study: NDArray[np.int64]
    img_true: NDArray[np.int64]  # index into classes
    img_label: NDArray[np.bool_]
    img_in_scope: NDArray[np.bool_]
    img_assessed: NDArray[np.bool_]
    img_merged_p: NDArray[np.float64]  # nan when not assessed
    img_merged_call: NDArray[np.bool_]
    img_oracle_p: NDArray[np.float64]  # nan when missing
    img_oracle_call: NDArray[np.bool_]
    st_true: NDArray[np.int64]
    st_label: NDArray[np.bool_]
    st_in_scope: NDArray[np.bool_]
    st_assessed: NDArray[np.bool_]
    st_merged_p: NDArray[np.float64]
    st_merged_call: NDArray[np.bool_]
    st_has_oracle: NDArray[np.bool_]
    st_oracle_p: NDArray[np.float64]
    st_oracle_call: NDArray[np.bool_]


def _study_class(images: Sequence[EvaluatedImage]) -> str:
    """Most frequent predicted class; ties: higher summed probability, then first seen."""
    count: dict[str, int] = {}
    confidence: dict[str, float] = {}
    for image in images:
        count[image.pred_type] = count.get(image.pred_type, 0) + 1
        confidence[image.pred_type] = confidence.get(image.pred_type, 0.0) + image.type_probability
    return max(count, key=lambda name: (count[name], confidence[name]))


def _group_mean(index: NDArray[np.int64], values: NDArray[np.float64], m: int
                ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Mean of the non-nan ``values`` per group, and whether a group has any."""
    present = ~np.isnan(values)
    count = np.bincount(index, weights=present.astype(np.float64), minlength=m)
    total = np.bincount(index, weights=np.where(present, values, 0.0), minlength=m)
    mean = np.full(m, np.nan)
    np.divide(total, count, out=mean, where=count > 0)
    return mean, count > 0


def _tables(rows: Sequence[EvaluatedImage], classes: Sequence[str],
            assessed_classes: Sequence[str], thresholds: Mapping[str, float]) -> _Tables:
    class_index = {name: k for k, name in enumerate(classes)}
    scope = set(assessed_classes)
    for row in rows:
        if row.true_type not in class_index:
            raise ValueError(f"true_type {row.true_type!r} of {row.path} is not in classes")
        if row.assessed and row.pred_type not in thresholds:
            raise ValueError(f"{row.path} is assessed as {row.pred_type!r}, which has no "
                             "threshold")
    study_keys, img_study = np.unique(np.array([r.study for r in rows]), return_inverse=True)
    img_study = img_study.ravel().astype(np.int64)
    m = len(study_keys)
    img_true = np.array([class_index[r.true_type] for r in rows], dtype=np.int64)
    img_label = np.array([r.label == 1 for r in rows], dtype=bool)

    st_true = np.zeros(m, dtype=np.int64)
    st_true[img_study] = img_true
    st_label = np.zeros(m, dtype=bool)
    st_label[img_study] = img_label
    for name, per_image, per_study in (("true_type", img_true, st_true),
                                       ("label", img_label, st_label)):
        bad = np.flatnonzero(per_study[img_study] != per_image)
        if bad.size:
            raise ValueError(f"the images of study {study_keys[img_study[bad[0]]]!r} differ in "
                             f"{name}")

    img_in_scope = np.array([r.true_type in scope for r in rows], dtype=bool)
    img_assessed = np.array([r.assessed for r in rows], dtype=bool)
    nan = math.nan
    img_merged_p = np.array([r.abnormal_probability if r.assessed else nan for r in rows],
                            dtype=np.float64)
    merged_threshold = np.array([thresholds[r.pred_type] if r.assessed else nan for r in rows],
                                dtype=np.float64)
    img_oracle_p = np.array([nan if r.oracle_probability is None or r.true_type not in scope
                             else r.oracle_probability for r in rows], dtype=np.float64)
    oracle_threshold = np.array([thresholds[r.true_type] if r.true_type in scope else nan
                                 for r in rows], dtype=np.float64)

    st_merged_p, st_assessed = _group_mean(img_study, img_merged_p, m)
    st_oracle_p, st_has_oracle = _group_mean(img_study, img_oracle_p, m)
    by_study: list[list[EvaluatedImage]] = [[] for _ in range(m)]
    for row, k in zip(rows, img_study, strict=True):
        if row.assessed:
            by_study[k].append(row)
    st_merged_threshold = np.array([thresholds[_study_class(images)] if images else nan
                                    for images in by_study], dtype=np.float64)
    st_oracle_threshold = np.array([thresholds.get(classes[int(c)], nan) for c in st_true],
                                   dtype=np.float64)
    with np.errstate(invalid="ignore"):  # nan >= nan is False, and those are masked out anyway
        return _Tables(
            study_keys=study_keys, img_study=img_study, img_true=img_true, img_label=img_label,
            img_in_scope=img_in_scope, img_assessed=img_assessed, img_merged_p=img_merged_p,
            img_merged_call=img_merged_p >= merged_threshold, img_oracle_p=img_oracle_p,
            img_oracle_call=img_oracle_p >= oracle_threshold, st_true=st_true, st_label=st_label,
            st_in_scope=np.isin(st_true, [class_index[c] for c in scope]),
            st_assessed=st_assessed, st_merged_p=st_merged_p,
            st_merged_call=st_merged_p >= st_merged_threshold, st_has_oracle=st_has_oracle,
            st_oracle_p=st_oracle_p, st_oracle_call=st_oracle_p >= st_oracle_threshold,
        )


# --------------------------------------------------------------------------- metrics


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _estimate(value: Any, samples: NDArray[np.float64]) -> dict[str, float | None]:
    point = _number(value)
    low, high = percentile_interval(samples, CONFIDENCE) if point is not None else (None, None)
    return {"value": point, "ci_low": low, "ci_high": high}


@dataclass(frozen=True)
class _Level:
    """The items of one (routing, level) pair: which are scored, with what."""

    label: NDArray[np.bool_]
    score: NDArray[np.float64]
    call: NDArray[np.bool_]
    true_class: NDArray[np.int64]
    scored: NDArray[np.bool_]  # items that enter the metrics
    in_scope: NDArray[np.bool_]
    boot: NDArray[np.float64]  # (B, n) resample weights


def _group(level: _Level, mask: NDArray[np.bool_]
           ) -> tuple[dict[str, Any], dict[str, NDArray[np.float64]]]:
    """Metrics of the scored items under ``mask``, and their bootstrap replicates."""
    sel = level.scored & mask
    y, call, score, boot = level.label[sel], level.call[sel], level.score[sel], level.boot[:, sel]
    counts = binary_counts(y, call)
    replicas = binary_counts(y, call, boot)
    points = {"accuracy": counts.accuracy, "sensitivity": counts.sensitivity,
              "specificity": counts.specificity, "kappa": counts.kappa, "auroc": auroc(y, score)}
    replicated = {"accuracy": replicas.accuracy, "sensitivity": replicas.sensitivity,
                  "specificity": replicas.specificity, "kappa": replicas.kappa,
                  "auroc": auroc(y, score, boot)}
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in replicated.items()}
    n, n_in_scope = int(sel.sum()), int((level.in_scope & mask).sum())
    entry: dict[str, Any] = {
        "n": n, "positives": int(y.sum()), "negatives": int((~y).sum()),
        "tp": int(counts.tp), "fp": int(counts.fp), "tn": int(counts.tn), "fn": int(counts.fn),
        "n_in_scope": n_in_scope, "not_assessed": n_in_scope - n,
        "coverage": n / n_in_scope if n_in_scope else None,
    }
    entry.update({k: _estimate(points[k], samples[k]) for k in METRICS})
    return entry, samples


def _nanmean_rows(stack: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean over axis 0 ignoring nan; nan where a column has no value (no warning)."""
    present = ~np.isnan(stack)
    count = present.sum(axis=0)
    total = np.where(present, stack, 0.0).sum(axis=0)
    out = np.full(count.shape, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _level_metrics(level: _Level, assessed_idx: Sequence[tuple[str, int]]
                   ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """LEVEL dict, and point values + replicates of ``pooled`` and ``mean_over_classes``."""
    per_class: dict[str, Any] = {}
    class_samples: dict[str, dict[str, NDArray[np.float64]]] = {}
    for name, k in assessed_idx:
        per_class[name], class_samples[name] = _group(level, level.true_class == k)
    pooled, pooled_samples = _group(level, np.ones_like(level.scored))
    mean: dict[str, Any] = {}
    mean_raw: dict[str, Any] = {}
    for metric in METRICS:
        names = [n for n in per_class if per_class[n][metric]["value"] is not None]
        if names:
            point = float(np.mean([per_class[n][metric]["value"] for n in names]))
            samples = _nanmean_rows(np.stack([class_samples[n][metric] for n in names]))
        else:
            point, samples = math.nan, np.full(level.boot.shape[0], np.nan)
        mean[metric] = _estimate(point, samples)
        mean_raw[metric] = (point, samples)
        mean.setdefault("classes", {})[metric] = names
    raw = {"pooled": {m: (pooled[m]["value"], pooled_samples[m]) for m in METRICS},
           "mean_over_classes": mean_raw}
    return {"per_class": per_class, "pooled": pooled, "mean_over_classes": mean}, raw


def _difference(first: tuple[Any, NDArray[np.float64]], second: tuple[Any, NDArray[np.float64]]
                ) -> dict[str, float | None]:
    (a, a_samples), (b, b_samples) = first, second
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return {"value": None, "ci_low": None, "ci_high": None}
    return _estimate(a - b, a_samples - b_samples)


def _ratio_estimate(numerator: NDArray[np.bool_], denominator: NDArray[np.bool_],
                    boot: NDArray[np.float64]) -> dict[str, float | None]:
    num, den = numerator.astype(np.float64), denominator.astype(np.float64)
    point = num.sum() / den.sum() if den.sum() else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = (boot @ num) / (boot @ den)
    return _estimate(point, samples)


def compute_metrics(rows: Iterable[EvaluatedImage], *, classes: Sequence[str],
                    assessed_classes: Sequence[str], thresholds: Mapping[str, float],
                    n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of one evaluated split, JSON-ready (see the module docstring for the keys).

    Parameters
    ----------
    rows : iterable of EvaluatedImage
        One row per image.
    classes : sequence of str
        Stage-1 class order, e.g. ELBOW, FINGER, ..., WRIST, OTHER.
    assessed_classes : sequence of str
        Classes with a stage-2 network (subset of ``classes``).
    thresholds : mapping of str to float
        Operating threshold per assessed class: abnormal when probability >= threshold.
    n_bootstrap : int
        Number of study resamples for the confidence intervals.
    seed : int
        Seed of the resampling; the same seed gives the same numbers.

    Returns
    -------
    dict
        ``metrics.json``'s content; undefined values are ``None``, never ``nan``.
    """
    rows = tuple(rows)
    if not rows:
        raise ValueError("rows must hold at least one EvaluatedImage")
    if not all(isinstance(r, EvaluatedImage) for r in rows):
        raise TypeError("rows must be EvaluatedImage instances")
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct and non-empty, got {classes}")
    assessed = [c for c in classes if c in set(assessed_classes)]
    if set(assessed_classes) - set(classes):
        raise ValueError(f"assessed_classes not in classes: "
                         f"{sorted(set(assessed_classes) - set(classes))}")
    for name in assessed:
        if name not in thresholds:
            raise ValueError(f"thresholds lack assessed class {name!r}")
        _check_probability(f"thresholds[{name!r}]", thresholds[name])
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")

    t = _tables(rows, classes, assessed, thresholds)
    m = len(t.study_keys)
    study_boot = cluster_bootstrap_weights(np.arange(m), n_bootstrap=n_bootstrap, seed=seed)
    image_boot = study_boot[:, t.img_study]
    logger.info("evaluating %s images in %s studies, %s bootstrap resamples",
                len(rows), m, n_bootstrap)

    # Stage 1, over every image.
    pred_names = [r.pred_type for r in rows]
    true_names = [r.true_type for r in rows]
    labels = classes + sorted(set(pred_names) - set(classes))
    correct = np.array([p == q for p, q in zip(pred_names, true_names, strict=True)], dtype=float)
    stage1 = {
        "n_images": len(rows),
        "accuracy": _estimate(correct.mean(), (image_boot @ correct) / image_boot.sum(axis=1)),
        "confusion_matrix": {"labels": labels, "rows": "true", "columns": "predicted",
                             "counts": confusion_matrix(true_names, pred_names, labels).tolist()},
    }

    levels = {
        "merged": {
            "image": _Level(t.img_label, np.nan_to_num(t.img_merged_p), t.img_merged_call,
                            t.img_true, t.img_in_scope & t.img_assessed, t.img_in_scope,
                            image_boot),
            "study": _Level(t.st_label, np.nan_to_num(t.st_merged_p), t.st_merged_call,
                            t.st_true, t.st_in_scope & t.st_assessed, t.st_in_scope, study_boot),
        },
        "oracle": {
            "image": _Level(t.img_label, np.nan_to_num(t.img_oracle_p), t.img_oracle_call,
                            t.img_true, t.img_in_scope & ~np.isnan(t.img_oracle_p),
                            t.img_in_scope, image_boot),
            "study": _Level(t.st_label, np.nan_to_num(t.st_oracle_p), t.st_oracle_call,
                            t.st_true, t.st_in_scope & t.st_has_oracle, t.st_in_scope,
                            study_boot),
        },
    }
    assessed_idx = [(name, classes.index(name)) for name in assessed]
    results: dict[str, dict[str, Any]] = {"merged": {}, "oracle": {}}
    raw: dict[str, dict[str, Any]] = {"merged": {}, "oracle": {}}
    for routing, by_level in levels.items():
        for level_name, level in by_level.items():
            results[routing][level_name], raw[routing][level_name] = _level_metrics(
                level, assessed_idx)
    difference = {
        level_name: {
            summary: {metric: _difference(raw["merged"][level_name][summary][metric],
                                          raw["oracle"][level_name][summary][metric])
                      for metric in METRICS}
            for summary in ("pooled", "mean_over_classes")
        }
        for level_name in ("image", "study")
    }

    abstention: dict[str, Any] = {}
    for k, name in enumerate(classes):
        img, st = t.img_true == k, t.st_true == k
        img_na, st_na = int((img & ~t.img_assessed).sum()), int((st & ~t.st_assessed).sum())
        abstention[name] = {
            "assessed_class": name in assessed,
            "images": int(img.sum()), "images_not_assessed": img_na,
            "image_rate": img_na / int(img.sum()) if img.any() else None,
            "studies": int(st.sum()), "studies_not_assessed": st_na,
            "study_rate": st_na / int(st.sum()) if st.any() else None,
        }
    coverage = {
        "images": _ratio_estimate(t.img_in_scope & t.img_assessed, t.img_in_scope, image_boot),
        "studies": _ratio_estimate(t.st_in_scope & t.st_assessed, t.st_in_scope, study_boot),
    }

    scored = t.img_in_scope & t.img_assessed
    bins = reliability_bins(t.img_label[scored], t.img_merged_p[scored], n_bins=10)
    calibration = {"image": {
        "bins": [{"low": float(bins.edges[i]), "high": float(bins.edges[i + 1]),
                  "n": int(bins.counts[i]),
                  "mean_probability": _number(bins.mean_probability[i]),
                  "observed_rate": _number(bins.observed_rate[i])}
                 for i in range(len(bins.counts))],
        "expected_calibration_error": _number(bins.expected_calibration_error),
    }}

    metrics = {
        "format": FORMAT,
        "n_images": len(rows),
        "n_studies": m,
        "classes": classes,
        "assessed_classes": assessed,
        "thresholds": {name: float(thresholds[name]) for name in assessed},
        "bootstrap": {"resamples": n_bootstrap, "seed": seed, "confidence": CONFIDENCE,
                      "unit": "study", "method": "percentile"},
        "not_assessed_rule": NOT_ASSESSED_RULE,
        "stage1": stage1,
        "merged": results["merged"],
        "oracle": results["oracle"],
        "merged_minus_oracle": difference,
        "abstention": {"per_class": abstention, "coverage": coverage},
        "calibration": calibration,
    }
    return _json_ready(metrics)


def _json_ready(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and every nan as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- report


def _fmt(value: Any, *, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def _fmt_est(est: Mapping[str, Any] | None, *, percent: bool = False) -> str:
    if not est or est.get("value") is None:
        return "-"
    text = _fmt(est["value"], percent=percent)
    if est.get("ci_low") is not None:
        low, high = _fmt(est["ci_low"], percent=percent), _fmt(est["ci_high"], percent=percent)
        text += f" [{low}, {high}]"
    return text


def _plot_roc(rows: Sequence[EvaluatedImage], metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = _tables(rows, metrics["classes"], metrics["assessed_classes"], metrics["thresholds"])
    fig = Figure(figsize=(6.5, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
    study_metrics = metrics["merged"]["study"]["per_class"]
    for name in metrics["assessed_classes"]:
        k = metrics["classes"].index(name)
        sel = (t.st_true == k) & t.st_in_scope & t.st_assessed
        y = t.st_label[sel]
        if not y.any() or y.all():
            continue  # ROC undefined with one class
        fpr, tpr, _ = roc_curve(y, t.st_merged_p[sel])
        entry = study_metrics[name]
        (line,) = ax.plot(fpr, tpr, lw=1.5,
                          label=f"{name} AUROC {_fmt(entry['auroc']['value'])} (n={entry['n']})")
        sens, spec = entry["sensitivity"]["value"], entry["specificity"]["value"]
        if sens is not None and spec is not None:
            ax.plot([1 - spec], [sens], "o", color=line.get_color(), ms=5)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title="Study-level ROC, merged two-stage (dots: operating thresholds)")
    ax.title.set_fontsize(10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _plot_confusion(metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = metrics["stage1"]["confusion_matrix"]
    counts = np.asarray(cm["counts"], dtype=np.int64)
    labels = cm["labels"]
    size = 1.8 + 0.6 * len(labels)
    fig = Figure(figsize=(size + 1.2, size), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted (stage 1)", ylabel="true")
    accuracy = metrics["stage1"]["accuracy"]["value"]
    ax.set_title(f"Stage-1 confusion matrix (accuracy {_fmt(accuracy, percent=True)})",
                 fontsize=10)
    top = counts.max() if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                color="white" if top and value > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)


def _plot_reliability(metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    calibration = metrics["calibration"]["image"]
    bins = calibration["bins"]
    fig = Figure(figsize=(6.0, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax_counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect calibration")
    full = [b for b in bins if b["n"]]
    ax.plot([b["mean_probability"] for b in full], [b["observed_rate"] for b in full], "o-",
            label=f"merged, ECE {_fmt(calibration['expected_calibration_error'])}")
    for b in full:
        ax.annotate(f"n={b['n']}", (b["mean_probability"], b["observed_rate"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed abnormal fraction",
           title="Reliability of image-level abnormality probabilities (10 bins)")
    ax.title.set_fontsize(10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    ax_counts.bar([b["low"] for b in bins], [b["n"] for b in bins], width=width, align="edge",
                  color="0.6", edgecolor="white")
    ax_counts.set(xlabel="predicted probability of abnormality", ylabel="images")
    fig.tight_layout()
    fig.savefig(path)


def _write_predictions(rows: Sequence[EvaluatedImage], path: Path) -> None:
    def number(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for r in rows:
            writer.writerow([r.path, r.true_type, r.pred_type, number(r.type_probability),
                             int(r.assessed), number(r.abnormal_probability), r.label, r.study,
                             number(r.oracle_probability)])


def _markdown(metrics: Mapping[str, Any], *, bundle_version: str, data_description: str) -> str:
    merged, oracle = metrics["merged"], metrics["oracle"]
    boot = metrics["bootstrap"]
    abst = metrics["abstention"]
    cover = abst["coverage"]
    lines = [
        "# Ossa evaluation report",
        "",
        "> **Research software output, not for diagnosis.** These figures describe a model on "
        "a dataset; they are not a clinical validation.",
        "",
        f"- Model bundle: `{bundle_version}`",
        f"- Data: {data_description}",
        f"- {metrics['n_images']} images in {metrics['n_studies']} studies; "
        f"{100 * boot['confidence']:.0f}% percentile bootstrap intervals from "
        f"{boot['resamples']} resamples of studies (seed {boot['seed']}).",
        "",
        "## Against the published figures",
        "",
        "| figure | published, on MURA-v1.1 | this evaluation (merged two-stage) |",
        "|---|---|---|",
        "| average accuracy (unweighted mean over bone types) | 73.42% (El-Saadawy et al., "
        "AICV 2020) | study "
        f"{_fmt_est(merged['study']['mean_over_classes']['accuracy'], percent=True)}; image "
        f"{_fmt_est(merged['image']['mean_over_classes']['accuracy'], percent=True)} |",
        "| study-level Cohen's kappa | 0.705 (DenseNet-169 baseline, Rajpurkar et al. 2017) | "
        f"{_fmt_est(merged['study']['pooled']['kappa'])} |",
        "",
        f"The published figures were measured on MURA-v1.1; these come from {data_description}. "
        "Different data, so the comparison shows scale only, not that one model is better.",
        "",
        "## Stage 1 (body part)",
        "",
        f"Accuracy over all {metrics['stage1']['n_images']} images: "
        f"{_fmt_est(metrics['stage1']['accuracy'], percent=True)}.",
        "",
        "## Per class, study level, merged two-stage",
        "",
        "| class | studies | accuracy | sensitivity | specificity | kappa | AUROC | "
        "not assessed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in merged["study"]["per_class"].items():
        rate = abst["per_class"][name]["study_rate"]
        lines.append(
            f"| {name} | {g['n']} | {_fmt_est(g['accuracy'], percent=True)} | "
            f"{_fmt_est(g['sensitivity'], percent=True)} | "
            f"{_fmt_est(g['specificity'], percent=True)} | {_fmt_est(g['kappa'])} | "
            f"{_fmt_est(g['auroc'])} | {_fmt(rate, percent=True)} |")
    mean, pooled = merged["study"]["mean_over_classes"], merged["study"]["pooled"]
    lines.append(
        f"| mean over classes | | {_fmt_est(mean['accuracy'], percent=True)} | "
        f"{_fmt_est(mean['sensitivity'], percent=True)} | "
        f"{_fmt_est(mean['specificity'], percent=True)} | {_fmt_est(mean['kappa'])} | "
        f"{_fmt_est(mean['auroc'])} | |")
    uncovered = None if pooled["coverage"] is None else 1.0 - pooled["coverage"]
    lines.append(
        f"| pooled | {pooled['n']} | {_fmt_est(pooled['accuracy'], percent=True)} | "
        f"{_fmt_est(pooled['sensitivity'], percent=True)} | "
        f"{_fmt_est(pooled['specificity'], percent=True)} | {_fmt_est(pooled['kappa'])} | "
        f"{_fmt_est(pooled['auroc'])} | {_fmt(uncovered, percent=True)} |")
    lines += [
        "",
        "## Merged two-stage vs oracle routing",
        "",
        "Oracle: every in-scope image scored by its true class's network, nothing abstains. "
        "Merged: routed by stage 1, over assessed studies only.",
        "",
        "| level | figure | merged | oracle | merged - oracle |",
        "|---|---|---|---|---|",
    ]
    diff = metrics["merged_minus_oracle"]
    for level in ("study", "image"):
        for summary, metric, label, pct in (
                ("mean_over_classes", "accuracy", "mean accuracy", True),
                ("pooled", "accuracy", "pooled accuracy", True),
                ("pooled", "kappa", "pooled kappa", False),
                ("pooled", "auroc", "pooled AUROC", False)):
            lines.append(
                f"| {level} | {label} | {_fmt_est(merged[level][summary][metric], percent=pct)} "
                f"| {_fmt_est(oracle[level][summary][metric], percent=pct)} | "
                f"{_fmt_est(diff[level][summary][metric], percent=pct)} |")
    lines += [
        "",
        "## Abstention (not assessed)",
        "",
        f"Coverage of in-scope studies: {_fmt_est(cover['studies'], percent=True)}; of images: "
        f"{_fmt_est(cover['images'], percent=True)}. {metrics['not_assessed_rule']}",
        "",
        "| true class | in scope | images | not assessed | studies | not assessed |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in abst["per_class"].items():
        lines.append(
            f"| {name} | {'yes' if a['assessed_class'] else 'no (high rate is the goal)'} | "
            f"{a['images']} | {_fmt(a['image_rate'], percent=True)} | {a['studies']} | "
            f"{_fmt(a['study_rate'], percent=True)} |")
    lines += _localisation_markdown(metrics.get("localisation"))
    lines += [
        "",
        "## Figures",
        "",
        f"![Study-level ROC per class]({ROC_PNG})",
        f"![Stage-1 confusion matrix]({CONFUSION_PNG})",
        f"![Reliability diagram]({RELIABILITY_PNG})",
        "",
        "Per-image results: `predictions.csv`; every figure with its interval: `metrics.json`.",
        "",
    ]
    return "\n".join(lines)


def _localisation_markdown(localisation: Mapping[str, Any] | None) -> list[str]:
    """The localisation section (:mod:`models.evaluation.localisation`), when the data has boxes."""
    if not localisation:
        return []
    lines = ["", "## Localisation (findings against the annotated boxes)", "",
             f"{localisation['definition']}. Findings per film: `findings.csv`; the FROC curve: "
             "`froc.png`.", "",
             "| class | fractured films (boxes) | hit rate | hit rate, IoU >= 0.1 | pointing hit "
             "rate | normal films | findings per normal film |",
             "|---|---|---|---|---|---|---|"]
    for name, c in localisation["classes"].items():
        lines.append(
            f"| {name} | {c['fractured_annotated_films']} ({c['annotated_boxes']}) | "
            f"{_fmt_est(c['hit_rate'])} | {_fmt_est(c['hit_rate_iou_0.1'])} | "
            f"{_fmt_est(c['pointing_hit_rate'])} | {c['normal_films']} | "
            f"{_fmt(c['findings_per_normal_film'])} |")
    return lines


def write_report(rows: Iterable[EvaluatedImage], out_dir: Path, *, metrics: Mapping[str, Any],
                 bundle_version: str, data_description: str) -> list[Path]:
    """Write ``predictions.csv``, ``metrics.json``, the PNG plots and ``report.md``.

    Parameters
    ----------
    rows : iterable of EvaluatedImage
        The rows ``metrics`` was computed from.
    out_dir : pathlib.Path
        Report folder, created if missing; files of the same names are replaced.
    metrics : mapping
        What :func:`compute_metrics` returned for ``rows``.
    bundle_version : str
        Model identification, e.g. ``"demo@0123456789ab"``.
    data_description : str
        What the data is, e.g. ``"the procedural phantom (says nothing about real
        radiographs)"`` or ``"FracAtlas validation split"``.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    rows = tuple(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("predictions.csv", "metrics.json", ROC_PNG,
                                         CONFUSION_PNG, RELIABILITY_PNG, "report.md")]
    predictions, metrics_json, roc, confusion, reliability, report = paths
    _write_predictions(rows, predictions)
    metrics_json.write_text(json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + "\n",
                            encoding="utf-8")
    _plot_roc(rows, metrics, roc)
    _plot_confusion(metrics, confusion)
    _plot_reliability(metrics, reliability)
    report.write_text(_markdown(metrics, bundle_version=bundle_version,
                                data_description=data_description), encoding="utf-8")
    logger.info("wrote the evaluation report to %s", out_dir)
    return paths
