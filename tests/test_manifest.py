"""Tests of bundle manifests and their verification (models.serving.manifest), on hand-made
bundles."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from models.serving.enhance import Preprocessing
from models.serving.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Abstention,
    BundleError,
    BundleManifest,
    network_names,
    network_stem,
    open_bundle,
)
from models.serving.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_names(["ELBOW", "WRIST", "OTHER"])
ONNX = ("body_part.onnx", "abnormal_ELBOW.onnx", "abnormal_WRIST.onnx")
PT = ("body_part.pt", "abnormal_ELBOW.pt", "abnormal_WRIST.pt")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bundle(root: Path, *, files: tuple[str, ...] = ONNX, ood: bool = False,
                edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Write arbitrary bytes for each file, then a manifest listing their sha256.

    ``edit`` may change the manifest's JSON object before it is written.
    """
    root.mkdir(parents=True, exist_ok=True)
    names = (*files, "ood.npz") if ood else files
    digests = {}
    for i, name in enumerate(names):
        data = f"fake weights {i} of {name}".encode() * (i + 1)
        (root / name).write_bytes(data)
        digests[name] = sha256(data)
    manifest = BundleManifest(
        name="unit-bundle_1.0",
        architecture="mobilenet_v2",
        width_mult=0.35,
        preprocessing=Preprocessing(input_size=64, kernel_size=16),
        taxonomy=TAXONOMY,
        thresholds={"ELBOW": 0.4, "WRIST": 0.55},
        threshold_rule="youden",
        abstention=Abstention(0.3, 7.5 if ood else None, "unit rule"),
        files=digests,
        flip_tta=True,
        training={"seed": 0, "command": "ossa train --seed 0"},
        metrics={"study_accuracy": 0.75},
    )
    text = manifest.to_json()
    if edit is not None:
        data = json.loads(text)
        edit(data)
        text = json.dumps(data, indent=2)
    (root / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def _edited(tmp_path: Path, edit: Callable[[dict[str, Any]], None], **kwargs: Any) -> Path:
    return make_bundle(tmp_path / "edited", edit=edit, **kwargs)


# --- a valid bundle --------------------------------------------------------------------------


def test_open_bundle_verifies_and_parses(bundle: Path) -> None:
    info = open_bundle(bundle)
    manifest = info.manifest
    assert info.path == bundle
    assert manifest.name == "unit-bundle_1.0"
    assert manifest.taxonomy == TAXONOMY
    assert dict(manifest.thresholds) == {"ELBOW": 0.4, "WRIST": 0.55}
    assert manifest.abstention == Abstention(0.3, None, "unit rule")
    assert manifest.preprocessing == Preprocessing(input_size=64, kernel_size=16)
    assert manifest.flip_tta is True
    assert set(manifest.files) == set(ONNX)
    assert manifest.files["body_part.onnx"] == sha256((bundle / "body_part.onnx").read_bytes())


def test_version_is_name_and_short_manifest_hash(bundle: Path) -> None:
    info = open_bundle(bundle)
    digest = sha256((bundle / MANIFEST_NAME).read_bytes())
    assert info.manifest_sha256 == digest
    assert info.version == f"unit-bundle_1.0@{digest[:12]}"


def test_version_changes_with_the_manifest(tmp_path: Path) -> None:
    first = open_bundle(make_bundle(tmp_path / "a"))
    second = open_bundle(make_bundle(tmp_path / "b",
                                     edit=lambda d: d["metrics"].update(study_accuracy=0.8)))
    assert first.manifest.name == second.manifest.name
    assert first.version != second.version


def test_open_bundle_accepts_the_manifest_path(bundle: Path) -> None:
    info = open_bundle(bundle / MANIFEST_NAME)
    assert info.path == bundle
    assert info.version == open_bundle(bundle).version


def test_manifest_round_trips_through_json(bundle: Path) -> None:
    manifest = open_bundle(bundle).manifest
    data = json.loads(manifest.to_json())
    assert data["format_version"] == FORMAT_VERSION
    assert data["files"]["body_part.onnx"] == {"sha256": manifest.files["body_part.onnx"]}
    assert BundleManifest.from_dict(data) == manifest


def test_file_paths(bundle: Path) -> None:
    info = open_bundle(bundle)
    assert info.file("abnormal_ELBOW.onnx") == bundle / "abnormal_ELBOW.onnx"
    with pytest.raises(BundleError, match=r"ood\.npz: not in this bundle's manifest\.json"):
        info.file("ood.npz")


def test_unlisted_files_are_ignored(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("not listed")
    assert open_bundle(bundle).manifest.name == "unit-bundle_1.0"


# --- tampered, missing, unreadable -----------------------------------------------------------


def test_tampered_file_is_named(bundle: Path) -> None:
    (bundle / "abnormal_WRIST.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"^abnormal_WRIST\.onnx: sha256 [0-9a-f]{64} does not"):
        open_bundle(bundle)


def test_missing_listed_file_is_named(bundle: Path) -> None:
    (bundle / "abnormal_ELBOW.onnx").unlink()
    with pytest.raises(BundleError, match=r"^abnormal_ELBOW\.onnx: file listed in .* missing"):
        open_bundle(bundle)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"manifest\.json not found"):
        open_bundle(tmp_path)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00"])
def test_manifest_that_is_not_json(bundle: Path, content: bytes) -> None:
    (bundle / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(bundle)


def test_bundle_error_is_a_value_error() -> None:
    assert issubclass(BundleError, ValueError)


# --- malformed keys --------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set(("taxonomy", "classes", 0, "name"), "elbow"),
         r"key 'taxonomy': taxonomy\.classes\[0\]: name must be"),
        (_set(("taxonomy", "classes", 1, "code", "value"), ""),
         r"key 'taxonomy': taxonomy\.classes\[1\]: code\.value"),
        (_set(("taxonomy",), {"classes": None}), r"key 'taxonomy': .*'classes' list"),
        (_delete(("thresholds", "WRIST")),
         r"thresholds must give one value per assessed class \['ELBOW', 'WRIST'\], "
         r"got \['ELBOW'\]"),
        (_set(("thresholds", "OTHER"), 0.5), r"thresholds must give one value per assessed"),
        (_set(("thresholds", "ELBOW"), 1.5), r"thresholds\['ELBOW'\] must be in \[0, 1\]"),
        (_set(("architecture",), "resnet50"), r"architecture must be one of .*'resnet50'"),
        (_set(("format_version",), 1),
         r"unsupported format_version 1 .*retrain the bundle with `ossa train`"),
        (_set(("format",), "something-else"), r"format must be 'ossa-two-stage-bundle'"),
        (_delete(("flip_tta",)), r"missing key 'flip_tta'"),
        (_set(("flip_tta",), "yes"), r"flip_tta must be a bool"),
        (_set(("name",), "bad name!"), r"name must be"),
        (_set(("name",), "bundle\n"), r"name must be"),
        (_set(("width_mult",), 0), r"width_mult must be in \(0, 4\]"),
        (_set(("threshold_rule",), ""), r"threshold_rule must be a non-empty string"),
        (_set(("preprocessing", "channels"), 2), r"key 'preprocessing'"),
        (_set(("abstention",), {"min_probability": 0.3}), r"key 'abstention'"),
        (_set(("abstention", "min_probability"), 2.0), r"key 'abstention'.*min_probability"),
        (_set(("files", "body_part.onnx"), "0" * 64), r"key 'files' must map"),
        (_set(("files", "body_part.onnx"), {"sha256": "A" * 64}),
         r"files\['body_part\.onnx'\] must be a lowercase hex sha256"),
        (_set(("files", "body_part.onnx"), {"sha256": "a" * 64 + "\n"}),
         r"files\['body_part\.onnx'\] must be a lowercase hex sha256"),
        (_set(("files", "../escape.onnx"), {"sha256": "a" * 64}),
         r"'\.\./escape\.onnx' is not a plain file name"),
        (_set(("files", MANIFEST_NAME), {"sha256": "a" * 64}), r"is not a plain file name"),
        (_delete(("files", "abnormal_WRIST.onnx")),
         r"files must list abnormal_WRIST\.onnx or abnormal_WRIST\.pt"),
        (_set(("training",), []), r"training must be a mapping"),
        (lambda d: d.clear(), r"format must be"),
    ],
)
def test_malformed_manifest_names_the_key(tmp_path: Path,
                                          edit: Callable[[dict[str, Any]], None],
                                          match: str) -> None:
    path = _edited(tmp_path, edit)
    with pytest.raises(BundleError, match=r"^manifest\.json: ") as info:
        open_bundle(path)
    assert info.match(match)


def test_manifest_top_level_must_be_an_object(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(BundleError, match="top level must be a JSON object"):
        open_bundle(bundle)


# --- weights formats -------------------------------------------------------------------------


def test_has_format_of_an_onnx_only_bundle(bundle: Path) -> None:
    manifest = open_bundle(bundle).manifest
    assert manifest.has_format(".onnx")
    assert not manifest.has_format(".pt")


def test_has_format_of_a_bundle_with_both(tmp_path: Path) -> None:
    manifest = open_bundle(make_bundle(tmp_path / "both", files=ONNX + PT)).manifest
    assert manifest.has_format(".onnx")
    assert manifest.has_format(".pt")


def test_has_format_needs_every_network(tmp_path: Path) -> None:
    mixed = ("body_part.pt", "abnormal_ELBOW.onnx", "abnormal_WRIST.onnx")
    manifest = open_bundle(make_bundle(tmp_path / "mixed", files=mixed)).manifest
    assert not manifest.has_format(".onnx")
    assert not manifest.has_format(".pt")


def test_weights_paths(bundle: Path) -> None:
    info = open_bundle(bundle)
    assert info.weights("body_part", ".onnx") == bundle / "body_part.onnx"
    assert info.weights("WRIST", ".onnx") == bundle / "abnormal_WRIST.onnx"


def test_weights_in_a_missing_format(bundle: Path) -> None:
    info = open_bundle(bundle)
    with pytest.raises(BundleError, match=r"^abnormal_WRIST\.pt: this bundle has no \.pt weights$"):
        info.weights("WRIST", ".pt")
    with pytest.raises(BundleError, match=r"body_part\.pt: this bundle has no \.pt weights"):
        info.weights("body_part", ".pt")


def test_missing_onnx_weights_hint_at_export(tmp_path: Path) -> None:
    info = open_bundle(make_bundle(tmp_path / "pt", files=PT))
    with pytest.raises(BundleError, match=r"no \.onnx weights.*ossa bundle export-onnx"):
        info.weights("ELBOW", ".onnx")


def test_network_names_and_stems() -> None:
    assert network_names(TAXONOMY) == ("body_part", "ELBOW", "WRIST")
    assert [network_stem(n) for n in network_names(TAXONOMY)] == [
        "body_part", "abnormal_ELBOW", "abnormal_WRIST"]


# --- abstention and the OOD file -------------------------------------------------------------


def test_bundle_with_ood_statistics(tmp_path: Path) -> None:
    info = open_bundle(make_bundle(tmp_path / "ood", ood=True))
    assert info.manifest.abstention.ood_threshold == 7.5
    assert info.file("ood.npz") == tmp_path / "ood" / "ood.npz"


def test_ood_threshold_without_ood_file_is_refused(tmp_path: Path) -> None:
    path = _edited(tmp_path, _set(("abstention", "ood_threshold"), 7.5))
    with pytest.raises(BundleError, match=r"ood_threshold and files\['ood\.npz'\] go together"):
        open_bundle(path)


def test_ood_file_without_threshold_is_refused(tmp_path: Path) -> None:
    path = _edited(tmp_path, _set(("abstention", "ood_threshold"), None), ood=True)
    with pytest.raises(BundleError, match=r"ood_threshold and files\['ood\.npz'\] go together"):
        open_bundle(path)


def test_tampered_ood_file_is_named(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "ood", ood=True)
    (path / "ood.npz").write_bytes(b"other statistics")
    with pytest.raises(BundleError, match=r"^ood\.npz: sha256"):
        open_bundle(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_probability": 1.5}, r"abstention\.min_probability must be in \[0, 1\]"),
        ({"min_probability": True}, r"abstention\.min_probability"),
        ({"ood_threshold": float("inf")}, r"abstention\.ood_threshold must be a finite number"),
        ({"ood_threshold": float("nan")}, r"abstention\.ood_threshold"),
        ({"ood_threshold": True}, r"abstention\.ood_threshold"),
        ({"rule": None}, r"abstention\.rule must be a string"),
    ],
)
def test_abstention_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Abstention(**kwargs)


def test_abstention_round_trip() -> None:
    abstention = Abstention(0.25, 3.5, "keeps 99%")
    assert Abstention.from_dict(abstention.to_dict()) == abstention
    assert Abstention.from_dict(Abstention().to_dict()) == Abstention(0.0, None, "none")
    with pytest.raises(ValueError, match="exactly min_probability, ood_threshold, rule"):
        Abstention.from_dict({"min_probability": 0.1, "ood_threshold": None})
