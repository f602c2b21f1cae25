"""Tests of model bundles (models.bundle)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from models.bundle import (
    BONE_TYPE_WEIGHTS,
    MANIFEST_NAME,
    BundleError,
    abnormal_weights_name,
    load_bundle,
    save_bundle,
    sha256_file,
)
from models.enhance import Preprocessing
from models.networks import two_stage_mobilenet_v2
from models.results import BONE_TYPES

PARAMS = Preprocessing(input_size=64, kernel_size=16)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    network = two_stage_mobilenet_v2(width_mult=0.35, flip_tta=True)
    path = tmp_path_factory.mktemp("bundles") / "unit-bundle"
    save_bundle(path, network, width_mult=0.35, preprocessing=PARAMS, threshold=0.4,
                training={"seed": 0, "command": "ossa train --seed 0"},
                metrics={"study_accuracy": 0.5})
    return path


@pytest.fixture
def bundle(saved: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(saved, tmp_path / "unit-bundle"))


def _manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / MANIFEST_NAME).read_text())
    return data


def _write_manifest(path: Path, data: dict[str, Any]) -> None:
    (path / MANIFEST_NAME).write_text(json.dumps(data))


def test_layout_and_manifest(saved: Path) -> None:
    files = sorted(p.name for p in saved.iterdir())
    expected = sorted([MANIFEST_NAME, BONE_TYPE_WEIGHTS,
                       *(abnormal_weights_name(b) for b in BONE_TYPES)])
    assert files == expected
    data = _manifest(saved)
    assert data["format"] == "ossa-two-stage-bundle" and data["format_version"] == 1
    assert data["name"] == "unit-bundle"
    assert data["architecture"] == "mobilenet_v2" and data["width_mult"] == 0.35
    assert data["preprocessing"] == PARAMS.to_dict()
    assert data["bone_types"] == list(BONE_TYPES)
    assert data["threshold"] == 0.4 and data["flip_tta"] is True
    assert data["training"]["seed"] == 0 and data["metrics"] == {"study_accuracy": 0.5}
    for file, entry in data["weights"].items():
        assert entry["sha256"] == sha256_file(saved / file)


def test_round_trip(saved: Path) -> None:
    loaded = load_bundle(saved)
    assert loaded.manifest.preprocessing == PARAMS
    assert loaded.manifest.threshold == 0.4 and loaded.manifest.flip_tta
    assert loaded.network.flip_tta and not loaded.network.training
    raw = (saved / MANIFEST_NAME).read_bytes()
    assert loaded.manifest_sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.version == f"unit-bundle@{loaded.manifest_sha256[:12]}"
    stored = torch.load(saved / abnormal_weights_name("WRIST"), weights_only=True)
    for key, value in loaded.network.abnormal["WRIST"].state_dict().items():
        assert torch.equal(value, stored[key])
    # the same weights give the same outputs as a second load
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        a, b = loaded.network(x), load_bundle(saved / MANIFEST_NAME).network(x)
    assert torch.equal(a.abnormal_probability, b.abnormal_probability)


def test_save_refuses_to_overwrite(saved: Path) -> None:
    network = two_stage_mobilenet_v2(width_mult=0.35)
    with pytest.raises(FileExistsError):
        save_bundle(saved, network, width_mult=0.35, preprocessing=PARAMS)


def test_save_validates_before_writing(tmp_path: Path) -> None:
    network = two_stage_mobilenet_v2(width_mult=0.35)
    with pytest.raises(ValueError, match="threshold"):
        save_bundle(tmp_path / "b", network, width_mult=0.35, preprocessing=PARAMS, threshold=2.0)
    with pytest.raises(ValueError, match="name"):
        save_bundle(tmp_path / "b", network, width_mult=0.35, preprocessing=PARAMS, name="a b/c")
    assert not (tmp_path / "b").exists()


def test_tampered_weights_are_refused(bundle: Path) -> None:
    target = bundle / abnormal_weights_name("HAND")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"abnormal_HAND\.pt: sha256"):
        load_bundle(bundle)


def test_missing_weights_file_is_refused(bundle: Path) -> None:
    (bundle / BONE_TYPE_WEIGHTS).unlink()
    with pytest.raises(BundleError, match=r"bone_type\.pt: .*missing"):
        load_bundle(bundle)


def test_missing_manifest_and_bad_json(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"manifest\.json not found"):
        load_bundle(tmp_path)
    (bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("threshold"), "missing key 'threshold'"),
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(architecture="resnet18"), "architecture"),
        (lambda d: d.update(threshold=1.5), "threshold"),
        (lambda d: d.update(width_mult="wide"), "width_mult"),
        (lambda d: d.update(bone_types=[*BONE_TYPES[:-1], "KNEE"]), "bone_types"),
        (lambda d: d["preprocessing"].update(input_size=8), "preprocessing.*input_size"),
        (lambda d: d["preprocessing"].update(gamma=1.0), "preprocessing.*unknown"),
        (lambda d: d["weights"].pop("abnormal_ELBOW.pt"), "weights"),
        (lambda d: d["weights"].update({"../evil.pt": {"sha256": "0" * 64}}), "weights"),
        (lambda d: d["weights"]["bone_type.pt"].update(sha256="xyz"), "sha256"),
        (lambda d: d.update(flip_tta="yes"), "flip_tta"),
        (lambda d: d.update(training=[]), "training"),
    ],
)
def test_malformed_manifest_is_refused(bundle: Path, edit: Any, message: str) -> None:
    data = _manifest(bundle)
    edit(data)
    _write_manifest(bundle, data)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_weights_that_do_not_fit_are_refused(bundle: Path) -> None:
    data = _manifest(bundle)
    data["width_mult"] = 0.5  # the files hold width 0.35 networks
    _write_manifest(bundle, data)
    with pytest.raises(BundleError, match=r"bone_type\.pt: weights do not fit"):
        load_bundle(bundle)


def test_pickled_objects_are_refused(bundle: Path) -> None:
    """Weights load with weights_only=True: arbitrary pickled objects never execute."""
    target = bundle / abnormal_weights_name("ELBOW")
    torch.save({"features.0.0.weight": Path("not a tensor")}, target)
    data = _manifest(bundle)
    data["weights"][target.name]["sha256"] = sha256_file(target)
    _write_manifest(bundle, data)
    with pytest.raises(BundleError, match=r"abnormal_ELBOW\.pt: cannot be read"):
        load_bundle(bundle)


def test_bundle_error_is_a_value_error() -> None:
    assert issubclass(BundleError, ValueError)
