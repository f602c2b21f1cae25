"""Tests of the procedural MURA-layout phantom (models.datasets.phantom)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.datasets import phantom
from models.datasets.boxes import BOXES_JSON, Box
from models.datasets.data import load_boxes
from models.datasets.phantom import (
    FINDINGS,
    OTHER_KINDS,
    PHANTOM_CLASSES,
    PhantomConfig,
    PhantomStudy,
    render_study,
    split_sizes,
    write_phantom,
)
from models.serving.taxonomy import MURA_BONE_TYPES, MURA_TAXONOMY

REPO = Path(__file__).resolve().parents[1]

IMAGE_PATH = re.compile(
    r"^MURA-v1\.1/(train|valid)/XR_([A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/"
    r"image(\d+)\.png$"
)


def test_phantom_classes_follow_the_taxonomy() -> None:
    assert PHANTOM_CLASSES == MURA_TAXONOMY.names
    assert set(PHANTOM_CLASSES) - set(MURA_BONE_TYPES) == {"OTHER"}
    # every class has a renderer: an anatomy per bone type, out-of-scope kinds for OTHER
    from models.datasets.phantom.anatomy import ANATOMY
    from models.datasets.phantom.other import OTHER_ANATOMY, OTHER_CLASS

    assert set(ANATOMY) == set(MURA_BONE_TYPES) and OTHER_CLASS == "OTHER"
    assert set(OTHER_ANATOMY) == {"CHEST", "PELVIS", "KNEE", "SKULL", "SPINE", "ABDOMEN"}


def _check_radiograph_like(study: PhantomStudy) -> None:
    assert 1 <= len(study.images) <= 4
    for image in study.images:
        assert image.dtype == np.float32 and image.ndim == 2
        assert 100 <= min(image.shape) and max(image.shape) <= 400
        assert image.min() >= 0.0 and image.max() <= 1.0
        # bone bright on a dark background: the border is darker than the brightest structures
        border = np.concatenate([image[:5].ravel(), image[-5:].ravel()])
        assert np.percentile(image, 99) > np.median(border) + 0.3


@pytest.mark.parametrize("bone", MURA_BONE_TYPES)
def test_render_study_gives_radiograph_like_images(bone: str) -> None:
    # without collimation borders (bright, like unexposed film) the frame edge is dark
    study = render_study(bone, False, seed=3, config=PhantomConfig(artifact_probability=0.0))
    assert study.body_part == bone and study.anatomy == bone
    assert not study.abnormal and study.finding == "none"
    _check_radiograph_like(study)


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_other_kinds_are_radiograph_like_and_differ(kind: str) -> None:
    config = PhantomConfig(artifact_probability=0.0)
    study = render_study("OTHER", False, seed=3, config=config, anatomy=kind)
    assert study.body_part == "OTHER" and study.anatomy == kind
    assert not study.abnormal and study.finding == "none"
    _check_radiograph_like(study)
    # same seed, same view draws: another kind changes the picture, not just its noise
    thumb = _thumbnail(study.images[0])
    for other in OTHER_KINDS:
        if other != kind:
            alt = render_study("OTHER", False, seed=3, config=config, anatomy=other)
            assert (np.abs(thumb - _thumbnail(alt.images[0])) > 0.1).mean() > 0.05, other


def _thumbnail(image: np.ndarray) -> np.ndarray:
    pixels = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((64, 64))
    return np.asarray(pixels, dtype=np.float32) / 255.0


def test_other_kind_is_drawn_from_the_seed() -> None:
    config = PhantomConfig(min_size=64, max_size=64)
    kinds = [render_study("OTHER", False, seed=s, n_images=1, config=config).anatomy
             for s in range(60)]
    assert set(kinds) == set(OTHER_KINDS)
    again = [render_study("OTHER", False, seed=s, n_images=1, config=config).anatomy
             for s in range(10)]
    assert again == kinds[:10]


@pytest.mark.parametrize("bone", MURA_BONE_TYPES)
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
    with pytest.raises(ValueError, match="body_part"):
        render_study("KNEE", False, seed=0)
    with pytest.raises(ValueError, match="n_images"):
        render_study("HAND", False, seed=0, n_images=0)
    with pytest.raises(ValueError, match="abnormal"):
        render_study("OTHER", True, seed=0)
    with pytest.raises(ValueError, match="anatomy"):
        render_study("OTHER", False, seed=0, anatomy="WRIST")
    with pytest.raises(ValueError, match="anatomy"):
        render_study("HAND", False, seed=0, anatomy="CHEST")
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="anatomy"):
        PhantomStudy("OTHER", False, "none", (image,), anatomy="OTHER")


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
    assert names == ["boxes.json", "train", "train_image_paths.csv", "train_labeled_studies.csv",
                     "valid", "valid_image_paths.csv", "valid_labeled_studies.csv"]
    for split in ("train", "valid"):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(
            f"XR_{name}" for name in PHANTOM_CLASSES)
    patients: dict[str, set[str]] = {"train": set(), "valid": set()}
    for split, expected in (("train", split_sizes(6, 0.25)[0]), ("valid", split_sizes(6, 0.25)[1])):
        labels = _rows(root / f"{split}_labeled_studies.csv")
        assert len(labels) == expected * len(PHANTOM_CLASSES)
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
            assert match.group(1) == split and match.group(2) in PHANTOM_CLASSES
            patients[split].add(match.group(3))
            assert (tmp_path / line).is_file()
            by_study.setdefault(line.rsplit("/", 1)[0] + "/", []).append(int(match.group(6)))
        assert set(by_study) == set(labelled)
        for numbers in by_study.values():
            assert numbers == list(range(1, len(numbers) + 1)) and 1 <= len(numbers) <= 4
        # balanced labels per bone type; out-of-scope studies are all normal
        for bone in MURA_BONE_TYPES:
            bone_labels = [v for k, v in labelled.items() if f"/XR_{bone}/" in k]
            assert abs(bone_labels.count("1") - bone_labels.count("0")) <= 1
        other = [v for k, v in labelled.items() if "/XR_OTHER/" in k]
        assert len(other) == expected and set(other) == {"0"}
    assert not patients["train"] & patients["valid"]
    with Image.open(next(root.glob("train/XR_HAND/*/*/image1.png"))) as im:
        assert im.mode == "L"
    findings = _rows(tmp_path / phantom.FINDINGS_CSV)
    assert len(findings) == 6 * len(PHANTOM_CLASSES)
    for path, finding, anatomy in findings:
        assert (finding == "none") == path.endswith("_negative/")
        body_part = path.split("/")[2].removeprefix("XR_")
        if body_part == "OTHER":
            assert finding == "none" and anatomy in OTHER_KINDS
        else:
            assert anatomy == body_part and finding in ("none", *FINDINGS)


def test_write_phantom_draws_every_other_kind(tmp_path: Path) -> None:
    write_phantom(tmp_path, studies=24, seed=0,
                  config=PhantomConfig(min_size=48, max_size=64, images_per_study=(1.0,)))
    kinds = Counter(anatomy for path, _, anatomy in _rows(tmp_path / phantom.FINDINGS_CSV)
                    if "/XR_OTHER/" in path)
    assert set(kinds) == set(OTHER_KINDS) and sum(kinds.values()) == 24


def test_write_phantom_is_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    a = write_phantom(tmp_path / "a", studies=2, seed=4)
    b = write_phantom(tmp_path / "b", studies=2, seed=4, workers=2)
    for name in ("train_image_paths.csv", "valid_labeled_studies.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    findings = (tmp_path / "a" / phantom.FINDINGS_CSV).read_bytes()
    assert findings == (tmp_path / "b" / phantom.FINDINGS_CSV).read_bytes()
    boxes = (a / BOXES_JSON).read_bytes()
    assert boxes == (b / BOXES_JSON).read_bytes()  # in-process and worker processes alike
    listed = [line for split in ("train", "valid")
              for line in (a / f"{split}_image_paths.csv").read_text().splitlines()]
    assert [image["file_name"] for image in json.loads(boxes)["images"]] == listed
    assert b"/XR_OTHER/" in findings
    for line in (a / "valid_image_paths.csv").read_text().splitlines():
        assert (tmp_path / "a" / line).read_bytes() == (tmp_path / "b" / line).read_bytes()
    with pytest.raises(ValueError, match="overwrite"):
        write_phantom(tmp_path / "a", studies=2, seed=4)
    again = write_phantom(tmp_path / "a", studies=3, seed=4, overwrite=True)
    assert len(_rows(again / "train_labeled_studies.csv")) == 2 * len(PHANTOM_CLASSES)


def test_cli_main(tmp_path: Path) -> None:
    parser = phantom.get_args_parser(add_help=False)
    args = parser.parse_args(["--out", str(tmp_path), "--studies", "2", "--seed", "9",
                              "--findings", "lesion", "--min-size", "120", "--max-size", "160"])
    assert phantom.main(args) == 0
    rows = _rows(tmp_path / phantom.FINDINGS_CSV)
    assert {finding for _, finding, _ in rows} <= {"none", "lesion"}
    assert any("/XR_OTHER/" in path for path, _, _ in rows)
    for (line,) in _rows(tmp_path / "MURA-v1.1" / "train_image_paths.csv"):
        with Image.open(tmp_path / line) as im:
            assert max(im.size) <= 160 and min(im.size) >= 60


def _inside(boxes: tuple[Box, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Mask of the pixels inside any of ``boxes``, checking that each lies in the image."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height, box
        assert all(float(c).is_integer() for c in box.as_tuple()), box  # whole pixels
        mask[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = True
    return mask


@pytest.mark.parametrize("bone", MURA_BONE_TYPES)
@pytest.mark.parametrize("finding", ["lesion", "hardware"])
def test_boxes_cover_what_the_finding_changes(bone: str, finding: str) -> None:
    """A seed's normal and abnormal images differ only by the finding: inside its boxes."""
    config = PhantomConfig(findings=(finding,))
    normal = render_study(bone, False, seed=11, n_images=3, config=config)
    abnormal = render_study(bone, True, seed=11, n_images=3, config=config)
    assert normal.boxes == ((), (), ())
    assert len(abnormal.boxes) == 3
    for n, a, boxes in zip(normal.images, abnormal.images, abnormal.boxes, strict=True):
        assert boxes, (bone, finding)
        inside = _inside(boxes, a.shape)
        changed = np.abs(a - n) > 0.1
        assert inside[changed].mean() >= 0.9, (bone, finding, inside[changed].mean())
        faint = np.abs(a - n) > 0.05
        for box in boxes:
            x0, y0, x1, y1 = (int(c) for c in box.as_tuple())
            held = faint[y0:y1, x0:x1]
            assert held.mean() > 0.02, (bone, finding, box)  # no box of an unchanged place
            if finding == "lesion":  # tight: it ends within a few pixels of what changed
                rows, cols = np.flatnonzero(held.any(axis=1)), np.flatnonzero(held.any(axis=0))
                slack = (cols[0], rows[0], x1 - x0 - 1 - cols[-1], y1 - y0 - 1 - rows[-1])
                assert max(slack) <= 6, (bone, box, slack)


@pytest.mark.parametrize("bone", MURA_BONE_TYPES)
def test_fracture_boxes_cover_the_fracture_site(bone: str) -> None:
    """A fracture's box holds its gap, jagged line and callus, and stays at the site.

    A displaced fracture also moves the whole distal fragment, far beyond the site, which the
    box leaves out on purpose (an annotator boxes the fracture, not the forearm); so the same
    view is rendered with the fracture undisplaced, and what that changes must be boxed.
    """
    from models.datasets.phantom.anatomy import ANATOMY
    from models.datasets.phantom.findings import Findings, key_point, make_findings
    from models.datasets.phantom.rendering import _finding_boxes, _random_view, _render_view

    config = PhantomConfig(artifact_probability=0.0)
    for seed in range(3):
        rng = np.random.default_rng([seed, 1])
        body = ANATOMY[bone](rng)
        found = make_findings(body, "fracture", rng)
        view = _random_view(bone, rng, config)
        while not view.shows(key_point(found)):
            view = _random_view(bone, rng, config)
        undisplaced = Findings(
            fractures=[dataclasses.replace(f, shift=(0.0, 0.0), angle=0.0)
                       for f in found.fractures],
            callus=found.callus)
        # the same exposure, blur and noise draws for all three renderings
        normal, _ = _render_view(body, Findings(), view, np.random.default_rng(7), config)
        still, _ = _render_view(body, undisplaced, view, np.random.default_rng(7), config)
        fractured, exposed = _render_view(body, found, view, np.random.default_rng(7), config)
        assert exposed == (0, 0, view.width, view.height)
        boxes = _finding_boxes(body, found, view, exposed)
        assert 1 <= len(boxes) <= len(found.fractures)
        inside = _inside(boxes, fractured.shape)
        changed = np.abs(still - normal) > 0.1
        assert changed.any() and inside[changed].mean() >= 0.9, (bone, seed)
        first = found.fractures[0]  # the key point, shown by the view
        x0, y0, x1, y1 = view.pixel_box((*first.center, *first.center))
        assert inside[(y0 + y1) // 2, (x0 + x1) // 2]
        # the site, not the bone: a box spans at most about a dozen local bone radii
        for box in boxes:
            assert max(box.x1 - box.x0, box.y1 - box.y0) <= (
                14 * max(f.radius for f in found.fractures) * view.scale + 5), (bone, seed)


def test_write_phantom_writes_the_boxes_of_every_image(tmp_path: Path) -> None:
    config = PhantomConfig(min_size=96, max_size=128)
    root = write_phantom(tmp_path, 4, 0, config=config)
    again = write_phantom(tmp_path / "again", 4, 0, config=config)
    assert (again / BOXES_JSON).read_bytes() == (root / BOXES_JSON).read_bytes()
    listed = [line for split in ("train", "valid")
              for (line,) in _rows(root / f"{split}_image_paths.csv")]
    document = json.loads((root / BOXES_JSON).read_text())
    assert [image["file_name"] for image in document["images"]] == listed
    loaded = load_boxes(tmp_path)
    assert loaded is not None
    by_file, report = loaded
    assert report.skipped == 0 and report.warnings == []
    assert set(by_file) == {tmp_path / line for line in listed}
    kinds = {path: finding for path, finding, _ in _rows(tmp_path / phantom.FINDINGS_CSV)}
    assert set(kinds.values()) == {"none", *FINDINGS}  # this seed draws every kind
    boxed: dict[str, int] = {}
    for file, image in by_file.items():
        with Image.open(file) as png:
            assert (image.width, image.height) == png.size
        _inside(image.boxes, (image.height, image.width))
        study = image.file_name.rsplit("/", 1)[0] + "/"
        if kinds[study] == "none":
            assert image.boxes == (), image.file_name
        boxed[study] = boxed.get(study, 0) + len(image.boxes)
    for study, finding in kinds.items():
        if finding != "none":
            assert boxed[study] >= 1, (study, finding)
    assert report.boxes == sum(boxed.values()) == len(document["annotations"])


def test_phantom_study_validates_boxes() -> None:
    image = np.zeros((8, 10), np.float32)
    study = PhantomStudy("WRIST", True, "lesion", (image, image), anatomy="WRIST")
    assert study.boxes == ((), ())
    with pytest.raises(ValueError, match="boxes"):
        PhantomStudy("WRIST", True, "lesion", (image,), "WRIST", boxes=((), ()))
    with pytest.raises(ValueError, match="boxes"):
        PhantomStudy("WRIST", False, "none", (image,), "WRIST", boxes=((Box(0, 0, 2, 2),),))
    with pytest.raises(ValueError, match="outside"):
        PhantomStudy("WRIST", True, "lesion", (image,), "WRIST", boxes=((Box(5, 0, 11, 2),),))
