"""Tests of the dataset box format (models.datasets.boxes) and its loader
(models.datasets.data.load_boxes)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.datasets.boxes import AnnotatedImage, Box, read_coco, write_coco
from models.datasets.data import load_boxes, load_studies


def test_box_geometry() -> None:
    a, b = Box(0, 0, 10, 10), Box(5, 5, 15, 15)
    assert a.area == 100 and a.intersection(b) == 25
    assert a.iou(b) == pytest.approx(25 / 175)
    assert Box(0, 0, 1, 1).intersection(Box(2, 2, 3, 3)) == 0
    with pytest.raises(ValueError, match="x1 > x0"):
        Box(3, 0, 3, 1)
    with pytest.raises(ValueError, match="finite"):
        Box(0, 0, float("nan"), 1)


@pytest.mark.parametrize(("bbox", "message"), [
    ([1, 2, 3], "four numbers"), ([1, 2, "3", 4], "four numbers"),
    ([1, 2, 0, 4], "no area"), ([-5, 0, 2, 2], "outside"), ([90, 0, 20, 10], "outside"),
])
def test_coco_bbox_is_checked_against_its_image(bbox: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Box.from_coco(bbox, width=100, height=50)


def test_coco_bbox_on_the_edge_is_clipped_within_a_pixel() -> None:
    assert Box.from_coco([-0.5, 0, 100.8, 50.5], width=100, height=50) == Box(0, 0, 100, 50)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    images = [AnnotatedImage("images/a.png", 40, 30, (Box(1, 2, 11.5, 22), Box(0, 0, 5, 5))),
              AnnotatedImage("images/b.png", 40, 30)]
    write_coco(tmp_path / "boxes.json", images)
    read, report = read_coco(tmp_path / "boxes.json")
    assert report.skipped == 0 and report.images == 2 and report.boxes == 2
    assert read["images/a.png"] == images[0] and read["images/b.png"] == images[1]
    assert not list(tmp_path.glob(".*partial"))


def test_malformed_entries_are_skipped_with_a_warning(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    document = {
        "images": [{"id": 1, "file_name": "images/a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "images/b.png", "width": 0, "height": 30},
                   {"id": 3, "file_name": "images/c.png"},
                   "not an object",
                   {"id": 4, "file_name": "images/unknown.png", "width": 4, "height": 4}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 2, "image_id": 1, "bbox": [38, 1, 5, 5]},
                        {"id": 3, "image_id": 9, "bbox": [1, 1, 5, 5]},
                        {"id": 4, "image_id": 1, "bbox": None}],
        "categories": [{"id": 1, "name": "fracture"}],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="models.datasets.boxes"):
        read, report = read_coco(tmp_path / "boxes.json",
                                 known=["images/a.png", "images/b.png", "images/c.png"])
    assert set(read) == {"images/a.png"} and read["images/a.png"].boxes == (Box(1, 1, 6, 6),)
    assert report.skipped == 7 and len(report.warnings) == 7
    for needle in ("images[1]", "images[2]", "images[3]", "images/unknown.png",
                   "annotations[1]", "annotations[2]", "annotations[3]"):
        assert needle in caplog.text


@pytest.mark.parametrize("text", ["{not json", json.dumps({"images": []}), json.dumps([1])])
def test_a_file_that_is_not_coco_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "boxes.json").write_text(text)
    with pytest.raises(ValueError, match=r"boxes\.json"):
        read_coco(tmp_path / "boxes.json")


def _labelled(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(data / "images" / name)
    (data / "labels.csv").write_text("path,type,label,split,group\n"
                                     "images/a.png,HAND,1,train,a\nimages/b.png,HAND,0,train,b\n")
    (data / "taxonomy.json").write_text(json.dumps(
        {"classes": [{"name": "HAND", "code": {"value": "85562004", "scheme": "SCT",
                                                "meaning": "Hand"}, "assessed": True},
                     {"name": "OTHER", "code": {"value": "38866009", "scheme": "SCT",
                                                 "meaning": "Body part"}, "assessed": False}]}))
    return data


def test_load_boxes_resolves_labelled_paths(tmp_path: Path) -> None:
    data = _labelled(tmp_path)
    assert load_boxes(data) is None  # no boxes.json: image labels only
    write_coco(data / "boxes.json", [AnnotatedImage("images/a.png", 40, 30, (Box(1, 1, 9, 9),)),
                                     AnnotatedImage("images/missing.png", 40, 30),
                                     AnnotatedImage("../outside.png", 40, 30)])
    loaded = load_boxes(data)
    assert loaded is not None
    annotated, report = loaded
    assert list(annotated) == [data / "images" / "a.png"]
    assert report.skipped == 2 and report.images == 1 and report.boxes == 1
    assert {s.images[0] for s in load_studies(data, "train")} >= set(annotated)


def test_load_boxes_in_a_mura_layout(tmp_path: Path) -> None:
    root = tmp_path / "MURA-v1.1"
    study = root / "train" / "XR_WRIST" / "patient00001" / "study1_positive"
    study.mkdir(parents=True)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(study / "image1.png")
    rel = "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png"
    (root / "train_image_paths.csv").write_text(rel + "\n")
    (root / "train_labeled_studies.csv").write_text(
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1\n")
    write_coco(root / "boxes.json", [AnnotatedImage(rel, 40, 30, (Box(2, 3, 12, 13),))])
    loaded = load_boxes(tmp_path)
    assert loaded is not None
    assert loaded[0][study / "image1.png"].boxes == (Box(2, 3, 12, 13),)
