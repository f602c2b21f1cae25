"""Dataset loader: study records from MURA-v1.1 or a generic labelled dataset, and image reading.

No torch. :func:`load_studies` detects the layout from the folder it is given.

**MURA-v1.1.** The same code reads a real MURA-v1.1 copy and the phantom of
:mod:`models.datasets.phantom`. Lines of
``MURA-v1.1/train_image_paths.csv`` and ``MURA-v1.1/train_labeled_studies.csv`` (and valid_*)::

    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1

CSV paths start with the dataset directory's name and are relative to its parent (the names
are in :mod:`models.datasets.layout`). A study's images are those of ``*_image_paths.csv`` under the
study directory, in CSV order; its label comes from ``*_labeled_studies.csv`` (1 = abnormal).
The CSVs have no header. A study's body part is its ``XR_<NAME>`` directory: real MURA has the
seven bone types, the phantom adds ``OTHER``. Patient numbers repeat across body parts in real
MURA (``XR_WRIST/patient00001`` and ``XR_HAND/patient00001`` are different studies), so a
study is identified by its :attr:`MuraStudy.key`, never by its patient alone. Its taxonomy is
:data:`~models.serving.taxonomy.MURA_TAXONOMY` (restricted to the classes present).

**Generic labelled dataset** (written by importers such as :mod:`models.datasets.fracatlas`): a
folder
holding ``labels.csv`` and ``taxonomy.json``::

    labels.csv      header path,type,label,split,group; one row per image
    taxonomy.json   Taxonomy.to_dict() of the dataset's classes (models.serving.taxonomy)

    boxes.json      optional: finding boxes, COCO JSON (models.datasets.boxes)

``path`` is relative to the folder (POSIX separators), ``type`` a class of ``taxonomy.json``,
``label`` 1 = abnormal, ``split`` ``train`` or ``valid``, and ``group`` a key that keeps
related images together (a patient, a study; FracAtlas has one image per group). The images
of one group form one study: they must share type, label and split.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile

from models.datasets.boxes import BOXES_JSON, AnnotatedImage, BoxReport, read_coco
from models.datasets.layout import (
    CLASS_DIR_PREFIX,
    DATASET_DIRNAME,
    SPLITS,
    class_dirname,
    image_paths_csv,
    labeled_studies_csv,
)
from models.serving.taxonomy import MURA_TAXONOMY, Taxonomy

logger = logging.getLogger(__name__)

_BODY_PART = re.compile(r"^[A-Z][A-Z0-9_]*$")

#: File that marks a generic labelled dataset, and its columns (in this order).
LABELS_CSV = "labels.csv"
LABELS_COLUMNS: tuple[str, ...] = ("path", "type", "label", "split", "group")
#: The classes of a generic labelled dataset (:meth:`Taxonomy.to_dict` as JSON).
TAXONOMY_JSON = "taxonomy.json"


@dataclass(frozen=True)
class MuraStudy:
    """One labelled study.

    Parameters
    ----------
    split : str
        ``"train"`` or ``"valid"``.
    body_part : str
        Class from the ``XR_<NAME>`` directory, e.g. ``"WRIST"`` or ``"OTHER"`` (an upper-case
        name, as in :data:`~models.serving.taxonomy.MURA_TAXONOMY`), or a generic dataset's
        ``type``.
    patient : str
        Patient directory name (``patientNNNNN``); MURA's ids are already anonymous. A generic
        dataset's ``group``.
    study : str
        Study directory name (``studyK_positive`` / ``studyK_negative``); a generic dataset's
        ``group`` again (one study per group).
    label : int
        1 = abnormal, 0 = normal.
    images : tuple of Path
        Image files, in CSV order.
    """

    split: str
    body_part: str
    patient: str
    study: str
    label: int
    images: tuple[Path, ...]

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not isinstance(self.body_part, str) or not _BODY_PART.match(self.body_part):
            raise ValueError(f"body_part must be an upper-case class name such as 'WRIST', "
                             f"got {self.body_part!r}")
        if not self.patient or not self.study:
            raise ValueError("patient and study must not be empty")
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        if not self.images:
            raise ValueError(f"images must not be empty for study {self.key}")

    @property
    def key(self) -> str:
        """``split/XR_<BODY_PART>/patient/study``, unique within a dataset."""
        return f"{self.split}/{class_dirname(self.body_part)}/{self.patient}/{self.study}"

    @property
    def abnormal(self) -> bool:
        """Whether the study is labelled abnormal."""
        return self.label == 1


def find_dataset_dir(path: Path) -> Path:
    """Resolve the MURA-v1.1 directory from itself or from the directory that contains it.

    Raises
    ------
    ValueError
        When neither ``path`` nor ``path/MURA-v1.1`` holds ``train_image_paths.csv`` or
        ``valid_image_paths.csv``.
    """
    path = Path(path)
    for candidate in (path, path / DATASET_DIRNAME):
        if any((candidate / image_paths_csv(split)).is_file() for split in SPLITS):
            return candidate
    raise ValueError(
        f"data must be a {DATASET_DIRNAME} directory or the directory containing it, or a "
        f"labelled dataset directory holding {LABELS_CSV}, got {path}"
    )


def is_labelled_dataset(path: Path) -> bool:
    """Whether ``path`` is a generic labelled dataset (it holds ``labels.csv``)."""
    return (Path(path) / LABELS_CSV).is_file()


def load_taxonomy(data: Path) -> Taxonomy | None:
    """The classes of a generic labelled dataset, from its ``taxonomy.json``.

    Parameters
    ----------
    data : Path
        A generic labelled dataset, or a MURA-v1.1 directory or its parent.

    Returns
    -------
    Taxonomy or None
        ``None`` for MURA-v1.1, whose classes are those of
        :data:`~models.serving.taxonomy.MURA_TAXONOMY` (restricted to the ones present).

    Raises
    ------
    ValueError
        When ``data`` is neither layout, or naming ``taxonomy.json`` when it is missing or
        malformed.
    """
    data = Path(data)
    if not is_labelled_dataset(data):
        find_dataset_dir(data)  # a MURA-v1.1 copy, or ValueError
        return None
    path = data / TAXONOMY_JSON
    if not path.is_file():
        raise ValueError(f"missing {TAXONOMY_JSON} in {data} (a {LABELS_CSV} dataset needs it)")
    try:
        with open(path, encoding="utf-8") as f:
            return Taxonomy.from_dict(json.load(f))
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: {exc}") from exc


def load_boxes(data: Path) -> tuple[dict[Path, AnnotatedImage], BoxReport] | None:
    """The finding boxes of a dataset (its ``boxes.json``, :mod:`models.datasets.boxes`), by image
    file.

    ``file_name`` is resolved as the dataset's labels list images: relative to the labelled
    dataset's folder, or a MURA ``*_image_paths.csv`` path (``MURA-v1.1/train/...``). Entries
    naming no existing image are skipped with a warning.

    Returns
    -------
    tuple or None
        Annotated images keyed by their file, and the load's report; ``None`` when the dataset
        has no ``boxes.json`` (it trains with image labels alone).

    Raises
    ------
    ValueError
        When ``data`` is neither layout, or ``boxes.json`` is not a COCO document.
    """
    data = Path(data)
    folder = data if is_labelled_dataset(data) else find_dataset_dir(data)
    path = folder / BOXES_JSON
    if not path.is_file():
        return None
    annotated, report = read_coco(path)
    by_file: dict[Path, AnnotatedImage] = {}
    for name, image in annotated.items():
        try:
            file = (_labelled_path(data, name, BOXES_JSON) if folder is data
                    else _resolve(folder, name, BOXES_JSON)[0])
        except ValueError as exc:
            report.warn(f"{exc}; skipped")
            continue
        if not file.is_file():
            report.warn(f"{BOXES_JSON}: {name!r} is not an image of the dataset; skipped")
            continue
        by_file[file] = image
    report.images = len(by_file)
    report.boxes = sum(len(a.boxes) for a in by_file.values())
    logger.info("%s: %d annotated images, %d boxes, %d entries skipped", path, report.images,
                report.boxes, report.skipped)
    return by_file, report


def _resolve(dataset_dir: Path, csv_path: str, csv_name: str) -> tuple[Path, PurePosixPath]:
    """Map a CSV path (``MURA-v1.1/train/...``) to a file and its path inside the dataset."""
    parts = PurePosixPath(csv_path.strip().rstrip("/")).parts
    if len(parts) < 4 or parts[0] in ("/", "..") or ".." in parts:
        raise ValueError(f"{csv_name}: malformed path {csv_path!r}")
    inner = PurePosixPath(*parts[1:])  # relative to the dataset directory, whatever its name
    return dataset_dir.joinpath(*inner.parts), inner


def _study_fields(inner: PurePosixPath, split: str, csv_name: str,
                  classes: Sequence[str]) -> tuple[str, str, str]:
    """(body part, patient, study) from ``split/XR_<BODY_PART>/patient/study``."""
    parts = inner.parts
    if len(parts) < 4 or parts[0] != split or not parts[1].startswith(CLASS_DIR_PREFIX):
        raise ValueError(f"{csv_name}: path {inner} is not under "
                         f"{split}/{CLASS_DIR_PREFIX}*/patient/study")
    body_part = parts[1][len(CLASS_DIR_PREFIX):]
    if body_part not in classes:
        raise ValueError(f"{csv_name}: unknown class directory {parts[1]!r}; expected "
                         f"{CLASS_DIR_PREFIX}<NAME> with NAME in {tuple(classes)}")
    return body_part, parts[2], parts[3]


def load_studies(data: Path, split: str, *,
                 classes: Sequence[str] | None = None) -> tuple[MuraStudy, ...]:
    """Read one split's labelled studies and their images, MURA-v1.1 or generic layout.

    The layout is detected from ``data``: a folder holding ``labels.csv`` is a generic labelled
    dataset (see the module docstring), anything else must be MURA-v1.1.

    Parameters
    ----------
    data : Path
        A generic labelled dataset, or the MURA-v1.1 directory or its parent.
    split : str
        ``"train"`` or ``"valid"``.
    classes : sequence of str, optional
        Accepted classes. MURA: the ``XR_<NAME>`` directories (default: the names of
        :data:`~models.serving.taxonomy.MURA_TAXONOMY`, MURA's seven bone types and ``OTHER``).
        Generic: the ``type`` values (default: every class of ``taxonomy.json``).

    Returns
    -------
    tuple of MuraStudy
        MURA: in ``*_labeled_studies.csv`` order. Generic: one study per group, in the order
        of the group's first row, its images in row order (empty when no row has ``split``).

    Raises
    ------
    ValueError
        On a missing CSV, a malformed line, a class not in ``classes``, an unlabelled image, a
        study without images, or a listed image that does not exist; for the generic layout
        also a group whose rows disagree on type, label or split (naming the group), or a type
        outside ``taxonomy.json`` (naming the type).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if is_labelled_dataset(data):
        return _load_labelled(Path(data), split, classes)
    if classes is None:
        classes = MURA_TAXONOMY.names
    dataset_dir = find_dataset_dir(data)
    labels_csv = dataset_dir / labeled_studies_csv(split)
    images_csv = dataset_dir / image_paths_csv(split)
    for path in (labels_csv, images_csv):
        if not path.is_file():
            raise ValueError(f"missing {path.name} in {dataset_dir}")

    images: dict[PurePosixPath, list[Path]] = {}
    with open(images_csv, newline="") as f:
        for row in csv.reader(f):
            if not row or not row[0].strip():
                continue
            file, inner = _resolve(dataset_dir, row[0], images_csv.name)
            images.setdefault(inner.parent, []).append(file)

    studies: list[MuraStudy] = []
    with open(labels_csv, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 2 or row[1].strip() not in ("0", "1"):
                raise ValueError(f"{labels_csv.name} line {line_no}: expected 'path/,0|1'")
            _, inner = _resolve(dataset_dir, row[0], labels_csv.name)
            body_part, patient, study = _study_fields(inner, split, labels_csv.name, classes)
            files = images.pop(inner, None)
            if not files:
                raise ValueError(f"{labels_csv.name} line {line_no}: study {inner} has no images")
            studies.append(MuraStudy(split, body_part, patient, study, int(row[1]),
                                     tuple(files)))
    if images:
        orphan = next(iter(images))
        raise ValueError(f"{images_csv.name}: images of {orphan} belong to no labelled study")
    missing = [p for s in studies for p in s.images if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} listed images do not exist, e.g. {missing[0]}")
    logger.info("%s: %d studies, %d images", split, len(studies),
                sum(len(s.images) for s in studies))
    return tuple(studies)


def _labelled_path(data: Path, value: str, where: str) -> Path:
    """A ``labels.csv`` path (relative, POSIX, inside the dataset) as a file path."""
    inner = PurePosixPath(value.strip())
    if (not value.strip() or inner.is_absolute() or ".." in inner.parts or "\\" in value
            or inner == PurePosixPath(".")):
        raise ValueError(f"{where}: malformed path {value!r} (relative to the dataset folder, "
                         f"'/' separators, no '..')")
    return data.joinpath(*inner.parts)


def _load_labelled(data: Path, split: str,
                   classes: Sequence[str] | None) -> tuple[MuraStudy, ...]:
    """:func:`load_studies` for a generic labelled dataset (``labels.csv``)."""
    taxonomy = load_taxonomy(data)
    assert taxonomy is not None  # data holds labels.csv
    accepted = tuple(taxonomy.names if classes is None else classes)
    labels_csv = data / LABELS_CSV
    # group -> (type, label, split, first line) and its images, over every split: a group
    # split across train and valid is an error even when only one split is asked for
    groups: dict[str, tuple[str, str, str, int]] = {}
    images: dict[str, list[Path]] = {}
    with open(labels_csv, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != LABELS_COLUMNS:
            raise ValueError(f"{labels_csv}: header must be {','.join(LABELS_COLUMNS)}, "
                             f"got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{LABELS_CSV} line {line_no}"
            if len(row) != len(LABELS_COLUMNS):
                raise ValueError(f"{where}: expected {len(LABELS_COLUMNS)} fields, "
                                 f"got {len(row)}")
            path, kind, label, row_split, group = (cell.strip() for cell in row)
            if label not in ("0", "1"):
                raise ValueError(f"{where}: label must be 0 or 1, got {label!r}")
            if row_split not in SPLITS:
                raise ValueError(f"{where}: split must be one of {SPLITS}, got {row_split!r}")
            if not group:
                raise ValueError(f"{where}: empty group")
            if kind not in taxonomy:
                raise ValueError(f"{where}: type {kind!r} is not a class of {TAXONOMY_JSON} "
                                 f"{taxonomy.names}")
            if kind not in accepted:
                raise ValueError(f"{where}: type {kind!r} is not one of the accepted classes "
                                 f"{accepted}")
            file = _labelled_path(data, path, where)
            first = groups.setdefault(group, (kind, label, row_split, line_no))
            if first[:3] != (kind, label, row_split):
                raise ValueError(
                    f"{where}: group {group!r} has type={kind}, label={label}, "
                    f"split={row_split}, but line {first[3]} has type={first[0]}, "
                    f"label={first[1]}, split={first[2]}: a group's images must agree")
            images.setdefault(group, []).append(file)
    studies = [MuraStudy(split, kind, group, group, int(label), tuple(images[group]))
               for group, (kind, label, row_split, _) in groups.items() if row_split == split]
    missing = [p for s in studies for p in s.images if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} listed images do not exist, e.g. {missing[0]}")
    logger.info("%s: %d studies, %d images (%s)", split, len(studies),
                sum(len(s.images) for s in studies), data)
    return tuple(studies)


_TRUNCATED_LOCK = threading.Lock()


@contextlib.contextmanager
def tolerate_truncated_images() -> Iterator[None]:
    """Let Pillow decode truncated image files within the block, then restore its setting.

    Pillow's switch, ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``, is process-wide: the block holds
    a lock so that concurrent tolerant reads do not restore it under each other, and it is
    restored on exit. A strict read in another thread *during* the block may be tolerant too;
    Ossa's readers that need strictness (the DICOM path) never go through Pillow.

    References
    ----------
    Pillow documentation, ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
    (https://pillow.readthedocs.io/en/stable/reference/ImageFile.html).
    """
    with _TRUNCATED_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode(path: Path) -> NDArray[np.float32]:
    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I"):  # 16-bit grey (I;16, I;16B) or 32-bit int
            grey = np.asarray(im, dtype=np.float32) / 65535.0
            return np.clip(grey, 0.0, 1.0)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def read_image(path: Path, *, tolerate_truncated: bool = False) -> NDArray[np.float32]:
    """Read a PNG/JPEG radiograph as one float32 grey channel in [0, 1] (1 = bright).

    8-bit grey, RGB(A), grey + alpha (``LA``) and palette (``P``) images are converted to grey
    (alpha dropped); 16-bit grey PNGs (``I;16`` or ``I``) are scaled by 65535.

    Parameters
    ----------
    path : Path
        The image file.
    tolerate_truncated : bool
        When the file is cut short (a strict decode fails), decode it again with Pillow's
        ``LOAD_TRUNCATED_IMAGES`` (:func:`tolerate_truncated_images`): the missing end is
        filled in by the decoder (grey for JPEG). For datasets with known, checked damage,
        such as FracAtlas's 49 truncated JPEGs (:mod:`models.datasets.fracatlas`); default
        ``False``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        Naming the file, when it is not a readable image (unknown format, corrupt data, or
        truncated data unless ``tolerate_truncated``).
    """
    try:
        try:
            return _decode(path)
        except OSError as exc:
            if not tolerate_truncated or isinstance(exc, FileNotFoundError):
                raise
            logger.debug("%s: strict decode failed (%s); decoding tolerantly", path, exc)
        with tolerate_truncated_images():
            return _decode(path)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, zlib.error) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
