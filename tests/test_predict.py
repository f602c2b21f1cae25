"""Tests of inference with a trained bundle (models.serving.predict), on both backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_io.pixels import normalize_radiograph
from models.datasets.data import MuraStudy, load_studies, read_image
from models.serving.manifest import MANIFEST_NAME, BundleError
from models.serving.predict import ALGORITHM_NAME, TwoStageClassifier
from models.serving.results import ImagePrediction, StudyPrediction


@pytest.fixture(scope="module")
def valid_studies(phantom_root: Path) -> tuple[MuraStudy, ...]:
    return load_studies(phantom_root, "valid")


@pytest.fixture(scope="module")
def torch_classifier(trained_bundle: Path) -> TwoStageClassifier:
    return TwoStageClassifier.from_bundle(trained_bundle, backend="torch")


def _images(study: MuraStudy) -> list[np.ndarray]:
    return [read_image(p) for p in study.images]


def test_algorithm_identifies_the_bundle(classifier: TwoStageClassifier,
                                         trained_bundle: Path) -> None:
    info = classifier.algorithm
    assert info.name == ALGORITHM_NAME
    manifest = json.loads((trained_bundle / MANIFEST_NAME).read_text())
    assert info.version.startswith(f"{manifest['name']}@")
    assert len(info.version.split("@")[1]) == 12
    assert classifier.preprocessing.to_dict() == manifest["preprocessing"]
    assert dict(classifier.thresholds) == manifest["thresholds"]
    assert classifier.taxonomy.names[-1] == "OTHER" and not classifier.taxonomy.is_assessed("OTHER")


def test_the_serving_backend_never_needs_torch(classifier: TwoStageClassifier) -> None:
    from models.serving.onnx import OnnxRunner

    assert isinstance(classifier.engine.runner, OnnxRunner)


def test_onnx_and_torch_backends_agree_within_1e4(
        classifier: TwoStageClassifier, torch_classifier: TwoStageClassifier,
        valid_studies: tuple[MuraStudy, ...]) -> None:
    images = [im for s in valid_studies[:12] for im in _images(s)]
    inputs, geometries = classifier.preprocess(images)
    a, pa = classifier.predict_arrays(inputs, geometries, maps=True)
    b, pb = torch_classifier.predict_arrays(inputs, geometries, maps=True)
    assert [p.body_part for p in pa] == [p.body_part for p in pb]
    for field in ("body_part_probabilities", "features", "abnormal_probability", "maps"):
        assert np.nanmax(np.abs(getattr(a, field) - getattr(b, field))) < 1e-4, field


def test_predict_images(classifier: TwoStageClassifier,
                        valid_studies: tuple[MuraStudy, ...]) -> None:
    study = next(s for s in valid_studies if len(s.images) >= 2 and s.body_part == "WRIST")
    images = _images(study)
    predictions = classifier.predict_images(images)
    assert len(predictions) == len(images)
    assert all(isinstance(p, ImagePrediction) for p in predictions)
    assert all(p.body_part in classifier.taxonomy for p in predictions)
    assert all(p.ood_score is not None for p in predictions)
    # order preserved: predicting one image alone gives its prediction in the batch
    single = classifier.predict_images(images[1:2])[0]
    assert single.body_part == predictions[1].body_part
    assert single.assessed == predictions[1].assessed
    if single.assessed:
        assert single.abnormal_probability == pytest.approx(predictions[1].abnormal_probability,
                                                            abs=1e-5)
    assert classifier.predict_images([]) == []


def test_predict_study_is_the_mean_of_its_assessed_images(
        classifier: TwoStageClassifier, valid_studies: tuple[MuraStudy, ...]) -> None:
    study = next(s for s in valid_studies if len(s.images) == 3 and s.body_part != "OTHER")
    result = classifier.predict_study(_images(study))
    assert isinstance(result, StudyPrediction)
    assert len(result.images) == 3
    assert result.algorithm == classifier.algorithm
    assessed = [p.abnormal_probability for p in result.images if p.abnormal_probability]
    assert result.abnormal_probability == pytest.approx(sum(assessed) / len(assessed))
    assert result.threshold == classifier.thresholds[result.body_part]
    with pytest.raises(ValueError, match="at least one"):
        classifier.predict_study([])


def test_predict_studies_batches_across_studies_with_the_same_results(
        classifier: TwoStageClassifier, valid_studies: tuple[MuraStudy, ...]) -> None:
    studies = [_images(s) for s in valid_studies[:6]]
    together = classifier.predict_studies(studies)
    alone = [classifier.predict_study(s) for s in studies]
    for a, b in zip(together, alone, strict=True):
        assert a.verdict == b.verdict
        assert [p.body_part for p in a.images] == [p.body_part for p in b.images]


def test_valid_studies_match_their_labels_and_other_is_not_assessed(
        classifier: TwoStageClassifier, valid_studies: tuple[MuraStudy, ...]) -> None:
    """What the end-to-end tests rely on: in-scope studies called right, OTHER abstained."""
    in_scope = [s for s in valid_studies if s.body_part != "OTHER" and len(s.images) == 3]
    results = [classifier.predict_study(_images(s)) for s in in_scope]
    assessed = [(r, s) for r, s in zip(results, in_scope, strict=True) if r.assessed]
    assert len(assessed) / len(in_scope) >= 0.9
    correct = [r.abnormal == s.abnormal for r, s in assessed]
    assert sum(correct) / len(correct) >= 0.9
    parts = [r.body_part == s.body_part for r, s in assessed]
    assert sum(parts) / len(parts) >= 0.95
    other = [s for s in valid_studies if s.body_part == "OTHER"]
    verdicts = [classifier.predict_study(_images(s)).verdict for s in other]
    assert verdicts.count("NOT ASSESSED") / len(verdicts) >= 0.9


def test_end_to_end_phantom_study_is_called_abnormal(classifier: TwoStageClassifier) -> None:
    """The study the storescu -> Orthanc test sends (tests/test_cli.py), as 8-bit pixels."""
    from models.datasets.phantom import render_study

    study = render_study("WRIST", True, 2024, n_images=3)
    images = [np.round(im * 255).astype(np.uint8).astype(np.float32) / 255 for im in study.images]
    result = classifier.predict_study(images)
    assert result.abnormal and result.body_part == "WRIST"


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_real_out_of_scope_radiographs_are_not_assessed(classifier: TwoStageClassifier,
                                                        name: str) -> None:
    """pydicom-data's real CRs: a chest (RG1) and a distal tibia (RG3), both out of scope."""
    image = normalize_radiograph(dcmread(get_testdata_file(name)))
    result = classifier.predict_study([image])
    assert result.verdict == "NOT ASSESSED", result
    assert result.reason.startswith("no image was assessed: ") and result.images[0].reason
    assert result.images[0].reason in result.reason


def test_input_validation_names_the_image(classifier: TwoStageClassifier) -> None:
    good = np.full((50, 40), 0.5, dtype=np.float32)
    with pytest.raises(TypeError, match=r"images\[1\]"):
        classifier.predict_images([good, (good * 255).astype(np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\].*2-D"):
        classifier.predict_images([np.zeros((5, 5, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier.predict_study([good * 3])


def test_from_bundle_refuses_a_broken_bundle(trained_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(trained_bundle, tmp_path / "copy"))
    (copy / "abnormal_WRIST.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"abnormal_WRIST\.onnx"):
        TwoStageClassifier.from_bundle(copy)


def test_batch_size_does_not_change_predictions(classifier: TwoStageClassifier) -> None:
    small = TwoStageClassifier(classifier.bundle, classifier.engine.runner, batch_size=2)
    images = [np.random.default_rng(i).random((60, 50)).astype(np.float32) for i in range(5)]
    a = small.predict_images(images)
    b = classifier.predict_images(images)
    assert [p.body_part for p in a] == [p.body_part for p in b]
    assert [p.assessed for p in a] == [p.assessed for p in b]
    with pytest.raises(ValueError, match="batch_size"):
        TwoStageClassifier(classifier.bundle, classifier.engine.runner, batch_size=0)


def test_workers_preprocess_the_same_inputs_in_order(classifier: TwoStageClassifier) -> None:
    """Images preprocessed several at once come back in their order, unchanged; an error
    still names the image."""
    images = [np.random.default_rng(i).random((60 + 7 * i, 50)).astype(np.float32)
              for i in range(5)]
    one = TwoStageClassifier(classifier.bundle, classifier.engine.runner, workers=1)
    three = TwoStageClassifier(classifier.bundle, classifier.engine.runner, workers=3)
    inputs_one, geometries_one = one.preprocess(images)
    inputs_three, geometries_three = three.preprocess(images)
    np.testing.assert_array_equal(inputs_one, inputs_three)
    assert geometries_one == geometries_three
    assert [g.source_shape for g in geometries_three] == [im.shape for im in images]
    with pytest.raises(ValueError, match=r"^images\[3\]: "):
        three.preprocess([*images[:3], images[3] * 3, images[4]])
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            TwoStageClassifier(classifier.bundle, classifier.engine.runner,
                               workers=bad)  # type: ignore[arg-type]
