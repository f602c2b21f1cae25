"""Tests of the immutable prediction results (models.serving.results)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from models.serving.results import (
    AlgorithmInfo,
    ImagePrediction,
    StudyPrediction,
    check_probability,
    clamp_probability,
)

ALGORITHM = AlgorithmInfo("Ossa two-stage MobileNetV2", "unit@0123456789ab")
THRESHOLDS = {"WRIST": 0.5, "ELBOW": 0.3, "HAND": 0.7}


def assessed(body_part: str, probability: float, confidence: float = 0.9) -> ImagePrediction:
    return ImagePrediction(body_part, confidence, True, probability)


def skipped(reason: str, body_part: str = "OTHER", confidence: float = 0.8) -> ImagePrediction:
    return ImagePrediction(body_part, confidence, False, None, reason)


def study(*images: ImagePrediction, thresholds: dict[str, float] | None = None
          ) -> StudyPrediction:
    pairs = tuple((THRESHOLDS if thresholds is None else thresholds).items())
    return StudyPrediction(images, pairs, ALGORITHM)


# --- probabilities ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 1, 1.0])
def test_check_probability_accepts(value: float) -> None:
    result = check_probability("p", value)
    assert isinstance(result, float)
    assert result == value


@pytest.mark.parametrize("value", [-0.01, 1.0001, math.nan, math.inf, True, "0.5", None])
def test_check_probability_rejects_naming_it(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^p\.x must be a probability in \[0, 1\]"):
        check_probability("p.x", value)


@pytest.mark.parametrize(("value", "expected"), [(1.0000001, 1.0), (-1e-7, 0.0), (0.3, 0.3)])
def test_clamp_probability(value: float, expected: float) -> None:
    assert clamp_probability(value) == expected


# --- ImagePrediction -------------------------------------------------------------------------


def test_assessed_image() -> None:
    p = ImagePrediction("WRIST", 0.9, True, 0.25, ood_score=3)
    assert p.assessed and p.abnormal_probability == 0.25 and p.reason == "" and p.ood_score == 3


def test_image_prediction_is_frozen() -> None:
    p = assessed("WRIST", 0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.abnormal_probability = 0.9  # type: ignore[misc]


def test_assessed_image_needs_a_probability() -> None:
    with pytest.raises(ValueError, match="abnormal_probability must be a probability"):
        ImagePrediction("WRIST", 0.9, True, None)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
def test_assessed_image_probability_in_range(value: float) -> None:
    with pytest.raises(ValueError, match="abnormal_probability"):
        ImagePrediction("WRIST", 0.9, True, value)


def test_assessed_image_has_no_reason() -> None:
    with pytest.raises(ValueError, match="reason must be empty"):
        ImagePrediction("WRIST", 0.9, True, 0.5, "low confidence")


def test_not_assessed_image_has_no_probability() -> None:
    with pytest.raises(ValueError, match="abnormal_probability must be None"):
        ImagePrediction("OTHER", 0.9, False, 0.5, "out of scope")


@pytest.mark.parametrize("reason", ["", "   "])
def test_not_assessed_image_needs_a_reason(reason: str) -> None:
    with pytest.raises(ValueError, match="reason must say why"):
        ImagePrediction("OTHER", 0.9, False, None, reason)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"body_part": ""}, "body_part must be a non-empty string"),
        ({"body_part": None}, "body_part must be a non-empty string"),
        ({"body_part_probability": 1.2}, "body_part_probability"),
        ({"body_part_probability": math.nan}, "body_part_probability"),
        ({"assessed": 1}, "assessed must be a bool"),
        ({"ood_score": math.nan}, "ood_score"),
        ({"ood_score": "3"}, "ood_score"),
    ],
)
def test_image_prediction_validation_names_the_field(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"body_part": "WRIST", "body_part_probability": 0.9,
                            "assessed": True, "abnormal_probability": 0.4}
    with pytest.raises(ValueError, match=match):
        ImagePrediction(**(base | kwargs))


def test_not_assessed_factory_defaults() -> None:
    p = ImagePrediction.not_assessed("pixel data could not be decoded")
    assert p == ImagePrediction("UNKNOWN", 0.0, False, None, "pixel data could not be decoded")
    assert p.ood_score is None


def test_not_assessed_factory_keywords() -> None:
    p = ImagePrediction.not_assessed("out of scope", body_part="OTHER",
                                     body_part_probability=0.7, ood_score=12.5)
    assert (p.body_part, p.body_part_probability, p.assessed, p.abnormal_probability,
            p.reason, p.ood_score) == ("OTHER", 0.7, False, None, "out of scope", 12.5)


def test_not_assessed_factory_still_validates() -> None:
    with pytest.raises(ValueError, match="reason must say why"):
        ImagePrediction.not_assessed("")


# --- AlgorithmInfo ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "version"), [("", "1"), ("x", " ")])
def test_algorithm_info_needs_name_and_version(name: str, version: str) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        AlgorithmInfo(name, version)


# --- StudyPrediction -------------------------------------------------------------------------


def test_study_mean_is_over_assessed_images_only() -> None:
    result = study(assessed("WRIST", 0.2), skipped("out of scope"), assessed("WRIST", 0.6),
                   skipped("low confidence", body_part="WRIST"))
    assert result.assessed
    assert result.assessed_images == (result.images[0], result.images[2])
    assert result.abnormal_probability == pytest.approx(0.4)
    assert result.body_part == "WRIST"
    assert result.threshold == 0.5
    assert result.verdict == "NORMAL"
    assert result.abnormal is False
    assert result.reason == ""


def test_study_keeps_image_order_as_tuple() -> None:
    images = [skipped("a"), assessed("HAND", 0.1), skipped("b")]
    result = StudyPrediction(images, THRESHOLDS, ALGORITHM)  # type: ignore[arg-type]
    assert result.images == tuple(images)


def test_threshold_is_that_of_the_study_body_part() -> None:
    probabilities = (0.35, 0.45)  # mean 0.4: above ELBOW's 0.3, below WRIST's 0.5
    wrist = study(*(assessed("WRIST", p) for p in probabilities))
    elbow = study(*(assessed("ELBOW", p) for p in probabilities))
    assert wrist.abnormal_probability == elbow.abnormal_probability == pytest.approx(0.4)
    assert (wrist.threshold, wrist.verdict) == (0.5, "NORMAL")
    assert (elbow.threshold, elbow.verdict) == (0.3, "ABNORMAL")


def test_body_part_is_the_most_frequent_assessed_one() -> None:
    result = study(assessed("ELBOW", 0.4), assessed("HAND", 0.4), assessed("HAND", 0.4),
                   skipped("x", body_part="ELBOW"), skipped("y", body_part="ELBOW"))
    # ELBOW is named 3 times overall, but HAND twice among the assessed images.
    assert result.body_part == "HAND"
    assert result.threshold == 0.7
    assert result.verdict == "NORMAL"


def test_body_part_tie_goes_to_higher_summed_confidence() -> None:
    result = study(assessed("ELBOW", 0.4, confidence=0.6), assessed("WRIST", 0.4, confidence=0.9))
    assert result.body_part == "WRIST"
    assert result.verdict == "NORMAL"  # 0.4 < WRIST's 0.5 (ELBOW's 0.3 would say ABNORMAL)
    flipped = study(assessed("ELBOW", 0.4, confidence=0.95),
                    assessed("WRIST", 0.4, confidence=0.9))
    assert flipped.body_part == "ELBOW"
    assert flipped.verdict == "ABNORMAL"


@pytest.mark.parametrize(("probabilities", "threshold"),
                         [((0.25, 0.75), 0.5), ((0.3,), 0.3), ((1.0,), 1.0), ((0.0,), 0.0)])
def test_threshold_reached_exactly_is_abnormal(probabilities: tuple[float, ...],
                                               threshold: float) -> None:
    result = study(*(assessed("WRIST", p) for p in probabilities),
                   thresholds={"WRIST": threshold})
    assert result.abnormal_probability == threshold
    assert result.abnormal is True
    assert result.verdict == "ABNORMAL"


def test_just_below_threshold_is_normal() -> None:
    result = study(assessed("WRIST", math.nextafter(0.5, 0.0)))
    assert result.verdict == "NORMAL"
    assert result.abnormal is False


def test_study_without_assessed_images_is_not_assessed_with_distinct_reasons() -> None:
    result = study(skipped("body part OTHER is outside the assessed scope"),
                   skipped("low confidence", body_part="WRIST"),
                   skipped("body part OTHER is outside the assessed scope"),
                   ImagePrediction.not_assessed("pixels unreadable"))
    assert not result.assessed
    assert result.assessed_images == ()
    assert result.abnormal_probability is None
    assert result.threshold is None
    assert result.abnormal is None
    assert result.verdict == "NOT ASSESSED"
    assert result.reason == ("no image was assessed: body part OTHER is outside the assessed "
                             "scope; low confidence; pixels unreadable")
    assert result.body_part == "OTHER"  # most frequent of all images when none is assessed


@pytest.mark.parametrize("thresholds", [{}, {"WRIST": 0.0}, {"WRIST": 1.0, "OTHER": 0.0}])
def test_study_with_only_not_assessed_images_is_never_normal(thresholds: dict[str, float]
                                                             ) -> None:
    result = study(skipped("low confidence", body_part="WRIST"), thresholds=thresholds)
    assert result.verdict == "NOT ASSESSED"
    assert result.abnormal is None


def test_thresholds_as_pairs_or_mapping() -> None:
    images = (assessed("WRIST", 0.6),)
    from_pairs = StudyPrediction(images, (("WRIST", 0.5), ("HAND", 0.7)), ALGORITHM)
    from_mapping = StudyPrediction(images, {"WRIST": 0.5, "HAND": 0.7},  # type: ignore[arg-type]
                                   ALGORITHM)
    assert from_pairs.thresholds == from_mapping.thresholds == (("WRIST", 0.5), ("HAND", 0.7))
    assert from_pairs == from_mapping


def test_missing_threshold_for_an_assessed_class_raises() -> None:
    with pytest.raises(ValueError, match=r"thresholds lack assessed classes \['FINGER'\]"):
        study(assessed("WRIST", 0.6), assessed("FINGER", 0.6))


def test_threshold_only_needed_for_assessed_classes() -> None:
    result = study(assessed("WRIST", 0.6), skipped("x", body_part="FINGER"))
    assert result.verdict == "ABNORMAL"


@pytest.mark.parametrize("value", [1.5, -0.5, math.nan])
def test_threshold_out_of_range_is_named(value: float) -> None:
    with pytest.raises(ValueError, match=r"thresholds\['WRIST'\] must be a probability"):
        study(assessed("WRIST", 0.6), thresholds={"WRIST": value})


def test_study_needs_images() -> None:
    with pytest.raises(ValueError, match="at least one ImagePrediction"):
        study()


def test_study_images_must_be_predictions() -> None:
    with pytest.raises(TypeError, match="ImagePrediction"):
        bad: Any = {"body_part": "WRIST"}
        StudyPrediction((assessed("WRIST", 0.5), bad), tuple(THRESHOLDS.items()), ALGORITHM)


def test_study_prediction_is_frozen() -> None:
    result = study(assessed("WRIST", 0.6))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.images = ()  # type: ignore[misc]
