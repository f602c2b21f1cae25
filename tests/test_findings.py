"""Tests of findings from fracture maps (models.serving.findings) and of the localisation figures
(models.evaluation.localisation)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.datasets.boxes import Box
from models.evaluation.localisation import (
    FROC_THRESHOLDS,
    LocalisedImage,
    localisation_metrics,
    locate,
    plot_froc,
    write_findings_csv,
)
from models.serving.enhance import InputGeometry
from models.serving.findings import Finding, image_findings, map_findings, regions

#: An 8x8 map of a 128 px input (stride 16) made from a 256 x 512 source image: the source
#: was halved (scale 0.5), placed 32 px down in the square (rows 32-96 of the input).
GEOMETRY = InputGeometry(source_shape=(128, 256), crop=(0, 0, 128, 256), scale_y=0.5,
                         scale_x=0.5, pad_top=32, pad_left=0)


def _map() -> np.ndarray:
    fmap = np.full((8, 8), 0.02, np.float32)
    fmap[3, 2:4] = [0.9, 0.7]  # region A: cells (3, 2)-(3, 3), peak 0.9
    fmap[4, 6] = 0.6  # region B: one cell, peak 0.6
    fmap[5, 7] = 0.55  # diagonal neighbour of B: the same region (8-connectivity)
    return fmap


def test_regions_are_connected_components_ordered_by_peak() -> None:
    found = regions(_map(), 0.5)
    assert [round(p, 2) for p, _ in found] == [0.9, 0.6]
    assert found[0][1] == (3, 2, 4, 4) and found[1][1] == (4, 6, 6, 8)


def test_findings_are_boxes_in_source_pixels() -> None:
    found = map_findings(_map(), GEOMETRY, stride=16, threshold=0.5, max_findings=3)
    assert len(found) == 2
    a, b = found
    # cells rows 3-4, columns 2-4 -> input x 32-64, y 48-64 -> source x 64-128, y 32-64
    assert (a.x0, a.y0, a.x1, a.y1) == pytest.approx((64, 32, 128, 64))
    assert a.probability == pytest.approx(0.9)
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((192, 64, 256, 128))
    assert map_findings(_map(), GEOMETRY, stride=16, threshold=0.5, max_findings=1) == (a,)
    assert map_findings(_map(), GEOMETRY, stride=16, threshold=0.95, max_findings=3) == ()


def test_at_least_one_gives_the_region_around_the_peak() -> None:
    fmap = np.full((8, 8), 0.01, np.float32)
    fmap[2, 2], fmap[2, 3], fmap[6, 6] = 0.3, 0.2, 0.25
    found = map_findings(fmap, GEOMETRY, stride=16, threshold=0.5, max_findings=3,
                         at_least_one=True)
    assert len(found) == 1
    assert found[0].probability == pytest.approx(0.3)
    # cells (2, 2)-(2, 3) (0.2 >= 0.3 / 2), not the separate (6, 6)
    assert (found[0].x0, found[0].x1) == pytest.approx((64, 128))


def test_a_region_on_the_padding_only_is_no_finding() -> None:
    fmap = np.zeros((8, 8), np.float32)
    fmap[0, 0] = 0.9  # input rows 0-16: above the image (pad_top 32)
    assert map_findings(fmap, GEOMETRY, stride=16, threshold=0.5, max_findings=3) == ()


def test_only_flagged_assessed_images_get_findings() -> None:
    maps = np.stack([_map()] * 4)
    out = image_findings(maps, [GEOMETRY] * 4, [0.8, 0.3, None, 0.9],
                         ["HAND", "HAND", "HAND", "SHOULDER"], operating={"HAND": 0.5,
                                                                           "SHOULDER": 0.5},
                         finding_thresholds={"HAND": 0.5}, stride=16, max_findings=3)
    assert [len(f) for f in out] == [2, 0, 0, 0]  # below threshold; not assessed; no setting
    assert image_findings(np.zeros((1, 0, 0), np.float32), [GEOMETRY], [0.9], ["HAND"],
                          operating={"HAND": 0.5}, finding_thresholds={"HAND": 0.5}, stride=16,
                          max_findings=3) == [()]


def test_finding_is_checked_and_scales() -> None:
    f = Finding(10, 20, 30, 40, 0.5)
    assert f.scaled(2, 3) == Finding(20, 60, 60, 120, 0.5)
    assert f.as_dict() == {"x0": 10, "y0": 20, "x1": 30, "y1": 40, "probability": 0.5}
    with pytest.raises(ValueError, match="x0 < x1"):
        Finding(10, 0, 10, 5, 0.5)
    with pytest.raises(ValueError, match="probability"):
        Finding(0, 0, 1, 1, 1.5)


def _image(label: int, boxes: tuple[Box, ...] | None, findings: tuple[Finding, ...],
           top: Finding | None, froc: tuple[tuple[Finding, ...], ...] | None = None
           ) -> LocalisedImage:
    return LocalisedImage(path=f"img{label}-{len(findings)}.png", true_type="HAND", label=label,
                          boxes=boxes, findings=findings, top_region=top,
                          froc_regions=froc or tuple(() for _ in FROC_THRESHOLDS))


def test_localisation_metrics_count_hits_and_normal_findings() -> None:
    fracture = (Box(100, 100, 120, 120),)
    on = Finding(110, 110, 150, 150, 0.9)  # overlaps, IoU 100/1900
    off = Finding(300, 300, 320, 320, 0.8)
    tight = Finding(100, 100, 121, 121, 0.7)
    images = [
        _image(1, fracture, (on,), on),  # hit (overlap), not at IoU 0.1
        _image(1, fracture, (tight, off), tight),  # hit, also at IoU 0.1
        _image(1, fracture, (off, on), off),  # highest finding misses
        _image(1, fracture, (), on),  # not flagged: a miss, but pointing hits
        _image(1, None, (on,), on),  # unannotated: left out
        _image(0, None, (off,), off),
        _image(0, None, (), off),
    ]
    m = localisation_metrics(images, ["HAND"], n_bootstrap=200)["classes"]["HAND"]
    assert m["fractured_annotated_films"] == 4 and m["annotated_boxes"] == 4
    assert m["hit_rate"]["value"] == pytest.approx(0.5)
    assert m["hit_rate_iou_0.1"]["value"] == pytest.approx(0.25)
    assert m["pointing_hit_rate"]["value"] == pytest.approx(0.75)
    assert m["hit_rate"]["ci_low"] <= 0.5 <= m["hit_rate"]["ci_high"]
    assert m["normal_films"] == 2 and m["findings_per_normal_film"] == pytest.approx(0.5)
    assert m["normal_films_with_findings"] == 1


def test_froc_counts_lesions_and_regions_per_normal_film(tmp_path: Path) -> None:
    fracture = (Box(0, 0, 10, 10), Box(50, 50, 60, 60))
    hit = Finding(5, 5, 8, 8, 0.9)
    regions_at = tuple((hit,) if t <= 0.5 else () for t in FROC_THRESHOLDS)
    normal_at = tuple((Finding(1, 1, 2, 2, 0.3),) * (2 if t <= 0.2 else 0)
                      for t in FROC_THRESHOLDS)
    images = [_image(1, fracture, (hit,), hit, regions_at), _image(0, None, (), None, normal_at)]
    froc = localisation_metrics(images, ["HAND"], n_bootstrap=10)["classes"]["HAND"]["froc"]
    by_t = {p["threshold"]: p for p in froc}
    assert by_t[0.05]["sensitivity"] == 0.5 and by_t[0.05]["findings_per_normal_film"] == 2
    assert by_t[0.5]["sensitivity"] == 0.5 and by_t[0.5]["findings_per_normal_film"] == 0
    assert by_t[0.9]["sensitivity"] == 0.0
    plot_froc({"classes": {"HAND": {"froc": froc, "annotated_boxes": 2}}}, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_locate_gives_the_top_region_and_a_region_list_per_threshold() -> None:
    top, froc = locate(_map(), GEOMETRY, stride=16, max_findings=3)
    assert top is not None and top.probability == pytest.approx(0.9)
    assert len(froc) == len(FROC_THRESHOLDS)
    by_t = dict(zip(FROC_THRESHOLDS, froc, strict=True))
    assert len(by_t[0.5]) == 2 and len(by_t[0.65]) == 1 and by_t[0.95] == ()
    assert len(by_t[0.05]) == 2  # 0.02 background stays below


def test_findings_csv(tmp_path: Path) -> None:
    write_findings_csv([("a.png", [Finding(1, 2, 3, 4, 0.5), Finding(5, 6, 7, 8, 0.25)]),
                        ("b.png", [])], tmp_path / "findings.csv")
    with open(tmp_path / "findings.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "rank", "x0", "y0", "x1", "y1", "probability"]
    assert rows[1:] == [["a.png", "1", "1", "2", "3", "4", "0.5"],
                        ["a.png", "2", "5", "6", "7", "8", "0.25"]]
