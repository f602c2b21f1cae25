"""Immutable prediction results passed from the classifier to the report and dispatch.

The study-level rule follows MURA (Rajpurkar et al. 2017) and El-Saadawy et al. (AICV 2020):
a study's abnormality probability is the arithmetic mean of its images' probabilities, here
of its *assessed* images. An image is not assessed when stage 1 names a class that is not
assessed (out of scope), when stage 1 is not confident enough, when its features lie far from
the training data, or when its pixels could not be read; it then has no abnormality
probability and does not count in the study mean. A study without an assessed image is
reported "not assessed", never normal.

This module imports neither torch nor pydicom.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from models.serving.findings import Finding


def check_probability(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a probability in [0, 1], else ``ValueError``."""
    if (not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value)
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def clamp_probability(value: float) -> float:
    """Clamp float32 rounding (e.g. 1.0000001) back into [0, 1]."""
    return min(max(float(value), 0.0), 1.0)


@dataclass(frozen=True)
class ImagePrediction:
    """What the two-stage classifier says about one image.

    Parameters
    ----------
    body_part : str
        Class named by stage 1 (a class of the bundle's taxonomy).
    body_part_probability : float
        Stage-1 softmax probability of ``body_part``.
    assessed : bool
        Whether stage 2 gave a verdict for this image.
    abnormal_probability : float or None
        Probability of abnormality from the stage-2 network of ``body_part``; ``None``
        exactly when the image is not assessed.
    reason : str
        Why the image was not assessed, in words a radiologist reads in the report
        (e.g. ``"body part OTHER is outside the assessed scope"``); empty when assessed.
    ood_score : float or None
        Feature-space out-of-distribution score of the image (higher = further from the
        training data), when the bundle has one.
    findings : tuple of Finding
        Suspected fractures located on the image, the most probable first
        (:mod:`models.serving.findings`); only an assessed image has any.
    """

    body_part: str
    body_part_probability: float
    assessed: bool
    abnormal_probability: float | None
    reason: str = ""
    ood_score: float | None = None
    findings: tuple[Finding, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.body_part, str) or not self.body_part:
            raise ValueError(f"body_part must be a non-empty string, got {self.body_part!r}")
        check_probability("body_part_probability", self.body_part_probability)
        if not isinstance(self.assessed, bool):
            raise ValueError(f"assessed must be a bool, got {self.assessed!r}")
        if self.assessed:
            check_probability("abnormal_probability", self.abnormal_probability)
            if self.reason:
                raise ValueError("reason must be empty for an assessed image")
        else:
            if self.abnormal_probability is not None:
                raise ValueError("abnormal_probability must be None for an image not assessed")
            if not isinstance(self.reason, str) or not self.reason.strip():
                raise ValueError("reason must say why an image was not assessed")
        if self.ood_score is not None and (
            not isinstance(self.ood_score, int | float) or math.isnan(self.ood_score)
        ):
            raise ValueError(f"ood_score must be a number or None, got {self.ood_score!r}")
        if not isinstance(self.findings, tuple) or not all(
                isinstance(f, Finding) for f in self.findings):
            raise ValueError("findings must be a tuple of Finding")
        if self.findings and not self.assessed:
            raise ValueError("an image not assessed has no findings")

    @classmethod
    def not_assessed(cls, reason: str, *, body_part: str = "UNKNOWN",
                     body_part_probability: float = 0.0,
                     ood_score: float | None = None) -> ImagePrediction:
        """An image without a verdict, e.g. one whose pixels could not be decoded."""
        return cls(body_part=body_part, body_part_probability=body_part_probability,
                   assessed=False, abnormal_probability=None, reason=reason,
                   ood_score=ood_score)


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the model that produced a prediction (DICOM PS3.16 TID 4019).

    Parameters
    ----------
    name : str
        Algorithm name, e.g. ``"Ossa two-stage MobileNetV2"``.
    version : str
        Algorithm version; for a model bundle, its name and the short hash of its manifest.
    """

    name: str
    version: str

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if not self.version.strip():
            raise ValueError("version must not be empty")


def _most_frequent(predictions: Sequence[ImagePrediction]) -> str:
    """Most frequent body part; ties go to the higher summed confidence."""
    counts = Counter(p.body_part for p in predictions)
    confidence: dict[str, float] = {}
    for p in predictions:
        confidence[p.body_part] = confidence.get(p.body_part, 0.0) + p.body_part_probability
    return max(counts, key=lambda b: (counts[b], confidence[b]))


@dataclass(frozen=True)
class StudyPrediction:
    """Per-image predictions of one study and the study-level result.

    Parameters
    ----------
    images : tuple of ImagePrediction
        One prediction per image, in the order the images were given (not-assessed images
        included).
    thresholds : tuple of (str, float)
        Per-class operating thresholds from the bundle: an assessed study is abnormal when
        its probability reaches the threshold of its body part.
    algorithm : AlgorithmInfo
        The model that made the predictions.
    """

    images: tuple[ImagePrediction, ...]
    thresholds: tuple[tuple[str, float], ...]
    algorithm: AlgorithmInfo

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        if not self.images:
            raise ValueError("images must hold at least one ImagePrediction")
        if not all(isinstance(p, ImagePrediction) for p in self.images):
            raise TypeError("images must be a tuple of ImagePrediction")
        thresholds = (tuple(self.thresholds.items()) if isinstance(self.thresholds, Mapping)
                      else tuple((str(k), v) for k, v in self.thresholds))
        object.__setattr__(self, "thresholds", thresholds)
        for name, value in thresholds:
            check_probability(f"thresholds[{name!r}]", value)
        missing = {p.body_part for p in self.assessed_images} - {k for k, _ in thresholds}
        if missing:
            raise ValueError(f"thresholds lack assessed classes {sorted(missing)}")

    @property
    def assessed_images(self) -> tuple[ImagePrediction, ...]:
        """The images that got a stage-2 verdict."""
        return tuple(p for p in self.images if p.assessed)

    @property
    def assessed(self) -> bool:
        """Whether at least one image was assessed (else the study is "not assessed")."""
        return any(p.assessed for p in self.images)

    @property
    def body_part(self) -> str:
        """Most frequent body part of the assessed images (of all images when none is)."""
        return _most_frequent(self.assessed_images or self.images)

    @property
    def threshold(self) -> float | None:
        """Operating threshold of the study's body part; ``None`` when not assessed."""
        return dict(self.thresholds)[self.body_part] if self.assessed else None

    @property
    def abnormal_probability(self) -> float | None:
        """Mean abnormality probability of the assessed images; ``None`` when none is."""
        values = [p.abnormal_probability for p in self.assessed_images]
        return sum(v for v in values if v is not None) / len(values) if values else None

    @property
    def abnormal(self) -> bool | None:
        """Whether the study is called abnormal; ``None`` when it is not assessed."""
        probability, threshold = self.abnormal_probability, self.threshold
        if probability is None or threshold is None:
            return None
        return probability >= threshold

    @property
    def verdict(self) -> str:
        """``"ABNORMAL"``, ``"NORMAL"`` or ``"NOT ASSESSED"``."""
        abnormal = self.abnormal
        return "NOT ASSESSED" if abnormal is None else ("ABNORMAL" if abnormal else "NORMAL")

    @property
    def reason(self) -> str:
        """Why the study was not assessed (the images' distinct reasons); empty if assessed."""
        if self.assessed:
            return ""
        reasons = list(dict.fromkeys(p.reason for p in self.images))
        return "no image was assessed: " + "; ".join(reasons)
