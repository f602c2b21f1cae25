"""Tests of the MURA-v1.1 loader (models.data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import (
    MuraImageDataset,
    MuraStudy,
    find_dataset_dir,
    load_studies,
    read_image,
)
from models.enhance import Preprocessing
from models.results import BONE_TYPES


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
            assert study.bone in BONE_TYPES and f"XR_{study.bone}" in path
            assert study.patient.startswith("patient") and len(study.patient) == 12
            assert [p.name for p in study.images] == [
                f"image{n}.png" for n in range(1, len(study.images) + 1)
            ]
            assert all(p.is_file() for p in study.images)
    # the MURA-v1.1 directory itself works as well as its parent
    assert load_studies(dataset, "valid") == load_studies(phantom_root, "valid")


def test_real_mura_style_csvs_and_renamed_directory(tmp_path: Path) -> None:
    root = _mini_mura(tmp_path, name="MURA-copy")
    studies = load_studies(root, "valid")
    assert [(s.bone, s.patient, s.study, s.label, len(s.images)) for s in studies] == [
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
def test_load_studies_rejects_inconsistent_data(tmp_path: Path, mutate, message: str) -> None:
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
    with pytest.raises(ValueError, match="bone"):
        MuraStudy("train", "KNEE", "p", "s", 0, (tmp_path,))
    with pytest.raises(ValueError, match="label"):
        MuraStudy("train", "HAND", "p", "s", 2, (tmp_path,))
    with pytest.raises(ValueError, match="images"):
        MuraStudy("train", "HAND", "p", "s", 0, ())


def test_read_image_modes(tmp_path: Path) -> None:
    _png(tmp_path / "l.png", value=255)
    _png(tmp_path / "rgb.png", value=51, mode="RGB")
    wide = np.full((10, 20), 65535, dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "16.png")
    for name, expected in (("l.png", 1.0), ("rgb.png", 0.2), ("16.png", 1.0)):
        image = read_image(tmp_path / name)
        assert image.dtype == np.float32 and image.ndim == 2
        assert image.min() == pytest.approx(expected, abs=1e-3)


def test_image_dataset_preprocesses_and_caches(tmp_path: Path) -> None:
    root = _mini_mura(tmp_path)
    studies = load_studies(root, "valid")
    params = Preprocessing(input_size=32, kernel_size=8)
    dataset = MuraImageDataset(studies, params)
    assert len(dataset) == 3
    image, bone, label = dataset[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert (bone, label) == (BONE_TYPES.index("WRIST"), 1)
    assert dataset[2][1:] == (BONE_TYPES.index("FINGER"), 0)
    # cached: the file is not read again
    studies[0].images[0].unlink()
    assert torch.equal(dataset[0][0], image)
    bank = dataset.bank()
    assert bank.images.shape == (3, 1, 32, 32) and bank.images.dtype == torch.float16
    assert bank.bones.tolist() == [6, 6, 1] and bank.labels.tolist() == [1, 1, 0]
    assert bank.studies.tolist() == [0, 0, 1]


def test_uncached_dataset_reads_every_time(tmp_path: Path) -> None:
    root = _mini_mura(tmp_path)
    studies = load_studies(root, "valid")
    dataset = MuraImageDataset(studies, Preprocessing(input_size=32, kernel_size=8), cache=False)
    first = dataset[1][0]
    assert first.dtype == torch.float32
    studies[0].images[1].unlink()
    with pytest.raises(FileNotFoundError):
        dataset[1]
    threaded = MuraImageDataset(studies[1:], Preprocessing(input_size=32, kernel_size=8))
    assert threaded.bank(workers=2).images.shape == (1, 1, 32, 32)
