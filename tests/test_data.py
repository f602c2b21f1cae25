"""Tests of the MURA-v1.1 loader (models.datasets.data)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from models.datasets.data import (
    MuraStudy,
    find_dataset_dir,
    load_studies,
    load_taxonomy,
    read_image,
    tolerate_truncated_images,
)
from models.serving.taxonomy import (
    MURA_BONE_TYPES,
    MURA_TAXONOMY,
    BodyPartClass,
    CodedConcept,
    Taxonomy,
)


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


def _png(path: Path, value: int = 100, mode: str = "L", size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value,) * 3).save(path)


def _mini_mura(base: Path, name: str = "MURA-v1.1") -> Path:
    """Two studies laid out like the real release (CSV paths start with the dataset name)."""
    root = base / name
    studies = [
        ("valid/XR_WRIST/patient11185/study1_positive", 1, 2),
        ("valid/XR_FINGER/patient11186/study2_negative", 0, 1),
    ]
    lines, labels = [], []
    for study, label, count in studies:
        for n in range(1, count + 1):
            _png(root / study / f"image{n}.png", value=50 * n)
            lines.append(f"MURA-v1.1/{study}/image{n}.png")
        labels.append(f"MURA-v1.1/{study}/,{label}")
    (root / "valid_image_paths.csv").write_text("\n".join(lines) + "\n")
    (root / "valid_labeled_studies.csv").write_text("\n".join(labels) + "\n")
    return root


def test_load_studies_matches_the_csvs(phantom_root: Path) -> None:
    dataset = phantom_root / "MURA-v1.1"
    for split in ("train", "valid"):
        studies = load_studies(phantom_root, split)
        labels = _csv_rows(dataset / f"{split}_labeled_studies.csv")
        images = _csv_rows(dataset / f"{split}_image_paths.csv")
        assert len(studies) == len(labels)
        assert sum(len(s.images) for s in studies) == len(images)
        for study, (path, label) in zip(studies, labels, strict=True):
            assert study.split == split
            assert study.label == int(label)
            assert path == f"MURA-v1.1/{study.key}/"
            assert study.body_part in MURA_TAXONOMY.names and f"XR_{study.body_part}/" in path
            assert study.patient.startswith("patient") and len(study.patient) == 12
            assert [p.name for p in study.images] == [
                f"image{n}.png" for n in range(1, len(study.images) + 1)
            ]
            assert all(p.is_file() for p in study.images)
    # the MURA-v1.1 directory itself works as well as its parent
    assert load_studies(dataset, "valid") == load_studies(phantom_root, "valid")
    # the phantom has the out-of-scope class; a loader limited to MURA's seven refuses it
    assert {s.body_part for s in load_studies(phantom_root, "train")} == set(MURA_TAXONOMY.names)
    with pytest.raises(ValueError, match="XR_OTHER"):
        load_studies(phantom_root, "train", classes=MURA_BONE_TYPES)


def test_real_mura_style_csvs_and_renamed_directory(tmp_path: Path) -> None:
    root = _mini_mura(tmp_path, name="MURA-copy")
    studies = load_studies(root, "valid")
    assert [(s.body_part, s.patient, s.study, s.label, len(s.images)) for s in studies] == [
        ("WRIST", "patient11185", "study1_positive", 1, 2),
        ("FINGER", "patient11186", "study2_negative", 0, 1),
    ]
    assert studies[0].abnormal and not studies[1].abnormal
    assert studies[0].images[0] == root / "valid/XR_WRIST/patient11185/study1_positive/image1.png"
    assert find_dataset_dir(tmp_path / "MURA-copy") == root


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: (r / "valid_labeled_studies.csv").unlink(), "missing valid_labeled_studies"),
        (lambda r: (r / "valid/XR_WRIST/patient11185/study1_positive/image2.png").unlink(),
         "do not exist"),
        (lambda r: (r / "valid_labeled_studies.csv").write_text(
            "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,1\n"), "belong to no"),
        (lambda r: (r / "valid_labeled_studies.csv").write_text(
            "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,yes\n"), "line 1"),
        (lambda r: (r / "valid_labeled_studies.csv").write_text(
            "MURA-v1.1/valid/XR_KNEE/patient1/study1_positive/,1\n"), "XR_KNEE"),
        (lambda r: (r / "valid_image_paths.csv").write_text(
            "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png\n"
            "MURA-v1.1/valid/XR_FINGER/patient11186/study2_negative/image1.png\n"
            "MURA-v1.1/../etc/passwd/x/y.png\n"), "malformed"),
    ],
)
def test_load_studies_rejects_inconsistent_data(tmp_path: Path, mutate: Callable[[Path], object],
                                                message: str) -> None:
    root = _mini_mura(tmp_path)
    mutate(root)
    with pytest.raises(ValueError, match=message):
        load_studies(root, "valid")


def test_find_dataset_dir_and_split_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"MURA-v1\.1 directory"):
        find_dataset_dir(tmp_path)
    root = _mini_mura(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_studies(root, "test")
    with pytest.raises(ValueError, match="missing train_labeled_studies"):
        load_studies(root, "train")


def test_study_record_is_frozen_and_validated(tmp_path: Path) -> None:
    study = MuraStudy("train", "HAND", "patient00001", "study1_negative", 0, (tmp_path / "a",))
    with pytest.raises(AttributeError):
        study.label = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="body_part"):
        MuraStudy("train", "wrist", "p", "s", 0, (tmp_path,))
    with pytest.raises(ValueError, match="label"):
        MuraStudy("train", "HAND", "p", "s", 2, (tmp_path,))
    with pytest.raises(ValueError, match="images"):
        MuraStudy("train", "HAND", "p", "s", 0, ())


def test_read_image_modes(tmp_path: Path) -> None:
    _png(tmp_path / "l.png", value=255, size=(20, 10))
    _png(tmp_path / "rgb.png", value=51, mode="RGB", size=(20, 10))
    wide = np.full((10, 20), 65535, dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "16.png")
    Image.new("LA", (20, 10), (102, 7)).save(tmp_path / "la.png")
    palette = Image.new("P", (20, 10), 1)
    palette.putpalette([0, 0, 0, 153, 153, 153] + [0] * 762)
    palette.save(tmp_path / "p.png")
    Image.new("RGB", (20, 10), (204, 204, 204)).save(tmp_path / "rgb.jpg", quality=95)
    Image.new("L", (20, 10), 51).save(tmp_path / "l.jpg", quality=95)
    cases = (("l.png", 1.0), ("rgb.png", 0.2), ("16.png", 1.0), ("la.png", 0.4), ("p.png", 0.6),
             ("rgb.jpg", 0.8), ("l.jpg", 0.2))
    for name, expected in cases:
        image = read_image(tmp_path / name)
        assert image.dtype == np.float32 and image.shape == (10, 20), name
        assert image.min() >= 0.0 and image.max() <= 1.0, name
        assert float(image.mean()) == pytest.approx(expected, abs=0.01), name


def test_read_image_rejects_unreadable_files_naming_them(tmp_path: Path) -> None:
    _png(tmp_path / "good.png", size=(200, 200))
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("truncated.png", "text.png", "empty.png"):
        with pytest.raises(ValueError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


@pytest.fixture
def real_mura_replica(tmp_path: Path) -> Path:
    """A tiny copy of the real MURA-v1.1 release's conventions, written with Pillow.

    As in the release: CSVs without a header, RGB and grayscale PNGs side by side, and the same
    patient number under two bone types (different studies, different patients' folders).
    """
    root = tmp_path / "MURA-v1.1"
    studies = [  # (study dir, label, [(mode, grey value)])
        ("train/XR_WRIST/patient00001/study1_positive", 1, [("RGB", 200), ("L", 100)]),
        ("train/XR_HAND/patient00001/study1_positive", 1, [("L", 50)]),
        ("train/XR_HAND/patient00002/study1_negative", 0, [("RGB", 30), ("RGB", 60),
                                                          ("L", 90)]),
        ("train/XR_SHOULDER/patient00003/study2_negative", 0, [("L", 10)]),
    ]
    lines, labels = [], []
    for study, label, images in studies:
        for n, (mode, value) in enumerate(images, start=1):
            _png(root / study / f"image{n}.png", value=value, mode=mode, size=(24, 16))
            lines.append(f"MURA-v1.1/{study}/image{n}.png")
        labels.append(f"MURA-v1.1/{study}/,{label}")
    (root / "train_image_paths.csv").write_text("\n".join(lines) + "\n")
    (root / "train_labeled_studies.csv").write_text("\n".join(labels) + "\n")
    return root


def test_real_mura_layout_loads(real_mura_replica: Path) -> None:
    studies = load_studies(real_mura_replica, "train", classes=MURA_BONE_TYPES)
    assert [(s.body_part, s.patient, s.label, len(s.images)) for s in studies] == [
        ("WRIST", "patient00001", 1, 2),
        ("HAND", "patient00001", 1, 1),
        ("HAND", "patient00002", 0, 3),
        ("SHOULDER", "patient00003", 0, 1),
    ]
    keys = [s.key for s in studies]
    assert len(set(keys)) == len(keys)
    assert keys[:2] == ["train/XR_WRIST/patient00001/study1_positive",
                        "train/XR_HAND/patient00001/study1_positive"]
    # the default classes (with OTHER) read real MURA just as well
    assert load_studies(real_mura_replica.parent, "train") == studies
    # RGB and L images both come out as one grey channel
    means = [round(float(read_image(p).mean()) * 255) for p in studies[2].images]
    assert means == [30, 60, 90]
    assert all(read_image(p).shape == (16, 24) for s in studies for p in s.images)


# --- generic labelled datasets (labels.csv + taxonomy.json) ---------------------------------

_GENERIC_TAXONOMY = Taxonomy((
    BodyPartClass("ARM", CodedConcept("53120007", "SCT", "Upper limb"), True),
    BodyPartClass("LEG", CodedConcept("61685007", "SCT", "Lower limb"), False),
))


def _write_labels(root: Path, rows: list[str]) -> None:
    (root / "labels.csv").write_text("path,type,label,split,group\n" + "\n".join(rows) + "\n")


@pytest.fixture
def generic_dataset(tmp_path: Path) -> Path:
    """A labelled dataset: JPEG and PNG, gray and RGB, several sizes, groups of 1-2 images."""
    root = tmp_path / "labelled"
    files = {  # path: (mode, value, size, format)
        "img/a1.png": ("L", 40, (30, 20)), "img/a2.jpg": ("RGB", 200, (64, 48)),
        "img/b.jpg": ("L", 120, (17, 33)), "img/sub/c.png": ("RGB", 90, (25, 25)),
        "img/d.jpg": ("RGB", 10, (40, 40)),
    }
    for name, (mode, value, size) in files.items():
        _png(root / name, value=value, mode=mode, size=size)  # Pillow picks the format
    (root / "taxonomy.json").write_text(json.dumps(_GENERIC_TAXONOMY.to_dict()))
    _write_labels(root, [
        "img/a1.png,ARM,1,train,patient-a",
        "img/b.jpg,LEG,0,valid,patient-b",
        "img/a2.jpg,ARM,1,train,patient-a",
        "img/sub/c.png,ARM,0,train,patient-c",
        "img/d.jpg,ARM,0,valid,patient-d",
    ])
    return root


def test_generic_layout_loads_one_study_per_group(generic_dataset: Path) -> None:
    root = generic_dataset
    train = load_studies(root, "train")
    assert [(s.body_part, s.patient, s.study, s.label, s.images) for s in train] == [
        ("ARM", "patient-a", "patient-a", 1, (root / "img/a1.png", root / "img/a2.jpg")),
        ("ARM", "patient-c", "patient-c", 0, (root / "img/sub/c.png",)),
    ]
    valid = load_studies(root, "valid")
    assert [(s.body_part, s.patient, s.label) for s in valid] == [
        ("LEG", "patient-b", 0), ("ARM", "patient-d", 0)]
    keys = [s.key for s in train + valid]
    assert len(set(keys)) == len(keys)
    assert load_taxonomy(root) == _GENERIC_TAXONOMY
    assert load_studies(root, "valid", classes=("LEG", "ARM")) == valid
    means = [round(float(read_image(p).mean()) * 255) for s in train for p in s.images]
    assert means == pytest.approx([40, 200, 90], abs=2)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["img/a1.png,ARM,1,train,g", "img/a2.jpg,ARM,0,train,g"], "group 'g'.*label"),
        (["img/a1.png,ARM,1,train,g", "img/a2.jpg,LEG,1,train,g"], "group 'g'.*type"),
        (["img/a1.png,ARM,1,train,g", "img/a2.jpg,ARM,1,valid,g"], "group 'g'.*split"),
        (["img/a1.png,KNEE,1,train,g"], "type 'KNEE'"),
        (["img/a1.png,ARM,yes,train,g"], "label"),
        (["img/a1.png,ARM,1,test,g"], "split"),
        (["img/a1.png,ARM,1,train,"], "empty group"),
        (["../outside.png,ARM,1,train,g"], "malformed path"),
        (["/etc/passwd,ARM,1,train,g"], "malformed path"),
        (["img/a1.png,ARM,1,train"], "expected 5 fields"),
        (["img/nothere.png,ARM,1,train,g"], "do not exist"),
    ],
)
def test_generic_layout_rejects_inconsistent_rows(generic_dataset: Path, rows: list[str],
                                                  message: str) -> None:
    _write_labels(generic_dataset, rows)
    with pytest.raises(ValueError, match=message):
        load_studies(generic_dataset, "train")


def test_generic_layout_classes_header_and_taxonomy_errors(generic_dataset: Path) -> None:
    root = generic_dataset
    with pytest.raises(ValueError, match=r"type 'LEG'.*accepted"):
        load_studies(root, "valid", classes=("ARM",))
    (root / "taxonomy.json").write_text('{"classes": []}')
    with pytest.raises(ValueError, match=r"taxonomy\.json"):
        load_taxonomy(root)
    (root / "taxonomy.json").unlink()
    with pytest.raises(ValueError, match=r"missing taxonomy\.json"):
        load_studies(root, "train")
    (root / "taxonomy.json").write_text(json.dumps(_GENERIC_TAXONOMY.to_dict()))
    (root / "labels.csv").write_text("path,type,label\nimg/a1.png,ARM,1\n")
    with pytest.raises(ValueError, match="header"):
        load_studies(root, "train")


def test_load_taxonomy_is_none_for_mura(real_mura_replica: Path, tmp_path: Path) -> None:
    assert load_taxonomy(real_mura_replica) is None
    assert load_taxonomy(real_mura_replica.parent) is None
    with pytest.raises(ValueError, match=r"labels\.csv"):
        load_taxonomy(tmp_path / "empty")


def test_read_image_tolerates_truncated_jpeg_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:-20])
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"cut\.jpg"):
        read_image(tmp_path / "cut.jpg")
    image = read_image(tmp_path / "cut.jpg", tolerate_truncated=True)
    full = read_image(tmp_path / "full.jpg")
    assert image.shape == full.shape == (64, 80) and image.dtype == np.float32
    assert float(np.abs(image - full)[:32].max()) < 1e-6  # the top half is intact
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # Pillow's switch restored
    with pytest.raises(ValueError, match=r"cut\.jpg"):  # and strict reads stay strict
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(ValueError, match=r"junk\.jpg"):
        read_image(tmp_path / "junk.jpg", tolerate_truncated=True)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.jpg", tolerate_truncated=True)
    with tolerate_truncated_images():
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
