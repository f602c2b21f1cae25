"""Tests of inference with a trained bundle (models.predict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import MANIFEST_NAME, BundleError
from models.data import MuraStudy, load_studies, read_image
from models.enhance import preprocess
from models.predict import ALGORITHM_NAME, TwoStageClassifier
from models.results import BONE_TYPES, ImagePrediction, StudyPrediction


@pytest.fixture(scope="module")
def valid_studies(phantom_root: Path) -> tuple[MuraStudy, ...]:
    return load_studies(phantom_root, "valid")


def _images(study: MuraStudy) -> list[np.ndarray]:
    return [read_image(p) for p in study.images]


def test_algorithm_identifies_the_bundle(classifier: TwoStageClassifier,
                                         trained_bundle: Path) -> None:
    info = classifier.algorithm
    assert info.name == ALGORITHM_NAME == "Ossa two-stage MobileNetV2"
    manifest = json.loads((trained_bundle / MANIFEST_NAME).read_text())
    assert info.version.startswith(f"{manifest['name']}@")
    assert len(info.version.split("@")[1]) == 12
    assert classifier.preprocessing.to_dict() == manifest["preprocessing"]
    assert classifier.threshold == manifest["threshold"]


def test_predict_images(classifier: TwoStageClassifier,
                        valid_studies: tuple[MuraStudy, ...]) -> None:
    study = next(s for s in valid_studies if len(s.images) >= 2)
    images = _images(study)
    predictions = classifier.predict_images(images)
    assert len(predictions) == len(images)
    assert all(isinstance(p, ImagePrediction) for p in predictions)
    assert all(p.bone in BONE_TYPES for p in predictions)
    assert all(0.0 <= p.abnormal_probability <= 1.0 for p in predictions)
    assert all(1 / len(BONE_TYPES) <= p.bone_probability <= 1.0 for p in predictions)
    # order preserved: predicting one image alone gives its prediction in the batch
    single = classifier.predict_images(images[1:2])[0]
    assert single.bone == predictions[1].bone
    assert single.abnormal_probability == pytest.approx(predictions[1].abnormal_probability,
                                                        abs=1e-5)
    assert classifier.predict_images([]) == []


def test_predict_study_is_the_mean_of_its_images(classifier: TwoStageClassifier,
                                                 valid_studies: tuple[MuraStudy, ...]) -> None:
    study = next(s for s in valid_studies if len(s.images) == 3)
    result = classifier.predict_study(_images(study))
    assert isinstance(result, StudyPrediction)
    assert len(result.images) == 3
    assert result.threshold == classifier.threshold
    assert result.algorithm == classifier.algorithm
    mean = sum(p.abnormal_probability for p in result.images) / 3
    assert result.abnormal_probability == pytest.approx(mean)
    with pytest.raises(ValueError, match="at least one"):
        classifier.predict_study([])


def test_three_image_valid_studies_match_their_labels(
        classifier: TwoStageClassifier, valid_studies: tuple[MuraStudy, ...]) -> None:
    """What the end-to-end test relies on: 3-image valid studies are called correctly."""
    three = [s for s in valid_studies if len(s.images) == 3]
    assert len(three) >= 10
    results = [classifier.predict_study(_images(s)) for s in three]
    correct = [r.abnormal == s.abnormal for r, s in zip(results, three, strict=True)]
    assert correct[0], f"first 3-image valid study {three[0].key} is misclassified"
    assert sum(correct) / len(correct) >= 0.9
    bones = [r.bone == s.bone for r, s in zip(results, three, strict=True)]
    assert sum(bones) / len(bones) >= 0.95


def test_end_to_end_phantom_study_is_called_abnormal(classifier: TwoStageClassifier) -> None:
    """The study the storescu -> Orthanc test sends (tests/test_cli.py), as 8-bit pixels."""
    from models.phantom import render_study

    study = render_study("WRIST", True, 2024, n_images=3)
    images = [np.round(im * 255).astype(np.uint8).astype(np.float32) / 255 for im in study.images]
    result = classifier.predict_study(images)
    assert result.abnormal and result.bone == "WRIST"


def test_predictions_use_the_manifest_preprocessing(classifier: TwoStageClassifier,
                                                    valid_studies: tuple[MuraStudy, ...]) -> None:
    image = _images(valid_studies[0])[0]
    tensor = preprocess(image, classifier.preprocessing)[None]
    direct = classifier.predict_tensors(tensor)
    via_images = classifier.predict_images([image])[0]
    assert via_images.abnormal_probability == pytest.approx(
        float(direct.abnormal_probability[0]), abs=1e-6)
    assert not direct.abnormal_probability.requires_grad
    assert not classifier.bundle.network.training


def test_input_validation_names_the_image(classifier: TwoStageClassifier) -> None:
    good = np.full((50, 40), 0.5, dtype=np.float32)
    with pytest.raises(TypeError, match=r"images\[1\]"):
        classifier.predict_images([good, (good * 255).astype(np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\].*2-D"):
        classifier.predict_images([np.zeros((5, 5, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier.predict_study([good * 3])


def test_from_bundle_refuses_a_broken_bundle(trained_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(trained_bundle, tmp_path / "copy"))
    (copy / "abnormal_WRIST.pt").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"abnormal_WRIST\.pt"):
        TwoStageClassifier.from_bundle(copy)


def test_batch_size_validation(classifier: TwoStageClassifier) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TwoStageClassifier(classifier.bundle, batch_size=0)
    small = TwoStageClassifier(classifier.bundle, batch_size=2)
    images = [np.random.default_rng(i).random((60, 50)).astype(np.float32) for i in range(5)]
    a = small.predict_images(images)
    b = classifier.predict_images(images)
    assert [p.bone for p in a] == [p.bone for p in b]
    assert np.allclose([p.abnormal_probability for p in a],
                       [p.abnormal_probability for p in b], atol=1e-5)
    assert torch.is_grad_enabled()  # inference_mode did not leak
