"""Immutable prediction results passed from the classifier to the report and dispatch.

The study-level rule follows MURA (Rajpurkar et al. 2017) and El-Saadawy et al. (AICV 2020):
a study's abnormality probability is the arithmetic mean of its images' probabilities.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

#: MURA-v1.1 body-part categories in the canonical (alphabetical) class order.
BONE_TYPES: tuple[str, ...] = (
    "ELBOW",
    "FINGER",
    "FOREARM",
    "HAND",
    "HUMERUS",
    "SHOULDER",
    "WRIST",
)


def check_bone_order(bone_types: Sequence[str]) -> tuple[str, ...]:
    """Return ``bone_types`` as a tuple if it is a permutation of :data:`BONE_TYPES`.

    Raises
    ------
    ValueError
        When a bone type is missing, repeated or unknown.
    """
    bones = tuple(bone_types)
    if sorted(bones) != sorted(BONE_TYPES) or len(set(bones)) != len(bones):
        raise ValueError(f"bone_types must be a permutation of {BONE_TYPES}, got {bones}")
    return bones


def _check_probability(name: str, value: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class ImagePrediction:
    """What the two-stage classifier says about one image.

    Parameters
    ----------
    bone : str
        Predicted bone type, one of :data:`BONE_TYPES` (stage 1).
    bone_probability : float
        Softmax probability of the predicted bone type.
    abnormal_probability : float
        Probability of abnormality from the per-bone classifier chosen by ``bone`` (stage 2).
    """

    bone: str
    bone_probability: float
    abnormal_probability: float

    def __post_init__(self) -> None:
        if self.bone not in BONE_TYPES:
            raise ValueError(f"bone must be one of {BONE_TYPES}, got {self.bone!r}")
        _check_probability("bone_probability", self.bone_probability)
        _check_probability("abnormal_probability", self.abnormal_probability)


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


@dataclass(frozen=True)
class StudyPrediction:
    """Per-image predictions of one study and the study-level result.

    Parameters
    ----------
    images : tuple of ImagePrediction
        One prediction per image, in the order the images were given.
    threshold : float
        Study probability at or above which the study is called abnormal.
    algorithm : AlgorithmInfo
        The model that made the predictions.
    """

    images: tuple[ImagePrediction, ...]
    threshold: float
    algorithm: AlgorithmInfo

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("images must hold at least one ImagePrediction")
        if not all(isinstance(p, ImagePrediction) for p in self.images):
            raise TypeError("images must be a tuple of ImagePrediction")
        _check_probability("threshold", self.threshold)

    @property
    def abnormal_probability(self) -> float:
        """Mean of the images' abnormality probabilities."""
        return sum(p.abnormal_probability for p in self.images) / len(self.images)

    @property
    def abnormal(self) -> bool:
        """Whether the study is called abnormal (probability >= threshold)."""
        return self.abnormal_probability >= self.threshold

    @property
    def bone(self) -> str:
        """Most frequent predicted bone type; ties go to the higher summed confidence."""
        counts = Counter(p.bone for p in self.images)
        confidence: dict[str, float] = {}
        for p in self.images:
            confidence[p.bone] = confidence.get(p.bone, 0.0) + p.bone_probability
        return max(counts, key=lambda b: (counts[b], confidence[b]))
