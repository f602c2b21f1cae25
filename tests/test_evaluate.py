"""Tests of ``ossa evaluate`` (models.evaluation.evaluate) with the session's trained bundle."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.datasets.data import load_studies
from models.evaluation.evaluate import evaluate_classifier
from models.serving.predict import TwoStageClassifier

#: Runs ``ossa evaluate`` and fails if torch was imported on the way (base install path).
_NO_TORCH = """
import sys
from worker.cli import main
code = main(sys.argv[1:])
assert 'torch' not in sys.modules, 'ossa evaluate imported torch'
sys.exit(code)
"""


@pytest.fixture(scope="module")
def report(phantom_root: Path, trained_bundle: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("evaluation") / "report"
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "evaluate", "--data", str(phantom_root), "--bundle",
         str(trained_bundle), "--out", str(out), "--bootstrap", "200",
         "--data-description", "the procedural phantom"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_report_files(report: tuple[Path, str], phantom_root: Path) -> None:
    out, stdout = report
    names = {p.name for p in out.iterdir()}
    assert {"predictions.csv", "metrics.json", "report.md"} <= names
    assert sum(name.endswith(".png") for name in names) >= 3
    n_images = sum(len(s.images) for s in load_studies(phantom_root, "valid"))
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_images
    assert list(rows[0])[:7] == ["path", "true_type", "pred_type", "type_probability",
                                 "assessed", "abnormal_probability", "label"]
    other = [r for r in rows if r["true_type"] == "OTHER"]
    assert other and all(r["abnormal_probability"] == "" for r in other if r["assessed"] == "0")
    assert "stage-1 accuracy" in stdout


def test_metrics_agree_with_the_predictions(report: tuple[Path, str]) -> None:
    out, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    correct = sum(r["true_type"] == r["pred_type"] for r in rows) / len(rows)
    assert metrics["stage1"]["accuracy"]["value"] == pytest.approx(correct)
    assert metrics["stage1"]["accuracy"]["value"] >= 0.9
    study = metrics["merged"]["study"]["pooled"]
    assert study["accuracy"]["value"] >= 0.85
    assert study["accuracy"]["ci_low"] <= study["accuracy"]["value"] <= study["accuracy"]["ci_high"]
    assert metrics["abstention"]["per_class"]["OTHER"]["image_rate"] >= 0.9
    assert "73.42" in (out / "report.md").read_text()


def test_oracle_routing_uses_the_true_class(classifier: TwoStageClassifier,
                                            phantom_root: Path) -> None:
    studies = [s for s in load_studies(phantom_root, "valid")][:20]
    rows = evaluate_classifier(classifier, studies)
    for row in rows:
        in_scope = classifier.taxonomy.is_assessed(row.true_type)
        assert (row.oracle_probability is not None) == in_scope
        if row.assessed and row.pred_type == row.true_type:
            assert row.oracle_probability == pytest.approx(row.abnormal_probability, abs=1e-6)


def test_model_card_reads_its_figures_from_the_report(report: tuple[Path, str],
                                                      trained_bundle: Path,
                                                      tmp_path: Path) -> None:
    from models.evaluation.model_card import region_accuracy, render

    out, _ = report
    readme = tmp_path / "README.md"
    readme.write_text("# Data\n\n## Source and licence\nCredit: Someone et al., CC BY 4.0.\n\n"
                      "## Changes\n- none\n")
    card = render(trained_bundle, out, data_readme=readme, command="ossa train --preset test")
    metrics = json.loads((out / "metrics.json").read_text())
    region = region_accuracy(out / "predictions.csv", n_bootstrap=200)
    assert f"{region['value']:.3f}" in card
    assert f"{metrics['merged']['study']['pooled']['auroc']['value']:.3f}" in card
    assert "Credit: Someone et al., CC BY 4.0." in card and "## Changes" not in card
    assert "Not a diagnosis" in card and "ossa train --preset test" in card
    with open(out / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["true_type"] != "MIXED"]
    assert region["value"] == pytest.approx(
        sum(r["true_type"] == r["pred_type"] for r in rows) / len(rows))
