"""Tests of the procedural MURA-layout phantom (models.phantom)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import phantom
from models.phantom import (
    FINDINGS,
    PhantomConfig,
    render_study,
    split_sizes,
    write_phantom,
)
from models.results import BONE_TYPES

IMAGE_PATH = re.compile(
    r"^MURA-v1\.1/(train|valid)/XR_([A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/"
    r"image(\d+)\.png$"
)


@pytest.mark.parametrize("bone", BONE_TYPES)
def test_render_study_gives_radiograph_like_images(bone: str) -> None:
    # without collimation borders (bright, like unexposed film) the frame edge is dark
    study = render_study(bone, False, seed=3, config=PhantomConfig(artifact_probability=0.0))
    assert study.bone == bone and not study.abnormal and study.finding == "none"
    assert 1 <= len(study.images) <= 4
    for image in study.images:
        assert image.dtype == np.float32 and image.ndim == 2
        assert 100 <= min(image.shape) and max(image.shape) <= 400
        assert image.min() >= 0.0 and image.max() <= 1.0
        # bone bright on a dark background: the border is darker than the brightest structures
        border = np.concatenate([image[:5].ravel(), image[-5:].ravel()])
        assert np.percentile(image, 99) > np.median(border) + 0.3


def test_render_study_is_deterministic() -> None:
    a = render_study("WRIST", True, seed=(7, 1))
    b = render_study("WRIST", True, seed=(7, 1))
    c = render_study("WRIST", True, seed=(7, 2))
    assert a.finding == b.finding
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert not all(
        x.shape == y.shape and np.array_equal(x, y)
        for x, y in zip(a.images, c.images, strict=False)
    )


@pytest.mark.parametrize("bone", BONE_TYPES)
@pytest.mark.parametrize("finding", FINDINGS)
def test_finding_is_visible_in_every_image(bone: str, finding: str) -> None:
    """A seed's normal and abnormal renderings share anatomy and views; only the finding differs."""
    config = PhantomConfig(findings=(finding,))
    normal = render_study(bone, False, seed=11, n_images=3, config=config)
    abnormal = render_study(bone, True, seed=11, n_images=3, config=config)
    assert abnormal.finding == finding
    for n, a in zip(normal.images, abnormal.images, strict=True):
        assert n.shape == a.shape
        changed = np.abs(a - n) > 0.1
        # a visible, local change: at least ~20 px at 96 px input, but not the whole image
        assert 0.001 < changed.mean() < 0.5, (bone, finding, changed.mean())


def test_hardware_is_brighter_than_bone() -> None:
    config = PhantomConfig(findings=("hardware",), artifact_probability=0.0)
    normal = render_study("HUMERUS", False, seed=5, n_images=1, config=config).images[0]
    metal = render_study("HUMERUS", True, seed=5, n_images=1, config=config).images[0]
    added = metal - normal > 0.05
    assert added.any()
    assert metal[added].mean() > np.percentile(normal, 99)


def test_render_study_validates_arguments() -> None:
    with pytest.raises(ValueError, match="bone"):
        render_study("KNEE", False, seed=0)
    with pytest.raises(ValueError, match="n_images"):
        render_study("HAND", False, seed=0, n_images=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_size": 500, "max_size": 400}, "min_size"),
        ({"images_per_study": (0.5, 0.2)}, "images_per_study"),
        ({"findings": ("tumour",)}, "findings"),
        ({"artifact_probability": 1.5}, "artifact_probability"),
    ],
)
def test_config_names_the_invalid_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PhantomConfig(**kwargs)  # type: ignore[arg-type]


def test_split_sizes() -> None:
    assert split_sizes(60, 0.25) == (45, 15)
    assert split_sizes(10, 0.25) == (7, 3)
    assert split_sizes(2, 0.25) == (1, 1)
    assert split_sizes(1, 0.25) == (1, 0)
    with pytest.raises(ValueError, match="studies"):
        split_sizes(0, 0.25)
    with pytest.raises(ValueError, match="valid_fraction"):
        split_sizes(10, 1.0)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_write_phantom_mura_layout(tmp_path: Path) -> None:
    root = write_phantom(tmp_path, studies=6, seed=1)
    assert root == tmp_path / "MURA-v1.1"
    names = sorted(p.name for p in root.iterdir())
    assert names == ["train", "train_image_paths.csv", "train_labeled_studies.csv", "valid",
                     "valid_image_paths.csv", "valid_labeled_studies.csv"]
    patients: dict[str, set[str]] = {"train": set(), "valid": set()}
    for split, expected in (("train", split_sizes(6, 0.25)[0]), ("valid", split_sizes(6, 0.25)[1])):
        labels = _rows(root / f"{split}_labeled_studies.csv")
        assert len(labels) == expected * len(BONE_TYPES)
        labelled = {}
        for study_dir, label in labels:
            assert study_dir.endswith("/") and label in ("0", "1")
            assert study_dir.endswith(("_positive/", "_negative/"))
            assert (label == "1") == study_dir.endswith("_positive/")
            labelled[study_dir] = label
        by_study: dict[str, list[int]] = {}
        for (line,) in _rows(root / f"{split}_image_paths.csv"):
            match = IMAGE_PATH.match(line)
            assert match, line
            assert match.group(1) == split and match.group(2) in BONE_TYPES
            patients[split].add(match.group(3))
            assert (tmp_path / line).is_file()
            by_study.setdefault(line.rsplit("/", 1)[0] + "/", []).append(int(match.group(6)))
        assert set(by_study) == set(labelled)
        for numbers in by_study.values():
            assert numbers == list(range(1, len(numbers) + 1)) and 1 <= len(numbers) <= 4
        # balanced labels per bone type
        for bone in BONE_TYPES:
            bone_labels = [v for k, v in labelled.items() if f"/XR_{bone}/" in k]
            assert abs(bone_labels.count("1") - bone_labels.count("0")) <= 1
    assert not patients["train"] & patients["valid"]
    with Image.open(next(root.glob("train/XR_HAND/*/*/image1.png"))) as im:
        assert im.mode == "L"
    findings = _rows(tmp_path / phantom.FINDINGS_CSV)
    assert len(findings) == 6 * len(BONE_TYPES)
    assert all((kind == "none") == path.endswith("_negative/") for path, kind in findings)


def test_write_phantom_is_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    a = write_phantom(tmp_path / "a", studies=2, seed=4)
    b = write_phantom(tmp_path / "b", studies=2, seed=4, workers=2)
    for name in ("train_image_paths.csv", "valid_labeled_studies.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for line in (a / "valid_image_paths.csv").read_text().splitlines():
        assert (tmp_path / "a" / line).read_bytes() == (tmp_path / "b" / line).read_bytes()
    with pytest.raises(ValueError, match="overwrite"):
        write_phantom(tmp_path / "a", studies=2, seed=4)
    again = write_phantom(tmp_path / "a", studies=3, seed=4, overwrite=True)
    assert len(_rows(again / "train_labeled_studies.csv")) == 2 * len(BONE_TYPES)


def test_cli_main(tmp_path: Path) -> None:
    parser = phantom.get_args_parser(add_help=False)
    args = parser.parse_args(["--out", str(tmp_path), "--studies", "2", "--seed", "9",
                              "--findings", "lesion", "--min-size", "120", "--max-size", "160"])
    assert phantom.main(args) == 0
    rows = _rows(tmp_path / phantom.FINDINGS_CSV)
    assert {kind for _, kind in rows} <= {"none", "lesion"}
    for (line,) in _rows(tmp_path / "MURA-v1.1" / "train_image_paths.csv"):
        with Image.open(tmp_path / line) as im:
            assert max(im.size) <= 160 and min(im.size) >= 60
