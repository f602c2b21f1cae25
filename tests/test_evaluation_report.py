"""Tests of the evaluation metrics and report files (models.evaluation.report)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from models.evaluation.report import (
    PREDICTION_COLUMNS,
    EvaluatedImage,
    compute_metrics,
    write_report,
)

CLASSES = ("A", "B", "C", "OTHER")
ASSESSED = ("A", "B", "C")
THRESHOLDS = {"A": 0.5, "B": 0.7, "C": 0.5}


def _image(study: str, true: str, label: int, pred: str, p: float | None,
           oracle: float | None, *, assessed: bool | None = None, index: int = 0,
           type_probability: float = 0.9) -> EvaluatedImage:
    return EvaluatedImage(
        path=f"{true}/{study}/image{index}.png", study=study, true_type=true, label=label,
        pred_type=pred, type_probability=type_probability,
        assessed=(p is not None) if assessed is None else assessed,
        abnormal_probability=p, oracle_probability=oracle)


def _rows() -> list[EvaluatedImage]:
    """Three classes + OTHER, one routing error (s2) and one abstention (s7).

    ========  =====  =====  =====================================  =======  =======
    study     true   label  images (pred: routed p / oracle p)      merged   oracle
    ========  =====  =====  =====================================  =======  =======
    s1        A      1      A: .8/.8, A: .6/.6                     TP       TP
    s2        A      0      B: .75/.2 (routing error)              FP (B)   TN
    s3        B      1      B: .8/.8                               TP       TP
    s4        B      0      B: .6/.6 (< B's threshold .7)          TN       TN
    s5        C      1      C: .9/.9                               TP       TP
    s6        C      0      C: .1/.1                               TN       TN
    s7        C      1      C: not assessed/.6                     --       TP
    s8        OTHER  0      OTHER: n/a, OTHER: n/a                 --       --
    s9        OTHER  0      OTHER: n/a                             --       --
    s10       OTHER  0      A: .4 (OTHER taken for A)              --       --
    ========  =====  =====  =====================================  =======  =======
    """
    return [
        _image("s1", "A", 1, "A", 0.8, 0.8, index=0),
        _image("s1", "A", 1, "A", 0.6, 0.6, index=1),
        _image("s2", "A", 0, "B", 0.75, 0.2),
        _image("s3", "B", 1, "B", 0.8, 0.8),
        _image("s4", "B", 0, "B", 0.6, 0.6),
        _image("s5", "C", 1, "C", 0.9, 0.9),
        _image("s6", "C", 0, "C", 0.1, 0.1),
        _image("s7", "C", 1, "C", None, 0.6, type_probability=0.4),
        _image("s8", "OTHER", 0, "OTHER", None, None, index=0),
        _image("s8", "OTHER", 0, "OTHER", None, None, index=1),
        _image("s9", "OTHER", 0, "OTHER", None, None),
        _image("s10", "OTHER", 0, "A", 0.4, None),
    ]


def _metrics(rows: list[EvaluatedImage], **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"n_bootstrap": 200, "seed": 0}
    options.update(kwargs)
    return compute_metrics(rows, classes=CLASSES, assessed_classes=ASSESSED,
                           thresholds=THRESHOLDS, **options)


def test_stage1_accuracy_and_confusion_matrix() -> None:
    stage1 = _metrics(_rows())["stage1"]
    assert stage1["n_images"] == 12
    assert stage1["accuracy"]["value"] == pytest.approx(10 / 12)
    matrix = stage1["confusion_matrix"]
    assert matrix["labels"] == list(CLASSES)
    assert matrix["counts"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [1, 0, 0, 3]]


def test_merged_vs_oracle_with_one_routing_error() -> None:
    m = _metrics(_rows())
    merged, oracle = m["merged"]["study"], m["oracle"]["study"]
    a = merged["per_class"]["A"]
    assert (a["n"], a["tp"], a["fp"], a["tn"], a["fn"]) == (2, 1, 1, 0, 0)
    assert a["accuracy"]["value"] == 0.5
    assert a["sensitivity"]["value"] == 1.0 and a["specificity"]["value"] == 0.0
    assert oracle["per_class"]["A"]["accuracy"]["value"] == 1.0
    assert merged["per_class"]["B"]["accuracy"]["value"] == 1.0  # .6 < B's threshold .7
    c = merged["per_class"]["C"]
    assert (c["n"], c["n_in_scope"], c["not_assessed"]) == (2, 3, 1)
    assert c["coverage"] == pytest.approx(2 / 3)
    assert oracle["per_class"]["C"]["n"] == 3
    assert oracle["per_class"]["C"]["coverage"] == 1.0
    # Unweighted mean over classes: (0.5 + 1 + 1) / 3; pooled: 5 of 6 assessed studies right.
    assert merged["mean_over_classes"]["accuracy"]["value"] == pytest.approx(5 / 6)
    assert merged["pooled"]["accuracy"]["value"] == pytest.approx(5 / 6)
    assert merged["pooled"]["n"] == 6 and merged["pooled"]["n_in_scope"] == 7
    assert oracle["mean_over_classes"]["accuracy"]["value"] == 1.0
    assert oracle["pooled"]["accuracy"]["value"] == 1.0 and oracle["pooled"]["n"] == 7
    diff = m["merged_minus_oracle"]["study"]
    assert diff["mean_over_classes"]["accuracy"]["value"] == pytest.approx(-1 / 6)
    assert diff["pooled"]["accuracy"]["value"] == pytest.approx(-1 / 6)
    # The OTHER image taken for A (s10) is in no abnormality metric.
    assert m["merged"]["image"]["pooled"]["n"] == 7  # 8 in-scope images, s7 not assessed
    assert m["merged"]["image"]["per_class"]["A"]["n"] == 3


def test_image_level_uses_the_threshold_of_the_predicted_class() -> None:
    rows = [
        # True A, taken for B: routed p .6 is below B's .7 (merged: TN); oracle p .6 reaches
        # A's .5 (oracle: FP).
        _image("s1", "A", 0, "B", 0.6, 0.6),
        # Study of three images, mostly taken for A: the study uses A's threshold .5, so its
        # mean .5667 is abnormal (with B's .7 it would be normal).
        _image("s2", "A", 0, "B", 0.6, 0.6, index=0),
        _image("s2", "A", 0, "A", 0.55, 0.55, index=1),
        _image("s2", "A", 0, "A", 0.55, 0.55, index=2),
        _image("s3", "A", 1, "A", 0.9, 0.9),
    ]
    m = _metrics(rows)
    image = m["merged"]["image"]["per_class"]["A"]
    assert (image["tp"], image["fp"], image["tn"], image["fn"]) == (1, 2, 2, 0)
    oracle_image = m["oracle"]["image"]["per_class"]["A"]
    assert (oracle_image["tp"], oracle_image["fp"], oracle_image["tn"]) == (1, 4, 0)
    study = m["merged"]["study"]["per_class"]["A"]
    assert (study["tp"], study["fp"], study["tn"], study["fn"]) == (1, 1, 1, 0)


def test_abstention_and_coverage() -> None:
    m = _metrics(_rows())
    other = m["abstention"]["per_class"]["OTHER"]
    assert other["assessed_class"] is False
    assert (other["images"], other["images_not_assessed"]) == (4, 3)
    assert other["image_rate"] == pytest.approx(0.75)
    assert (other["studies"], other["studies_not_assessed"]) == (3, 2)
    assert other["study_rate"] == pytest.approx(2 / 3)
    c = m["abstention"]["per_class"]["C"]
    assert c["image_rate"] == pytest.approx(1 / 3) and c["study_rate"] == pytest.approx(1 / 3)
    assert m["abstention"]["per_class"]["A"]["study_rate"] == 0.0
    coverage = m["abstention"]["coverage"]
    assert coverage["studies"]["value"] == pytest.approx(6 / 7)
    assert coverage["images"]["value"] == pytest.approx(7 / 8)


def test_confidence_intervals_contain_estimates_and_are_reproducible() -> None:
    rows = _rows()
    first = _metrics(rows, seed=3)
    assert _metrics(rows, seed=3) == first
    assert _metrics(rows, seed=4) != first
    pooled = first["oracle"]["image"]["pooled"]["auroc"]
    assert pooled["ci_low"] <= pooled["value"] <= pooled["ci_high"]
    assert first["bootstrap"] == {"resamples": 200, "seed": 3, "confidence": 0.95,
                                  "unit": "study", "method": "percentile"}


def test_undefined_values_become_null_and_json_has_no_nan() -> None:
    rows = [_image("s1", "A", 1, "A", 0.8, 0.8), _image("s2", "A", 1, "A", 0.3, 0.3)]
    m = _metrics(rows)
    a = m["merged"]["study"]["per_class"]["A"]
    assert a["sensitivity"]["value"] == 0.5
    assert a["specificity"] == {"value": None, "ci_low": None, "ci_high": None}
    assert a["auroc"]["value"] is None
    assert m["merged"]["study"]["per_class"]["B"]["n"] == 0
    assert m["merged"]["study"]["per_class"]["B"]["accuracy"]["value"] is None
    assert m["abstention"]["per_class"]["OTHER"]["image_rate"] is None
    json.dumps(m, allow_nan=False)


def test_inconsistent_studies_and_bad_rows_are_refused() -> None:
    rows = [_image("s1", "A", 1, "A", 0.8, 0.8), _image("s1", "A", 0, "A", 0.3, 0.3, index=1)]
    with pytest.raises(ValueError, match=r"s1.*label"):
        _metrics(rows)
    with pytest.raises(ValueError, match="abnormal_probability"):
        _image("s1", "A", 1, "A", 0.8, 0.8, assessed=False)
    with pytest.raises(ValueError, match="label"):
        _image("s1", "A", 2, "A", 0.8, 0.8)
    with pytest.raises(ValueError, match="thresholds lack"):
        compute_metrics(_rows(), classes=CLASSES, assessed_classes=ASSESSED,
                        thresholds={"A": 0.5})
    with pytest.raises(ValueError, match="not in classes"):
        _metrics([_image("s1", "FOOT", 1, "A", 0.8, None)])


def _no_nan(token: str) -> float:
    raise AssertionError(f"metrics.json holds {token}")


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    rows = _rows()
    m = _metrics(rows)
    out = tmp_path / "report"
    paths = write_report(rows, out, metrics=m, bundle_version="demo@0123456789ab",
                         data_description="the procedural phantom (says nothing about real "
                                          "radiographs)")
    names = {p.name for p in paths}
    assert {"predictions.csv", "metrics.json", "report.md"} <= names
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3
    assert all(p.parent == out and p.is_file() for p in paths)

    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
        handle.seek(0)
        header = next(csv.reader(handle))
    assert header[:7] == ["path", "true_type", "pred_type", "type_probability", "assessed",
                          "abnormal_probability", "label"]
    assert header == list(PREDICTION_COLUMNS)
    assert len(table) == len(rows)
    not_assessed = table[7]
    assert (not_assessed["study"], not_assessed["assessed"]) == ("s7", "0")
    assert not_assessed["abnormal_probability"] == ""
    assert float(not_assessed["oracle_probability"]) == 0.6
    assert float(table[2]["abnormal_probability"]) == 0.75 and table[2]["assessed"] == "1"
    assert table[8]["oracle_probability"] == ""

    with (out / "metrics.json").open(encoding="utf-8") as handle:
        loaded = json.load(handle, parse_constant=_no_nan)
    assert loaded == json.loads(json.dumps(m))

    for png in pngs:
        assert png.stat().st_size > 10_000
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) >= 300
            low, high = image.convert("L").getextrema()
            assert high - low > 100  # not a blank canvas

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "73.42" in report and "0.705" in report and "MURA-v1.1" in report
    assert "procedural phantom" in report and "demo@0123456789ab" in report
    assert "not for diagnosis" in report
    for png in pngs:
        assert f"]({png.name})" in report
    assert "| A | 2 | 50.0%" in report  # the per-class table
    assert math.isclose(loaded["merged"]["study"]["pooled"]["accuracy"]["value"], 5 / 6)
