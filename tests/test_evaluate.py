"""Tests of the validation metrics (models.evaluate)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models import evaluate
from models.data import MuraStudy
from models.evaluate import BinaryCounts, evaluate_predictions, format_table
from models.results import ImagePrediction


def test_binary_counts_metrics() -> None:
    counts = BinaryCounts(tp=40, fp=10, tn=40, fn=10)
    assert counts.accuracy == pytest.approx(0.8)
    assert counts.sensitivity == pytest.approx(0.8)
    assert counts.specificity == pytest.approx(0.8)
    # p_o = 0.8, p_e = 0.5 -> kappa = 0.6
    assert counts.kappa == pytest.approx(0.6)
    skewed = BinaryCounts(tp=20, fp=5, tn=60, fn=15)
    p_o = 0.8
    p_e = (35 / 100) * (25 / 100) + (65 / 100) * (75 / 100)
    assert skewed.kappa == pytest.approx((p_o - p_e) / (1 - p_e))
    assert BinaryCounts(tp=5, tn=5).kappa == pytest.approx(1.0)
    assert BinaryCounts(fp=5, fn=5).kappa == pytest.approx(-1.0)
    assert math.isnan(BinaryCounts(tn=7).kappa)
    assert math.isnan(BinaryCounts(tn=7).sensitivity)
    with pytest.raises(ValueError, match="tp"):
        BinaryCounts(tp=-1)


def _study(bone: str, label: int, n: int, name: str) -> MuraStudy:
    return MuraStudy("valid", bone, "patient00001", name, label,
                     tuple(Path(f"{name}/image{i}.png") for i in range(1, n + 1)))


def _p(bone: str, probability: float) -> ImagePrediction:
    return ImagePrediction(bone=bone, bone_probability=0.9, abnormal_probability=probability)


def test_evaluate_predictions_uses_the_study_mean() -> None:
    studies = [
        _study("WRIST", 1, 3, "study1_positive"),   # mean 0.4667 < 0.5 -> missed
        _study("WRIST", 0, 2, "study2_negative"),   # mean 0.5 >= 0.5 -> false positive
        _study("HAND", 1, 1, "study1_positive"),    # 0.9 -> found
        _study("HAND", 0, 2, "study2_negative"),    # 0.1 -> correct
    ]
    predictions = [
        [_p("WRIST", 0.9), _p("WRIST", 0.2), _p("HAND", 0.3)],
        [_p("WRIST", 0.6), _p("WRIST", 0.4)],
        [_p("HAND", 0.9)],
        [_p("HAND", 0.1), _p("FINGER", 0.1)],
    ]
    result = evaluate_predictions(studies, predictions, threshold=0.5)
    assert result.split == "valid"
    assert result.overall.counts == BinaryCounts(tp=1, fp=1, tn=1, fn=1)
    assert result.study_accuracy == pytest.approx(0.5)
    assert result.kappa == pytest.approx(0.0)
    assert result.bone_accuracy == pytest.approx(6 / 8)
    per_bone = dict(result.per_bone)
    assert list(per_bone) == ["HAND", "WRIST"]  # BONE_TYPES order, bones present only
    assert per_bone["WRIST"].bone_accuracy == pytest.approx(4 / 5)
    assert per_bone["WRIST"].study_accuracy == 0.0
    assert per_bone["HAND"].study_accuracy == 1.0
    assert per_bone["HAND"].studies == 2 and per_bone["HAND"].images == 3
    lower = evaluate_predictions(studies, predictions, threshold=0.45)
    assert lower.overall.counts == BinaryCounts(tp=2, fp=1, tn=1, fn=0)


def test_evaluate_predictions_validation() -> None:
    study = _study("HAND", 1, 2, "study1_positive")
    with pytest.raises(ValueError, match="one entry per study"):
        evaluate_predictions([study], [], threshold=0.5)
    with pytest.raises(ValueError, match="2 images but 1 predictions"):
        evaluate_predictions([study], [[_p("HAND", 0.5)]], threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_predictions([study], [[_p("HAND", 0.5)] * 2], threshold=1.5)


def test_to_dict_and_table() -> None:
    studies = [_study("ELBOW", 0, 1, "study1_negative")]
    result = evaluate_predictions(studies, [[_p("ELBOW", 0.2)]], threshold=0.5)
    data = result.to_dict()
    assert data["kappa"] is None and data["sensitivity"] is None  # undefined, not NaN
    assert data["specificity"] == 1.0 and data["per_bone"]["ELBOW"]["studies"] == 1
    json.dumps(data, allow_nan=False)
    table = format_table(result)
    assert "ELBOW" in table and "ALL" in table and "   -" in table


def test_cli_recomputes_the_bundle_metrics(trained_bundle: Path, phantom_root: Path,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    args = evaluate.get_args_parser(add_help=False).parse_args(
        ["--data", str(phantom_root), "--bundle", str(trained_bundle), "--json", str(out)])
    assert evaluate.main(args) == 0
    printed = capsys.readouterr().out
    assert "study acc" in printed and "WRIST" in printed and "ALL" in printed
    metrics = json.loads(out.read_text())
    stored = json.loads((trained_bundle / "manifest.json").read_text())["metrics"]
    assert metrics["split"] == "valid" and metrics["studies"] == stored["studies"]
    assert metrics["images"] == stored["images"]
    # same network, same preprocessing: the same calls up to float rounding
    assert metrics["study_accuracy"] == pytest.approx(stored["study_accuracy"], abs=0.02)
    assert metrics["bone_accuracy"] == pytest.approx(stored["bone_accuracy"], abs=0.01)
