"""Tests of writing bundles, their ONNX export and loading their PyTorch weights
(models.training.bundle)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.serving.engine import TwoStageEngine
from models.serving.enhance import Preprocessing
from models.serving.manifest import (
    MANIFEST_NAME,
    OOD_FILE,
    Abstention,
    BundleError,
    network_stem,
    open_bundle,
)
from models.serving.onnx import OnnxRunner
from models.serving.taxonomy import MURA_TAXONOMY, Taxonomy
from models.training.bundle import add_onnx, load_network, new_network, save_bundle
from models.training.two_stage import TorchRunner, TwoStageNetwork

PARAMS = Preprocessing(input_size=48, kernel_size=16)


#: A small taxonomy (two assessed classes) for the tests that export several bundles.
SMALL = Taxonomy.from_names(["HAND", "WRIST", "OTHER"])


def _network(arch: str = "mobilenet_v2", taxonomy: Taxonomy = MURA_TAXONOMY) -> TwoStageNetwork:
    torch.manual_seed(0)
    return new_network(taxonomy, architecture=arch, width_mult=0.35, in_channels=1).eval()


def _save(path: Path, network: TwoStageNetwork, **kwargs: Any) -> Path:
    thresholds = dict.fromkeys(network.taxonomy.assessed, 0.4)
    options: dict[str, Any] = {"architecture": "mobilenet_v2", "width_mult": 0.35,
                               "preprocessing": PARAMS, "thresholds": thresholds,
                               "threshold_rule": "0.4",
                               "training": {"seed": 0, "command": "ossa train --seed 0"},
                               "metrics": {"study_accuracy": 0.5}}
    options.update(kwargs)
    return save_bundle(path, network, **options)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("bundles") / "unit-bundle", _network())


@pytest.fixture
def bundle(saved: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(saved, tmp_path / "unit-bundle"))


def _inputs(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, 48, 48)).astype(np.float32)


def test_layout_and_manifest(saved: Path) -> None:
    names = ["body_part", *MURA_TAXONOMY.assessed]
    expected = {MANIFEST_NAME} | {network_stem(n) + ext for n in names for ext in (".pt", ".onnx")}
    assert {p.name for p in saved.iterdir()} == expected
    info = open_bundle(saved)
    assert info.manifest.taxonomy == MURA_TAXONOMY
    assert "abnormal_OTHER.pt" not in info.manifest.files  # OTHER is not assessed
    assert info.manifest.thresholds == dict.fromkeys(MURA_TAXONOMY.assessed, 0.4)
    assert info.manifest.has_format(".onnx") and info.manifest.has_format(".pt")
    assert info.version.startswith("unit-bundle@") and len(info.version) == len("unit-bundle@") + 12


def test_onnx_matches_pytorch_within_1e4(saved: Path) -> None:
    info, network = load_network(saved)
    x = _inputs()
    torch_engine = TwoStageEngine(TorchRunner(network), MURA_TAXONOMY, flip_tta=True)
    onnx_engine = TwoStageEngine(OnnxRunner(info), MURA_TAXONOMY, flip_tta=True)
    a, b = torch_engine.predict(x, maps=True), onnx_engine.predict(x, maps=True)
    assert np.array_equal(a.body_part_index, b.body_part_index)
    for field in ("body_part_probabilities", "features", "abnormal_probability", "maps"):
        left, right = getattr(a, field), getattr(b, field)
        assert left.shape == right.shape
        assert np.nanmax(np.abs(left - right)) < 1e-4, field


def test_stage2_returns_a_fracture_probability_map_at_stride_16(saved: Path) -> None:
    info = open_bundle(saved)
    runner = OnnxRunner(info)
    logits, fmap = runner.abnormal("WRIST", _inputs(3))
    assert logits.shape == (3, 2)
    assert fmap.shape == (3, 3, 3)  # ceil(48 / 16)
    assert ((fmap > 0) & (fmap < 1)).all()  # sigmoid of the head: probabilities
    # the untrained head starts from a low fracture prior (bias -4)
    assert float(fmap.mean()) < 0.2


def test_body_part_pool_is_part_of_the_exported_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = new_network(SMALL, architecture="mobilenet_v2", width_mult=0.35, in_channels=1,
                          body_part_pool=2).eval()
    path = _save(tmp_path / "pooled", network, body_part_pool=2)
    info, loaded = load_network(path)
    assert info.manifest.body_part_pool == 2
    assert isinstance(loaded.body_part.features[0], torch.nn.AvgPool2d)
    x = _inputs(4)
    a = TwoStageEngine(TorchRunner(loaded), SMALL, flip_tta=False).body_parts(x)
    b = TwoStageEngine(OnnxRunner(info), SMALL, flip_tta=False).body_parts(x)
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)
    # the pooled network sees the image at half size: a 2x2 block-constant image gives the
    # same answer as its half-size version through the unpooled trunk
    half = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 2)
    with torch.no_grad():
        direct = loaded.body_part(torch.from_numpy(x))
        trunk = torch.nn.Sequential(*list(loaded.body_part.features)[1:])
        pooled = torch.nn.functional.adaptive_avg_pool2d(trunk(half), 1).flatten(1)
        np.testing.assert_allclose(direct.numpy(), loaded.body_part.classifier(pooled).numpy(),
                                   atol=1e-5)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_other_architectures_export_and_match(arch: str, tmp_path: Path) -> None:
    path = _save(tmp_path / arch, _network(arch, SMALL), architecture=arch)
    info, network = load_network(path)
    x = _inputs(4)
    a = TwoStageEngine(TorchRunner(network), SMALL, flip_tta=False).predict(x)
    b = TwoStageEngine(OnnxRunner(info), SMALL, flip_tta=False).predict(x)
    assert np.nanmax(np.abs(a.abnormal_probability - b.abnormal_probability)) < 1e-4


def test_export_onnx_adds_onnx_to_a_torch_only_bundle(tmp_path: Path) -> None:
    path = _save(tmp_path / "pt-only", _network(taxonomy=SMALL), onnx=False)
    before = open_bundle(path)
    assert not before.manifest.has_format(".onnx")
    with pytest.raises(BundleError, match="export-onnx"):
        OnnxRunner(before)
    after = add_onnx(path)
    assert after.manifest.has_format(".onnx") and after.version != before.version
    OnnxRunner(after)  # loads


def test_ossa_bundle_export_onnx_command(tmp_path: Path) -> None:
    path = _save(tmp_path / "cli", _network(taxonomy=SMALL), onnx=False)
    proc = subprocess.run([sys.executable, "-m", "worker", "bundle", "export-onnx", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == open_bundle(path).version


def test_ood_statistics_are_listed_and_checksummed(tmp_path: Path) -> None:
    from models.serving.abstention import OodModel

    rng = np.random.default_rng(0)
    ood = OodModel.fit(rng.normal(size=(40, 8)), rng.integers(0, 3, 40))
    path = _save(tmp_path / "ood", _network(taxonomy=SMALL), ood=ood, onnx=False,
                 abstention=Abstention(min_probability=0.2, ood_threshold=3.0, rule="test"))
    info = open_bundle(path)
    assert OOD_FILE in info.manifest.files
    (path / OOD_FILE).write_bytes(b"tampered")
    with pytest.raises(BundleError, match=OOD_FILE):
        open_bundle(path)


def test_save_refuses_to_overwrite(saved: Path) -> None:
    with pytest.raises(FileExistsError):
        _save(saved, _network(taxonomy=SMALL))


def test_save_validates_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        _save(tmp_path / "bad", _network(taxonomy=SMALL), thresholds={"WRIST": 0.5})
    assert not (tmp_path / "bad").exists()


def test_tampered_weights_are_refused_before_loading(bundle: Path) -> None:
    with open(bundle / "abnormal_WRIST.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"abnormal_WRIST\.onnx: sha256"):
        open_bundle(bundle)


def test_missing_weights_file_is_refused(bundle: Path) -> None:
    (bundle / "body_part.pt").unlink()
    with pytest.raises(BundleError, match=r"body_part\.pt: file listed"):
        load_network(bundle)


def test_weights_that_do_not_fit_are_refused(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["width_mult"] = 0.5
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"do not fit mobilenet_v2 with width_mult=0.5"):
        load_network(bundle)


def test_pickled_objects_are_refused(bundle: Path) -> None:
    torch.save({"weight": object()}, bundle / "body_part.pt")  # a pickle, not tensors
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    from models.serving.manifest import sha256_file

    data["files"]["body_part.pt"]["sha256"] = sha256_file(bundle / "body_part.pt")
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"body_part\.pt: cannot be read as weights"):
        load_network(bundle)


def test_serving_copy_drops_the_pytorch_weights(saved: Path, tmp_path: Path) -> None:
    from models.serving.manifest import serving_copy

    copy = serving_copy(saved, tmp_path / "serving")
    assert not [p for p in copy.path.iterdir() if p.suffix == ".pt"]
    assert copy.manifest.has_format(".onnx") and not copy.manifest.has_format(".pt")
    assert copy.manifest.taxonomy == open_bundle(saved).manifest.taxonomy
    x = _inputs(2)
    a = TwoStageEngine(OnnxRunner(open_bundle(saved)), MURA_TAXONOMY, flip_tta=True).predict(x)
    b = TwoStageEngine(OnnxRunner(copy), MURA_TAXONOMY, flip_tta=True).predict(x)
    assert np.array_equal(a.abnormal_probability, b.abnormal_probability, equal_nan=True)
    with pytest.raises(BundleError, match=r"body_part\.pt: this bundle has no \.pt weights"):
        load_network(copy)
    with pytest.raises(FileExistsError):
        serving_copy(saved, tmp_path / "serving")
