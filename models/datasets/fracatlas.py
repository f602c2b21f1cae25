"""Import FracAtlas as a generic labelled dataset (``ossa data import-fracatlas SRC OUT``).

FracAtlas (Abedeen et al. 2023, CC BY 4.0) holds 4,083 musculoskeletal radiographs with a
fracture label, region flags and fracture annotations. Its release layout::

    dataset.csv               image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,
                              fractured,fracture_count,frontal,lateral,oblique   (flags 0/1)
    images/Fractured/*.jpg    images with fractured = 1
    images/Non_fractured/*.jpg
    Annotations/YOLO/<image>.txt   fracture boxes, one "class cx cy w h" line each
                              (normalised to the image; optional)

The importer writes the generic labelled dataset that :func:`models.datasets.data.load_studies`
reads
(``labels.csv``, ``taxonomy.json``; see :mod:`models.datasets.data`), an ``ATTRIBUTION.md`` and the
images, as symbolic links to ``SRC`` (default) or as copies. Each image is its own group (the
release has no patient key), so the split is by image, stratified by (type, label), and the
same seed always gives the same split. The YOLO fracture boxes, where the release has them, are
written as ``boxes.json`` (COCO, :mod:`models.datasets.boxes`) in the image's pixels; every image
whose
annotation file exists is *annotated* (an empty file: no fracture box).

Classes (:data:`FRACATLAS_TAXONOMY`). FracAtlas's regions are coarse, so the classes are named
for what the films hold:

- ``HAND_TO_ELBOW`` (``hand`` = 1 only): hand, wrist, forearm and elbow films. SNOMED CT
  53120007 "Upper limb" (CID 4031): no CID 4031 region spans hand to elbow without the upper
  arm, and the narrower codes (Hand, Wrist joint, Forearm, Elbow joint) each name one part.
  Assessed.
- ``SHOULDER`` (``shoulder`` = 1 only): SCT 16982005 "Shoulder"; the films often include part
  of the chest. Assessed.
- ``HIP`` (SCT 29836001 "Hip") and ``LEG`` (SCT 61685007 "Lower limb"): recognised, not
  assessed (outside Ossa's upper-extremity scope).
- ``MIXED`` (``mixed`` = 1, or several region flags): films showing several regions (arm with
  shoulder, leg with hip, ...). SCT 66019005 "Extremity" (limb structure): every combination in
  the release is of limb regions. Kept as a class of its own, *not assessed*, rather than
  excluded: stage 1 must learn to recognise such films so that they are reported "not
  assessed" instead of being forced into an assessed class, and their fracture label does not
  say which of the regions (often a lower-limb one) is fractured, so it cannot train an
  upper-limb verdict.

Decisions on the release's flaws, each reported by file name:

- **Label vs folder.** When ``fractured`` in ``dataset.csv`` disagrees with the image's folder,
  the CSV wins (a warning names the file): its ``fractured`` goes with ``fracture_count`` and
  the annotations, from which the folders were sorted.
- **Missing or unreadable image** (listed but in neither folder, or not decodable even
  tolerantly): skipped with a warning, or fatal with ``--strict`` (all of them named).
- **Truncated JPEG** (a strict decode fails, Pillow's ``LOAD_TRUNCATED_IMAGES`` decodes it, the
  missing end filled in grey): kept, with a warning naming each file; read them with
  ``models.datasets.data.read_image(path, tolerate_truncated=True)``. The 49 in the development
  copy are
  a few bytes short and look complete.
- Files in the image folders that ``dataset.csv`` does not list, and rows without any region
  flag, are skipped with a warning.
- **Malformed box** (a line that is not five numbers, a class other than 0, a box with no area
  or outside the image, an annotation file of no imported image): that line or file is skipped
  with a warning naming the file; the import goes on and reports the counts.

The label is FracAtlas's: 1 = fractured. Metal hardware without a fracture is labelled 0 here,
whereas MURA calls hardware abnormal.

References
----------
Abedeen I, Rahman MA, Prottyasha FZ, Ahmed T, Chowdhury TM, Shatabda S. FracAtlas: A Dataset
for Fracture Classification, Localization and Segmentation of Musculoskeletal Radiographs.
Scientific Data 10, 521 (2023). doi:10.1038/s41597-023-02432-4; data
doi:10.6084/m9.figshare.22363012. CC BY 4.0.

SNOMED CT codes as in DICOM PS3.16 CID 4031 "Common Anatomic Regions" (checked against
``pydicom.sr.codedict.codes.SCT``: UpperLimb, Shoulder, Hip, LowerLimb, Extremity).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from models.datasets.boxes import BOXES_JSON, AnnotatedImage, Box, write_coco
from models.datasets.data import LABELS_COLUMNS, LABELS_CSV, TAXONOMY_JSON, read_image
from models.serving.taxonomy import BodyPartClass, Taxonomy, sct

logger = logging.getLogger(__name__)

#: ``dataset.csv``'s columns in the FracAtlas release.
RELEASE_COLUMNS: tuple[str, ...] = (
    "image_id", "hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan",
    "fractured", "fracture_count", "frontal", "lateral", "oblique",
)
#: Image folders of the release and the label each stands for.
FOLDER_LABELS: Mapping[str, int] = {"Fractured": 1, "Non_fractured": 0}
#: The single-region flags and the class each maps to (``mixed`` maps to ``MIXED``).
REGION_CLASSES: Mapping[str, str] = {
    "hand": "HAND_TO_ELBOW", "shoulder": "SHOULDER", "hip": "HIP", "leg": "LEG",
}
MIXED = "MIXED"


#: The classes of an imported FracAtlas dataset (upper-limb classes assessed; see the module
#: docstring for why). Codes and meanings from DICOM PS3.16 CID 4031.
FRACATLAS_TAXONOMY = Taxonomy((
    BodyPartClass("HAND_TO_ELBOW", sct("53120007", "Upper limb"), True),
    BodyPartClass("SHOULDER", sct("16982005", "Shoulder"), True),
    BodyPartClass("HIP", sct("29836001", "Hip"), False),
    BodyPartClass("LEG", sct("61685007", "Lower limb"), False),
    BodyPartClass(MIXED, sct("66019005", "Extremity"), False),
))

_CITATION = (
    "Abedeen I, Rahman MA, Prottyasha FZ, Ahmed T, Chowdhury TM, Shatabda S. *FracAtlas: A "
    "Dataset for Fracture Classification, Localization and Segmentation of Musculoskeletal "
    "Radiographs.* Scientific Data 10, 521 (2023). doi:10.1038/s41597-023-02432-4. Data: "
    "doi:10.6084/m9.figshare.22363012."
)


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote and what it warned about.

    Parameters
    ----------
    out : Path
        The dataset folder written.
    counts : Mapping
        Images per ``(split, type, label)``.
    warnings : tuple of str
        Every warning, in the order logged.
    skipped : tuple of str
        File names (or ``dataset.csv`` image ids) left out.
    truncated : tuple of str
        Kept images that only decode tolerantly.
    relabelled : tuple of str
        Images whose folder disagrees with ``dataset.csv`` (the CSV's label kept).
    annotated : int
        Imported images with a YOLO annotation file (written to ``boxes.json``).
    boxes : int
        Fracture boxes written.
    boxes_skipped : int
        Malformed annotation lines and files left out (each warned).
    """

    out: Path
    counts: Mapping[tuple[str, str, int], int]
    warnings: tuple[str, ...]
    skipped: tuple[str, ...]
    truncated: tuple[str, ...]
    relabelled: tuple[str, ...]
    annotated: int = 0
    boxes: int = 0
    boxes_skipped: int = 0

    @property
    def images(self) -> int:
        """Images written."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class _Record:
    image_id: str
    source: Path
    type: str
    label: int


@dataclass
class _Log:
    """Warnings and skipped files, logged as they come and kept for the report."""

    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    boxes_skipped: int = 0

    def note(self, template: str, *args: object) -> None:
        """Log a warning (``template % args``) and keep it for the report."""
        logger.warning(template, *args)
        self.warnings.append(template % args)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa data import-fracatlas``."""
    parser = argparse.ArgumentParser(
        description="Import the FracAtlas release (dataset.csv, images/) as a labelled dataset "
                    "(labels.csv, taxonomy.json, ATTRIBUTION.md, images) for ossa train and "
                    "ossa evaluate. FracAtlas: Abedeen et al., Sci Data 10, 521 (2023), "
                    "CC BY 4.0.",
        add_help=add_help,
    )
    parser.add_argument("src", type=Path, metavar="SRC",
                        help="FracAtlas release folder (dataset.csv, images/Fractured, "
                             "images/Non_fractured)")
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="dataset folder to write (must be new or empty)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of each (type, label) stratum put in the valid split; 1.0 "
                             "puts every image in valid (a held-out copy), 0.0 all in train "
                             "(default: 0.2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split; the same seed gives the same split (default: 0)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on a missing or unreadable image instead of skipping it")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--link", dest="copy", action="store_false",
                      help="write the images as symbolic links to SRC (default)")
    mode.add_argument("--copy", dest="copy", action="store_true",
                      help="copy the images into OUT")
    parser.set_defaults(copy=False)
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the import described by ``args`` and print its summary.

    Returns
    -------
    int
        0 on success, 1 when the import failed (message on standard error), 2 on a bad option.
    """
    if not 0.0 <= args.val_fraction <= 1.0:
        print(f"ossa: error: --val-fraction must be in [0, 1], got {args.val_fraction}",
              file=sys.stderr)
        return 2
    try:
        report = import_fracatlas(args.src, args.out, val_fraction=args.val_fraction,
                                  seed=args.seed, strict=args.strict, copy=args.copy)
    except (ValueError, OSError) as exc:
        print(f"ossa: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(report))
    return 0


def format_summary(report: ImportReport) -> str:
    """The import summary: images per (split, type, label), then the counts of warnings."""
    lines = [f"{report.out}: {report.images} images; {len(report.warnings)} warnings "
             f"({len(report.skipped)} skipped, {len(report.truncated)} truncated kept, "
             f"{len(report.relabelled)} label/folder disagreements); {report.annotated} "
             f"annotated images, {report.boxes} fracture boxes, {report.boxes_skipped} "
             f"malformed annotations skipped",
             f"{'split':<6} {'type':<14} {'label':<15} {'images':>6}"]
    for (split, kind, label), n in sorted(report.counts.items()):
        name = "1 fractured" if label else "0 not fractured"
        lines.append(f"{split:<6} {kind:<14} {name:<15} {n:>6}")
    for split in ("train", "valid"):
        total = sum(n for (s, _, _), n in report.counts.items() if s == split)
        lines.append(f"{split:<6} {'(all)':<14} {'':<15} {total:>6}")
    return "\n".join(lines)


def import_fracatlas(src: Path, out: Path, *, val_fraction: float = 0.2, seed: int = 0,
                     strict: bool = False, copy: bool = False) -> ImportReport:
    """Write FracAtlas at ``src`` as a generic labelled dataset at ``out``.

    Parameters
    ----------
    src : Path
        The release folder (``dataset.csv``, ``images/Fractured``, ``images/Non_fractured``).
    out : Path
        Folder to write; must not exist or be empty.
    val_fraction : float
        Share of each (type, label) stratum in ``valid``, rounded half up per stratum.
    seed : int
        Seed of the split.
    strict : bool
        Raise on a missing or unreadable image instead of skipping it.
    copy : bool
        Copy the images instead of linking them.

    Returns
    -------
    ImportReport
        Counts and warnings.

    Raises
    ------
    ValueError
        On a bad ``src`` layout, a malformed ``dataset.csv``, a non-empty ``out``, a
        ``val_fraction`` outside [0, 1], or (``strict``) missing or unreadable images, naming
        them.
    """
    src, out = Path(src), Path(out)
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    for path in [src / "dataset.csv", *(src / "images" / f for f in FOLDER_LABELS)]:
        if not path.exists():
            raise ValueError(f"{src} is not a FracAtlas release folder: missing {path.name}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")

    log = _Log()
    records = _read_release(src, strict=strict, log=log)
    splits = _split(records, val_fraction=val_fraction, seed=seed)
    annotated = _read_yolo(src, records, log)
    _write(src, out, records, splits, copy=copy, log=log, annotated=annotated)
    counts = Counter((splits[r.image_id], r.type, r.label) for r in records)
    report = ImportReport(out=out, counts=dict(counts), warnings=tuple(log.warnings),
                          skipped=tuple(log.skipped), truncated=tuple(log.truncated),
                          relabelled=tuple(log.relabelled), annotated=len(annotated),
                          boxes=sum(len(a.boxes) for a in annotated),
                          boxes_skipped=log.boxes_skipped)
    logger.info("FracAtlas: %d images written to %s, %d warnings", report.images, out,
                len(report.warnings))
    return report


def _read_release(src: Path, *, strict: bool, log: _Log) -> list[_Record]:
    """Records of the usable images of ``dataset.csv``, in CSV order."""
    folders = {name: {p.name for p in (src / "images" / name).iterdir()
                      if p.is_file() and not p.name.startswith(".")}
               for name in FOLDER_LABELS}
    records: list[_Record] = []
    failed: list[str] = []
    listed: set[str] = set()
    with open(src / "dataset.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in RELEASE_COLUMNS if c not in (reader.fieldnames or ())]
        if absent:
            raise ValueError(f"dataset.csv: missing columns {absent}")
        for line_no, row in enumerate(reader, start=2):
            image_id = (row["image_id"] or "").strip()
            if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
                raise ValueError(f"dataset.csv line {line_no}: bad image_id {image_id!r}")
            if image_id in listed:
                raise ValueError(f"dataset.csv line {line_no}: {image_id} listed twice")
            listed.add(image_id)
            flags = _flags(row, line_no)
            kind = _class_of(image_id, flags, log)
            if kind is None:
                continue
            found = [name for name, names in folders.items() if image_id in names]
            if not found:
                failed.append(image_id)
                log.skipped.append(image_id)
                log.note("%s: listed in dataset.csv but in neither images/Fractured nor "
                         "images/Non_fractured; skipped", image_id)
                continue
            label = flags["fractured"]
            folder = next((n for n in found if FOLDER_LABELS[n] == label), found[0])
            if FOLDER_LABELS[folder] != label:
                log.relabelled.append(image_id)
                log.note("%s: dataset.csv says fractured=%d but the file is in images/%s/; "
                         "keeping the CSV's label %d", image_id, label, folder, label)
            source = src / "images" / folder / image_id
            state = _check_image(source)
            if state == "unreadable":
                failed.append(image_id)
                log.skipped.append(image_id)
                log.note("%s: cannot be decoded, even tolerating truncation; skipped",
                         image_id)
                continue
            if state == "truncated":
                log.truncated.append(image_id)
                log.note("%s: truncated, decodable only tolerantly "
                         "(read_image(..., tolerate_truncated=True)); kept", image_id)
            records.append(_Record(image_id, source, kind, label))
    for name, names in folders.items():
        for extra in sorted(names - listed):
            log.skipped.append(extra)
            log.note("images/%s/%s: not listed in dataset.csv; skipped", name, extra)
    if strict and failed:
        raise ValueError(f"{len(failed)} listed images are missing or unreadable: "
                         f"{', '.join(failed)}")
    if not records:
        raise ValueError(f"{src}: no usable image")
    return records


#: Folder of the release's YOLO boxes: ``<image stem>.txt``, one ``class cx cy w h`` a line.
YOLO_DIR = ("Annotations", "YOLO")


def _read_yolo(src: Path, records: list[_Record], log: _Log) -> list[AnnotatedImage]:
    """The imported images' YOLO boxes in pixels, in record order (annotated images only)."""
    folder = src.joinpath(*YOLO_DIR)
    if not folder.is_dir():
        logger.info("%s: no YOLO annotations; the dataset has labels only", src)
        return []

    def skip(template: str, *args: object) -> None:
        log.boxes_skipped += 1
        log.note(template, *args)

    stems = {Path(r.image_id).stem: r for r in records}
    for path in sorted(folder.glob("*.txt")):
        if path.stem not in stems:
            skip("%s/%s: annotation of no imported image; skipped", "/".join(YOLO_DIR),
                 path.name)
    annotated: list[AnnotatedImage] = []
    for record in records:
        path = folder / f"{Path(record.image_id).stem}.txt"
        if not path.is_file():
            continue
        with Image.open(record.source) as image:
            width, height = image.size
        boxes: list[Box] = []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            skip("%s: unreadable (%s); skipped", path.name, exc)
            continue
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()  # a trailing newline is no empty annotation
        for n, line in enumerate(lines, start=1):
            fields = line.split()
            try:
                if len(fields) != 5:
                    raise ValueError(f"expected 'class cx cy w h', got {line.strip()!r}")
                category, cx, cy, w, h = (float(v) for v in fields)
                if category != 0:
                    raise ValueError(f"class {fields[0]} is not 0 (fracture)")
                bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                boxes.append(Box.from_coco(bbox, width=width, height=height))
            except ValueError as exc:
                skip("%s line %d: %s; skipped", path.name, n, exc)
        if boxes and not record.label:
            log.note("%s: fracture boxes on an image labelled not fractured; boxes kept, "
                     "label kept", record.image_id)
        annotated.append(AnnotatedImage(f"images/{record.image_id}", width, height,
                                        tuple(boxes)))
    return annotated


def _flags(row: Mapping[str, str | None], line_no: int) -> dict[str, int]:
    flags = {}
    for column in (*REGION_CLASSES, "mixed", "fractured"):
        value = (row[column] or "").strip()
        if value not in ("0", "1"):
            raise ValueError(f"dataset.csv line {line_no}: {column} must be 0 or 1, "
                             f"got {value!r}")
        flags[column] = int(value)
    return flags


def _class_of(image_id: str, flags: Mapping[str, int], log: _Log) -> str | None:
    """The class of a row, from its region flags; ``None`` (warned) when it has none."""
    regions = [column for column in REGION_CLASSES if flags[column]]
    if flags["mixed"]:
        return MIXED
    if len(regions) == 1:
        return REGION_CLASSES[regions[0]]
    if regions:
        log.note("%s: several regions %s without the mixed flag; class %s", image_id,
                 "+".join(regions), MIXED)
        return MIXED
    log.skipped.append(image_id)
    log.note("%s: no region flag in dataset.csv; skipped", image_id)
    return None


def _check_image(path: Path) -> str:
    """``"ok"``, ``"truncated"`` (decodes only tolerantly) or ``"unreadable"``."""
    try:
        read_image(path)
        return "ok"
    except ValueError:
        pass
    try:
        read_image(path, tolerate_truncated=True)
        return "truncated"
    except ValueError:
        return "unreadable"


def _split(records: Iterable[_Record], *, val_fraction: float, seed: int) -> dict[str, str]:
    """``image_id -> "train" | "valid"``, stratified by (type, label).

    Each stratum is shuffled with its own generator, seeded from ``seed`` and the stratum, so a
    stratum's split does not depend on the others; ``round(n * val_fraction)`` (half up) of
    its images go to valid.
    """
    strata: dict[tuple[str, int], list[str]] = {}
    for record in records:
        strata.setdefault((record.type, record.label), []).append(record.image_id)
    splits: dict[str, str] = {}
    for (kind, label), ids in sorted(strata.items()):
        order = sorted(ids)
        random.Random(f"{seed}:{kind}:{label}").shuffle(order)
        n_valid = math.floor(len(order) * val_fraction + 0.5)
        for i, image_id in enumerate(order):
            splits[image_id] = "valid" if i < n_valid else "train"
    return splits


def _write(src: Path, out: Path, records: list[_Record], splits: Mapping[str, str], *,
           copy: bool, log: _Log, annotated: list[AnnotatedImage]) -> None:
    """Images, ``taxonomy.json``, ``boxes.json``, ``ATTRIBUTION.md``, then ``labels.csv``
    (the marker file)."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for record in records:
        target = images / record.image_id
        if copy:
            shutil.copyfile(record.source, target)
        else:
            os.symlink(record.source.resolve(), target)
    (out / TAXONOMY_JSON).write_text(json.dumps(FRACATLAS_TAXONOMY.to_dict(), indent=2) + "\n",
                                     encoding="utf-8")
    if annotated:
        write_coco(out / BOXES_JSON, annotated)
    (out / "ATTRIBUTION.md").write_text(_attribution(src, records, splits, copy=copy, log=log),
                                        encoding="utf-8")
    if (src / "README.md").is_file():
        shutil.copyfile(src / "README.md", out / "SOURCE_README.md")
    partial = out / f".{LABELS_CSV}.partial"
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LABELS_COLUMNS)
        for record in records:
            writer.writerow([f"images/{record.image_id}", record.type, record.label,
                             splits[record.image_id], record.image_id])
    partial.replace(out / LABELS_CSV)


def _attribution(src: Path, records: list[_Record], splits: Mapping[str, str], *, copy: bool,
                 log: _Log) -> str:
    """``ATTRIBUTION.md``: the CC BY 4.0 credit and what the import changed."""
    n_valid = sum(1 for r in records if splits[r.image_id] == "valid")
    classes = "\n".join(
        f"| `{c.name}` | {c.code.scheme} {c.code.value} \"{c.code.meaning}\" | "
        f"{'yes' if c.assessed else 'no (recognised, reported not assessed)'} |"
        for c in FRACATLAS_TAXONOMY)

    def listing(names: list[str]) -> str:
        return ", ".join(names) if names else "none"

    source_notes = ("\nThe source folder's own notes (`SOURCE_README.md`, copied from "
                    "`README.md`) describe what was changed there before this import.\n"
                    if (src / "README.md").is_file() else "")
    return f"""# Attribution

This dataset is derived from **FracAtlas**:

{_CITATION}

Licensed under the Creative Commons Attribution 4.0 International licence (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/). Anything built from these images (a model, a
figure, a report) must credit FracAtlas as above and say what was changed.

## What was changed

Written by Ossa's `ossa data import-fracatlas` (`models/datasets/fracatlas.py`) from `{src}`.
{source_notes}
- Images: {'copied' if copy else 'symbolic links to the source'}, bytes unchanged, as
  `images/<image_id>` ({len(records)} images).
- Classes: FracAtlas's region flags were mapped to the classes below (`mixed`, or several
  region flags, to `MIXED`):

| class | finding site | assessed |
|---|---|---|
{classes}

- Label: `dataset.csv`'s `fractured` (1 = fractured). Metal hardware without a fracture is 0.
  Where the image's folder disagreed with the CSV, the CSV's label was kept:
  {listing(log.relabelled)}.
- Left out (missing, undecodable, unlisted, or without a region flag):
  {listing(log.skipped)}.
- Kept although truncated (decodable only with Pillow's `LOAD_TRUNCATED_IMAGES`, the missing
  end filled in by the decoder): {listing(log.truncated)}.
- Fracture boxes: the release's YOLO files (`Annotations/YOLO/`) converted to pixels in
  `boxes.json` (COCO); malformed lines skipped ({log.boxes_skipped}, each named in the import's
  warnings).
- Split (FracAtlas has none): stratified by (class, label), {len(records) - n_valid} train,
  {n_valid} valid; each image is its own group.
"""
