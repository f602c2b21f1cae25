"""Validation metrics of the two-stage classifier, as reported for MURA.

* image-level bone-type accuracy (stage 1);
* study-level abnormality accuracy, Cohen's kappa, sensitivity and specificity, where a
  study's probability is the mean of its images' probabilities (MURA's rule) and a study is
  abnormal when that mean reaches the bundle's threshold;
* the same numbers per (true) bone type.

``ossa evaluate --data DIR --bundle BUNDLE [--split valid] [--json FILE]`` prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.data import MuraStudy, load_studies, read_image
from models.networks import TwoStageOutput
from models.predict import TwoStageClassifier, image_predictions
from models.results import BONE_TYPES, ImagePrediction

logger = logging.getLogger(__name__)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class BinaryCounts:
    """Confusion counts of study-level abnormality calls (positive = abnormal)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "tn", "fn"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.total)

    @property
    def sensitivity(self) -> float:
        """True-positive rate; NaN without abnormal studies."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        """True-negative rate; NaN without normal studies."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def kappa(self) -> float:
        """Cohen's kappa between labels and calls; NaN when chance agreement is total."""
        n = self.total
        if n == 0:
            return math.nan
        observed = (self.tp + self.tn) / n
        p_yes = ((self.tp + self.fn) / n) * ((self.tp + self.fp) / n)
        p_no = ((self.tn + self.fp) / n) * ((self.tn + self.fn) / n)
        expected = p_yes + p_no
        if expected >= 1.0:
            return math.nan
        return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics of a group of studies (all, or one bone type)."""

    studies: int
    images: int
    bone_correct: int
    counts: BinaryCounts

    @property
    def bone_accuracy(self) -> float:
        """Image-level bone-type accuracy."""
        return _ratio(self.bone_correct, self.images)

    @property
    def study_accuracy(self) -> float:
        """Study-level abnormality accuracy."""
        return self.counts.accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes None)."""
        values = {
            "studies": self.studies,
            "images": self.images,
            "bone_accuracy": self.bone_accuracy,
            "study_accuracy": self.study_accuracy,
            "kappa": self.counts.kappa,
            "sensitivity": self.counts.sensitivity,
            "specificity": self.counts.specificity,
            "tp": self.counts.tp,
            "fp": self.counts.fp,
            "tn": self.counts.tn,
            "fn": self.counts.fn,
        }
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in values.items()}


@dataclass(frozen=True)
class Evaluation:
    """Overall and per-bone metrics of one split.

    Parameters
    ----------
    split : str
        Split evaluated.
    threshold : float
        Study-level decision threshold used.
    overall : GroupMetrics
        Metrics over every study.
    per_bone : tuple of (str, GroupMetrics)
        Metrics per true bone type, in :data:`BONE_TYPES` order (bones without studies left out).
    """

    split: str
    threshold: float
    overall: GroupMetrics
    per_bone: tuple[tuple[str, GroupMetrics], ...]

    @property
    def bone_accuracy(self) -> float:
        return self.overall.bone_accuracy

    @property
    def study_accuracy(self) -> float:
        return self.overall.study_accuracy

    @property
    def kappa(self) -> float:
        return self.overall.counts.kappa

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a bundle manifest's ``metrics``."""
        return {
            "split": self.split,
            "threshold": self.threshold,
            "study_probability": "mean of image probabilities",
            **self.overall.to_dict(),
            "per_bone": {bone: m.to_dict() for bone, m in self.per_bone},
        }


def evaluate_predictions(
    studies: Sequence[MuraStudy],
    predictions: Sequence[Sequence[ImagePrediction]],
    *,
    threshold: float,
) -> Evaluation:
    """Compute metrics from per-image predictions grouped by study.

    Parameters
    ----------
    studies : sequence of MuraStudy
        Labelled studies (one split).
    predictions : sequence of sequence of ImagePrediction
        ``predictions[i]`` holds one prediction per image of ``studies[i]``.
    threshold : float
        A study is called abnormal when its mean probability is ``>= threshold``.
    """
    if len(studies) != len(predictions):
        raise ValueError(f"predictions must hold one entry per study ({len(studies)}), "
                         f"got {len(predictions)}")
    if not studies:
        raise ValueError("studies must not be empty")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    splits = {s.split for s in studies}
    groups: dict[str, list[tuple[int, int, bool, bool]]] = {}
    for study, preds in zip(studies, predictions, strict=True):
        if len(preds) != len(study.images):
            raise ValueError(f"study {study.key}: {len(study.images)} images but "
                             f"{len(preds)} predictions")
        probability = sum(p.abnormal_probability for p in preds) / len(preds)
        correct = sum(p.bone == study.bone for p in preds)
        row = (len(preds), correct, study.abnormal, probability >= threshold)
        groups.setdefault(study.bone, []).append(row)

    def metrics(rows: Sequence[tuple[int, int, bool, bool]]) -> GroupMetrics:
        return GroupMetrics(
            studies=len(rows),
            images=sum(r[0] for r in rows),
            bone_correct=sum(r[1] for r in rows),
            counts=BinaryCounts(
                tp=sum(r[2] and r[3] for r in rows),
                fp=sum(not r[2] and r[3] for r in rows),
                tn=sum(not r[2] and not r[3] for r in rows),
                fn=sum(r[2] and not r[3] for r in rows),
            ),
        )

    return Evaluation(
        split=splits.pop() if len(splits) == 1 else "mixed",
        threshold=threshold,
        overall=metrics([row for rows in groups.values() for row in rows]),
        per_bone=tuple((b, metrics(groups[b])) for b in BONE_TYPES if b in groups),
    )


def group_predictions(output: TwoStageOutput, study_index: Sequence[int], n_studies: int,
                      bone_types: Sequence[str]) -> list[list[ImagePrediction]]:
    """Turn a batched network output over flattened images back into per-study predictions."""
    grouped: list[list[ImagePrediction]] = [[] for _ in range(n_studies)]
    for prediction, study in zip(image_predictions(output, bone_types), study_index, strict=True):
        grouped[int(study)].append(prediction)
    return grouped


def evaluate_classifier(classifier: TwoStageClassifier, studies: Sequence[MuraStudy]) -> Evaluation:
    """Run ``classifier.predict_images`` on every study's images and compute the metrics."""
    predictions = []
    for i, study in enumerate(studies, start=1):
        predictions.append(classifier.predict_images([read_image(p) for p in study.images]))
        if i % 200 == 0:
            logger.info("evaluated %d/%d studies", i, len(studies))
    return evaluate_predictions(studies, predictions, threshold=classifier.threshold)


def _fmt(value: float) -> str:
    return "   -" if math.isnan(value) else f"{value:.3f}"


def format_table(evaluation: Evaluation) -> str:
    """Plain-text table: one row per bone type and an overall row."""
    header = (f"{'bone':<9} {'studies':>7} {'images':>6} {'bone acc':>8} {'study acc':>9} "
              f"{'kappa':>6} {'sens':>6} {'spec':>6}")
    lines = [f"split={evaluation.split} threshold={evaluation.threshold:.3f} "
             "(study probability = mean of image probabilities)", header, "-" * len(header)]
    rows: list[tuple[str, GroupMetrics]] = [*evaluation.per_bone, ("ALL", evaluation.overall)]
    for name, m in rows:
        if name == "ALL":
            lines.append("-" * len(header))
        lines.append(
            f"{name:<9} {m.studies:>7} {m.images:>6} {_fmt(m.bone_accuracy):>8} "
            f"{_fmt(m.study_accuracy):>9} {_fmt(m.counts.kappa):>6} "
            f"{_fmt(m.counts.sensitivity):>6} {_fmt(m.counts.specificity):>6}"
        )
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa evaluate``."""
    parser = argparse.ArgumentParser(
        description="Evaluate a model bundle on a MURA-v1.1 (or phantom) split.",
        add_help=add_help,
    )
    parser.add_argument("--data", type=Path, required=True,
                        help="MURA-v1.1 directory or the directory containing it")
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--split", choices=("train", "valid"), default="valid",
                        help="split to evaluate (default: valid)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Evaluate ``args.bundle`` on ``args.split`` of ``args.data``; prints a table."""
    classifier = TwoStageClassifier.from_bundle(args.bundle, device=args.device)
    studies = load_studies(args.data, args.split)
    evaluation = evaluate_classifier(classifier, studies)
    print(f"bundle {classifier.algorithm.version}")
    print(format_table(evaluation))
    if args.json is not None:
        payload: Mapping[str, Any] = {"bundle": classifier.algorithm.version,
                                      **evaluation.to_dict()}
        Path(args.json).write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        logger.info("metrics written to %s", args.json)
    return 0
