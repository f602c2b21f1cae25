"""Tests of the pure threshold-choosing functions of models.training.calibrate."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from models.serving.results import ImagePrediction
from models.training.calibrate import (
    DEFAULT_THRESHOLD,
    choose_threshold,
    parse_threshold_rule,
    study_probabilities,
)


def random_studies(seed: int, n: int = 60, decimals: int | None = None
                   ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Labels and overlapping probabilities (rounded to make ties when ``decimals``)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    probabilities = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0.0, 1.0)
    if decimals is not None:
        probabilities = np.round(probabilities, decimals)
    return labels, probabilities


def halfway_below(probabilities: NDArray[np.float64], candidate: float) -> float:
    """Where choose_threshold puts a threshold chosen at ``candidate``: halfway down to the
    next lower probability (the candidate itself when none is lower)."""
    lower = probabilities[probabilities < candidate]
    return (candidate + lower.max()) / 2 if len(lower) else candidate


def roc_points(labels: NDArray[np.int64], probabilities: NDArray[np.float64]
               ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Every candidate threshold (descending) with its FPR and TPR for "abnormal when p >= t"."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    return thresholds[finite], fpr[finite], tpr[finite]


# --- parse_threshold_rule --------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["youden", "sensitivity=0.9", "sensitivity=1",
                                  "sensitivity=1.0", "sensitivity=0.75", "sensitivity=0.05",
                                  "0.5", "0", "1", "0.25", "1.0"])
def test_valid_rules_are_returned_unchanged(rule: str) -> None:
    assert parse_threshold_rule(rule) == rule


@pytest.mark.parametrize("rule", ["", "Youden", "youden ", "sensitivity", "sensitivity=",
                                  "sensitivity=1.5", "sensitivity=abc", "sensitivity=-0.1",
                                  "sensitivity=0.9\n", "sensitivity=0", "sensitivity=0.0",
                                  "specificity=0.9", "1.5", "-0.1",
                                  "nan", "inf", "half"])
def test_bad_rules_raise_argument_type_error(rule: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="threshold must be 'youden'"):
        parse_threshold_rule(rule)


def test_parse_threshold_rule_works_as_an_argparse_type() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=parse_threshold_rule, default="0.5")
    assert parser.parse_args(["--threshold", "sensitivity=0.9"]).threshold == "sensitivity=0.9"
    with pytest.raises(SystemExit):
        parser.parse_args(["--threshold", "2"])


# --- choose_threshold ------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["0.5", "0.3", "0", "1"])
def test_fixed_rule_returns_the_number(rule: str) -> None:
    labels, probabilities = random_studies(0)
    assert choose_threshold(labels, probabilities, rule) == float(rule)


def test_fixed_rule_ignores_single_class_labels() -> None:
    assert choose_threshold(np.ones(4, int), np.full(4, 0.9), "0.3") == 0.3


@pytest.mark.parametrize("rule", ["youden", "sensitivity=0.9"])
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_labels_keep_the_default(rule: str, label: int) -> None:
    labels = np.full(5, label)
    assert choose_threshold(labels, np.linspace(0.1, 0.9, 5), rule) == DEFAULT_THRESHOLD == 0.5


def test_bad_rule_raises() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "median")


def test_hand_example() -> None:
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.1, 0.4, 0.35, 0.8])
    # t=0.8: sens .5 spec 1 (J .5); t=0.4: J 0; t=0.35: sens 1 spec .5 (J .5); t=0.1: J 0.
    # Youden's tie goes to the highest threshold.
    # Each threshold goes halfway down to the next lower probability.
    assert choose_threshold(labels, probabilities, "youden") == pytest.approx(0.6)
    assert choose_threshold(labels, probabilities, "sensitivity=0.9") == pytest.approx(0.225)
    assert choose_threshold(labels, probabilities, "sensitivity=0.5") == pytest.approx(0.6)
    assert choose_threshold(labels, probabilities, "sensitivity=1") == pytest.approx(0.225)


def test_perfect_separation() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert choose_threshold(labels, probabilities, "youden") == pytest.approx(0.5)
    assert choose_threshold(labels, probabilities, "sensitivity=1.0") == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1])
def test_youden_matches_a_brute_force_roc_search(seed: int, decimals: int | None) -> None:
    labels, probabilities = random_studies(seed, decimals=decimals)
    thresholds, fpr, tpr = roc_points(labels, probabilities)
    youden = tpr - fpr
    best = youden.max()
    expected = thresholds[np.isclose(youden, best, rtol=0, atol=1e-12)].max()
    chosen = choose_threshold(labels, probabilities, "youden")
    assert chosen == pytest.approx(halfway_below(probabilities, expected))
    assert not np.isclose(probabilities, chosen, rtol=0, atol=1e-12).any()
    # And the chosen threshold really reaches the best J on the data.
    sensitivity = (probabilities[labels == 1] >= chosen).mean()
    specificity = (probabilities[labels == 0] < chosen).mean()
    assert sensitivity + specificity - 1 == pytest.approx(best)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_sensitivity_rule_gives_the_highest_threshold_reaching_it(seed: int,
                                                                  target: float) -> None:
    labels, probabilities = random_studies(seed, decimals=2 if seed % 2 else None)
    thresholds, _, tpr = roc_points(labels, probabilities)
    expected = thresholds[tpr >= target].max()
    chosen = choose_threshold(labels, probabilities, f"sensitivity={target}")
    assert chosen == pytest.approx(halfway_below(probabilities, expected))
    positives = probabilities[labels == 1]
    assert (positives >= chosen).mean() >= target
    # Any higher candidate but the one chosen (same calls as the threshold) misses the target.
    higher = np.unique(probabilities[probabilities > chosen])[1:]
    assert all((positives >= t).mean() < target for t in higher)


def test_sensitivity_rule_reaches_exact_fractions() -> None:
    # 9 of 10 abnormal studies at or above 0.3: sensitivity exactly 0.9 there.
    labels = np.array([1] * 10 + [0] * 5)
    probabilities = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.1,
                              0.05, 0.2, 0.25, 0.32, 0.6])
    assert choose_threshold(labels, probabilities, "sensitivity=0.9") == pytest.approx(0.275)


def test_choose_threshold_returns_a_python_float() -> None:
    labels, probabilities = random_studies(1)
    assert type(choose_threshold(labels, probabilities.astype(np.float32), "youden")) is float


# --- study_probabilities ---------------------------------------------------------------------


def _assessed(p: float) -> ImagePrediction:
    return ImagePrediction("WRIST", 0.9, True, p)


def _skipped() -> ImagePrediction:
    return ImagePrediction("OTHER", 0.9, False, None, "body part OTHER is outside the scope")


def test_study_probabilities_average_assessed_images_per_study() -> None:
    predictions = [_assessed(0.2), _skipped(), _assessed(0.6), _assessed(0.9), _skipped(),
                   _skipped(), _assessed(0.1)]
    studies = np.array([0, 0, 0, 5, 5, 7, 3], dtype=np.int64)
    result = study_probabilities(predictions, studies)
    assert result == pytest.approx({0: 0.4, 5: 0.9, 3: 0.1})
    assert 7 not in result  # no assessed image
    assert all(type(k) is int and type(v) is float for k, v in result.items())


def test_study_probabilities_of_nothing_assessed() -> None:
    assert study_probabilities([_skipped(), _skipped()], np.array([0, 1])) == {}


def test_study_probabilities_need_one_study_per_prediction() -> None:
    with pytest.raises(ValueError):
        study_probabilities([_assessed(0.5), _assessed(0.4)], np.array([0]))


# --- weak_classes ----------------------------------------------------------------------------


def test_weak_classes_holds_back_classes_below_the_bar() -> None:
    from models.serving.taxonomy import Taxonomy
    from models.training.calibrate import weak_classes

    taxonomy = Taxonomy.from_names(["ELBOW", "HAND", "WRIST", "OTHER"])
    rng = np.random.default_rng(0)
    classes, labels, probs = [], [], []
    # ELBOW: 10 + 10 studies, well separated; HAND: 10 + 10 studies, uninformative (AUROC
    # about 0.5); WRIST: only 2 abnormal studies; OTHER is not assessed and never judged.
    for k, (pos, neg, informative) in enumerate([(10, 10, True), (10, 10, False),
                                                  (2, 12, True), (5, 5, True)]):
        for label in [1] * pos + [0] * neg:
            classes.append(k)
            labels.append(label)
            probs.append(0.5 + (0.4 if label else -0.4) * informative + rng.normal(0, 0.01)
                         if k != 1 else rng.random())
    n = len(classes)
    oracle = np.array(probs, dtype=np.float32)
    oracle[np.array(classes) == 3] = np.nan
    weak = weak_classes(taxonomy, oracle, np.array(classes), np.array(labels), np.arange(n),
                        min_auroc=0.75, min_positives=5)
    assert set(weak) == {"HAND", "WRIST"}
    assert "below the minimum 0.75" in weak["HAND"]
    assert "2 abnormal, 12 normal" in weak["WRIST"]
