"""Tests of the FracAtlas importer (models.datasets.fracatlas) on a tiny FracAtlas-like release."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from models.datasets import fracatlas
from models.datasets.data import load_studies, load_taxonomy, read_image
from models.datasets.fracatlas import FRACATLAS_TAXONOMY

HEADER = ("image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,"
          "frontal,lateral,oblique")
#: (regions, fractured, how many) of the fixture; regions as FracAtlas flags them.
PLAN = [
    (("hand",), 0, 6), (("hand",), 1, 5),
    (("shoulder",), 0, 3), (("shoulder",), 1, 2),
    (("leg",), 0, 5), (("leg",), 1, 2),
    (("hip",), 0, 2), (("hip",), 1, 1),
    (("hand", "shoulder", "mixed"), 0, 2), (("leg", "hip", "mixed"), 1, 2),
]
#: Special files of the fixture.
DISAGREES = "IMG0000006.jpg"  # hand, fractured=1 in the CSV, stored in Non_fractured
TRUNCATED = "IMG0000001.jpg"  # hand, not fractured, last bytes cut
MISSING = "IMG0000016.jpg"  # leg, not fractured, listed but absent


def _jpeg(path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    size = (48 + 4 * (n % 5), 40 + 2 * (n % 3))
    pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    image = Image.fromarray(pixels, "L")
    if n % 2:
        image = image.convert("RGB")
    image.save(path, quality=90)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A FracAtlas-like release: 30 rows, every region incl. mixed, gray and RGB JPEGs, one
    label/folder disagreement, one truncated JPEG and one missing file."""
    root = tmp_path / "FracAtlas"
    for folder in ("Fractured", "Non_fractured"):
        (root / "images" / folder).mkdir(parents=True)
    lines = [HEADER]
    n = 0
    for regions, fractured, count in PLAN:
        for _ in range(count):
            image_id = f"IMG{n:07d}.jpg"
            flags = {c: int(c in regions) for c in ("hand", "leg", "hip", "shoulder", "mixed")}
            lines.append(f"{image_id},{flags['hand']},{flags['leg']},{flags['hip']},"
                         f"{flags['shoulder']},{flags['mixed']},0,0,{fractured},{fractured},1,0,0")
            folder = "Fractured" if fractured else "Non_fractured"
            if image_id == DISAGREES:
                assert fractured == 1
                folder = "Non_fractured"
            if image_id != MISSING:
                _jpeg(root / "images" / folder / image_id, n)
            n += 1
    assert n == 30
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    truncated = root / "images" / "Non_fractured" / TRUNCATED
    truncated.write_bytes(truncated.read_bytes()[:-20])
    return root


def _import(src: Path, out: Path, *extra: str) -> int:
    args = fracatlas.get_args_parser().parse_args([str(src), str(out), *extra])
    return fracatlas.main(args)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_import_writes_a_labelled_dataset(release: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    with caplog.at_level(logging.WARNING, logger="models.datasets.fracatlas"):
        assert _import(release, out) == 0
    assert (out / "labels.csv").read_text().splitlines()[0] == "path,type,label,split,group"
    rows = _rows(out)
    assert len(rows) == 29  # the missing file is skipped
    by_id = {Path(r["path"]).name: r for r in rows}
    assert MISSING not in by_id
    assert {r["path"] for r in rows} == {f"images/{i}" for i in by_id}
    assert all(r["group"] == Path(r["path"]).name for r in rows)  # one group per image
    types = Counter((r["type"], r["label"]) for r in rows)
    assert types == {("HAND_TO_ELBOW", "0"): 6, ("HAND_TO_ELBOW", "1"): 5,
                     ("SHOULDER", "0"): 3, ("SHOULDER", "1"): 2, ("LEG", "0"): 4,
                     ("LEG", "1"): 2, ("HIP", "0"): 2, ("HIP", "1"): 1,
                     ("MIXED", "0"): 2, ("MIXED", "1"): 2}
    # the CSV's label wins over the folder; the truncated JPEG is kept
    assert by_id[DISAGREES]["label"] == "1"
    assert by_id[TRUNCATED]["type"] == "HAND_TO_ELBOW"
    # images are symbolic links that resolve to the release's files
    for image_id in by_id:
        link = out / "images" / image_id
        assert link.is_symlink() and link.resolve().parent.parent == (release / "images").resolve()
        assert link.read_bytes() == link.resolve().read_bytes()
    assert (out / "images" / DISAGREES).resolve().parent.name == "Non_fractured"

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any(DISAGREES in w and "fractured=1" in w and "Non_fractured" in w for w in warnings)
    assert any(TRUNCATED in w and "truncated" in w for w in warnings)
    assert any(MISSING in w and "skipped" in w for w in warnings)
    summary = capsys.readouterr().out
    assert "29 images; 3 warnings" in summary
    assert "HAND_TO_ELBOW" in summary and "MIXED" in summary

    assert json.loads((out / "taxonomy.json").read_text()) == FRACATLAS_TAXONOMY.to_dict()
    attribution = (out / "ATTRIBUTION.md").read_text()
    for needle in ("CC BY 4.0", "10.1038/s41597-023-02432-4", "Abedeen", DISAGREES, TRUNCATED,
                   MISSING):
        assert needle in attribution


def test_split_is_stratified_and_deterministic(release: Path, tmp_path: Path) -> None:
    assert _import(release, tmp_path / "a", "--seed", "0") == 0
    assert _import(release, tmp_path / "b", "--seed", "0") == 0
    assert _import(release, tmp_path / "c", "--seed", "1") == 0
    a, b, c = (_rows(tmp_path / name) for name in "abc")
    assert a == b
    assert [r["split"] for r in a] != [r["split"] for r in c]
    for rows in (a, c):
        strata: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            strata.setdefault((r["type"], r["label"]), []).append(r["split"])
        for splits in strata.values():  # round(n * 0.2), half up, of every stratum in valid
            assert splits.count("valid") == math.floor(len(splits) * 0.2 + 0.5)

    assert _import(release, tmp_path / "held-out", "--val-fraction", "1.0") == 0
    assert {r["split"] for r in _rows(tmp_path / "held-out")} == {"valid"}
    assert _import(release, tmp_path / "all-train", "--val-fraction", "0") == 0
    assert {r["split"] for r in _rows(tmp_path / "all-train")} == {"train"}
    assert load_studies(tmp_path / "all-train", "valid") == ()


def test_missing_and_unreadable_images_skip_or_fail_with_strict(
        release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (release / "images" / "Fractured" / "IMG0000007.jpg").write_bytes(b"not a jpeg")
    assert _import(release, tmp_path / "lenient") == 0
    names = {Path(r["path"]).name for r in _rows(tmp_path / "lenient")}
    assert MISSING not in names and "IMG0000007.jpg" not in names and len(names) == 28
    assert "2 skipped" in capsys.readouterr().out

    assert _import(release, tmp_path / "strict", "--strict") == 1
    err = capsys.readouterr().err
    assert MISSING in err and "IMG0000007.jpg" in err
    assert not (tmp_path / "strict" / "labels.csv").exists()


def test_copy_mode_and_unlisted_files(release: Path, tmp_path: Path) -> None:
    _jpeg(release / "images" / "Fractured" / "IMG0009999.jpg", 3)  # in no CSV row
    out = tmp_path / "copied"
    assert _import(release, out, "--copy") == 0
    names = {Path(r["path"]).name for r in _rows(out)}
    assert "IMG0009999.jpg" not in names
    for name in names:
        assert not (out / "images" / name).is_symlink()
    original = next((release / "images").rglob(DISAGREES))
    assert (out / "images" / DISAGREES).read_bytes() == original.read_bytes()
    assert "IMG0009999.jpg" in (out / "ATTRIBUTION.md").read_text()


def test_load_studies_reads_the_import(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _import(release, out) == 0
    rows = _rows(out)
    assert load_taxonomy(out) == FRACATLAS_TAXONOMY
    for split in ("train", "valid"):
        studies = load_studies(out, split)
        expected = [r for r in rows if r["split"] == split]
        assert [(s.body_part, s.label, s.patient, s.images) for s in studies] == [
            (r["type"], int(r["label"]), r["group"], (out / r["path"],)) for r in expected]
        assert len({s.key for s in studies}) == len(studies)
        assert all(s.split == split for s in studies)
    # the loader reads the truncated JPEG only when told to tolerate it
    truncated = out / "images" / TRUNCATED
    with pytest.raises(ValueError, match=TRUNCATED):
        read_image(truncated)
    image = read_image(truncated, tolerate_truncated=True)
    assert image.dtype == np.float32 and image.ndim == 2
    # the assessed classes only (the upper limb)
    assert FRACATLAS_TAXONOMY.assessed == ("HAND_TO_ELBOW", "SHOULDER")
    with pytest.raises(ValueError, match=r"type '(MIXED|LEG|HIP)'"):
        load_studies(out, "train", classes=FRACATLAS_TAXONOMY.assessed)


def test_refuses_bad_arguments(release: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _import(release, out) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert _import(tmp_path / "nowhere", tmp_path / "x") == 1
    assert "dataset.csv" in capsys.readouterr().err
    assert _import(release, tmp_path / "y", "--val-fraction", "1.5") == 2
    with pytest.raises(SystemExit):
        fracatlas.get_args_parser().parse_args([str(release), "z", "--link", "--copy"])
    (release / "dataset.csv").write_text(HEADER + "\nIMG0000000.jpg,2,0,0,0,0,0,0,0,0,1,0,0\n")
    assert _import(release, tmp_path / "w") == 1
    assert "hand must be 0 or 1" in capsys.readouterr().err


def test_codes_are_the_standard_meanings() -> None:
    standard = {"HAND_TO_ELBOW": codes.SCT.UpperLimb, "SHOULDER": codes.SCT.Shoulder,
                "HIP": codes.SCT.Hip, "LEG": codes.SCT.LowerLimb, "MIXED": codes.SCT.Extremity}
    for bone in FRACATLAS_TAXONOMY:
        code = standard[bone.name]
        assert (bone.code.value, bone.code.scheme, bone.code.meaning) == (
            code.value, code.scheme_designator, code.meaning), bone.name


def _yolo(release: Path, image_id: str, text: str) -> None:
    folder = release / "Annotations" / "YOLO"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{Path(image_id).stem}.txt").write_text(text)


def test_yolo_boxes_become_coco_pixels_and_malformed_ones_are_skipped(
        release: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from models.datasets.data import load_boxes

    # IMG0000007 (hand, fractured, 52x40): two good boxes, a trailing newline
    _yolo(release, "IMG0000007.jpg", "0 0.5 0.5 0.25 0.5\n0 0.1 0.2 0.1 0.2\n")
    # IMG0000008 (hand, fractured): one good line and four malformed ones
    _yolo(release, "IMG0000008.jpg",
          "0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n\n0 1.2 0.5 0.4 0.2\n1 0.5 0.5 0.1 0.1\n0 a b c d\n")
    _yolo(release, "IMG0000000.jpg", "")  # hand, not fractured: annotated, no box
    _yolo(release, "IMG9999999.jpg", "0 0.5 0.5 0.1 0.1\n")  # no such image
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="models.datasets.fracatlas"):
        assert _import(release, out) == 0
    coco = json.loads((out / "boxes.json").read_text())
    by_name = {i["file_name"]: i for i in coco["images"]}
    assert set(by_name) == {"images/IMG0000007.jpg", "images/IMG0000008.jpg",
                            "images/IMG0000000.jpg"}
    width, height = Image.open(release / "images" / "Fractured" / "IMG0000007.jpg").size
    assert (by_name["images/IMG0000007.jpg"]["width"],
            by_name["images/IMG0000007.jpg"]["height"]) == (width, height)
    boxes = sorted(a["bbox"] for a in coco["annotations"]
                   if a["image_id"] == by_name["images/IMG0000007.jpg"]["id"])
    expected = sorted([[0.375 * width, 0.25 * height, 0.25 * width, 0.5 * height],
                       [0.05 * width, 0.1 * height, 0.1 * width, 0.2 * height]])
    np.testing.assert_allclose(boxes, expected, atol=0.01)
    assert coco["categories"] == [{"id": 1, "name": "fracture", "supercategory": "finding"}]
    # each malformed line and the orphan file is named in a warning; the import goes on
    text = caplog.text
    assert "IMG0000008.txt line 2" in text and "IMG0000008.txt line 3" in text
    assert "IMG0000008.txt line 4" in text and "outside" in text
    assert "IMG0000008.txt line 5" in text and "IMG0000008.txt line 6" in text
    assert "IMG9999999.txt" in text
    loaded = load_boxes(out)
    assert loaded is not None
    annotated, report = loaded
    assert report.skipped == 0 and report.boxes == 3 and report.images == 3
    assert len(annotated[out / "images" / "IMG0000008.jpg"].boxes) == 1
    assert annotated[out / "images" / "IMG0000000.jpg"].boxes == ()


def test_summary_counts_boxes(release: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    _yolo(release, "IMG0000007.jpg", "0 0.5 0.5 0.25 0.5\n0 0.5 0.5 0 0.1\n")
    assert _import(release, tmp_path / "out") == 0
    summary = capsys.readouterr().out
    assert "1 annotated images, 1 fracture boxes, 1 malformed annotations skipped" in summary


def test_release_without_annotations_imports_labels_only(release: Path, tmp_path: Path) -> None:
    from models.datasets.data import load_boxes

    assert _import(release, tmp_path / "out") == 0
    assert not (tmp_path / "out" / "boxes.json").exists()
    assert load_boxes(tmp_path / "out") is None
