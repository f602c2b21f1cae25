"""MURA-v1.1 loader: study records from the release's CSVs, and image reading (no torch).

The same code reads a real MURA-v1.1 copy and the phantom of :mod:`models.phantom`. Lines of
``MURA-v1.1/train_image_paths.csv`` and ``MURA-v1.1/train_labeled_studies.csv`` (and valid_*)::

    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1

CSV paths start with the dataset directory's name and are relative to its parent (the names
are in :mod:`models.layout`). A study's images are those of ``*_image_paths.csv`` under the
study directory, in CSV order; its label comes from ``*_labeled_studies.csv`` (1 = abnormal).
The CSVs have no header. A study's body part is its ``XR_<NAME>`` directory: real MURA has the
seven bone types, the phantom adds ``OTHER``. Patient numbers repeat across body parts in real
MURA (``XR_WRIST/patient00001`` and ``XR_HAND/patient00001`` are different studies), so a
study is identified by its :attr:`MuraStudy.key`, never by its patient alone.
"""

from __future__ import annotations

import csv
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from models.layout import (
    CLASS_DIR_PREFIX,
    DATASET_DIRNAME,
    SPLITS,
    class_dirname,
    image_paths_csv,
    labeled_studies_csv,
)
from models.taxonomy import MURA_TAXONOMY

logger = logging.getLogger(__name__)

_BODY_PART = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class MuraStudy:
    """One labelled study.

    Parameters
    ----------
    split : str
        ``"train"`` or ``"valid"``.
    body_part : str
        Class from the ``XR_<NAME>`` directory, e.g. ``"WRIST"`` or ``"OTHER"`` (an upper-case
        name, as in :data:`~models.taxonomy.MURA_TAXONOMY`).
    patient : str
        Patient directory name (``patientNNNNN``); MURA's ids are already anonymous.
    study : str
        Study directory name (``studyK_positive`` / ``studyK_negative``).
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
        f"data must be a {DATASET_DIRNAME} directory or the directory containing it, got {path}"
    )


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
                 classes: Sequence[str] = MURA_TAXONOMY.names) -> tuple[MuraStudy, ...]:
    """Read one split's labelled studies and their images through the MURA CSVs.

    Parameters
    ----------
    data : Path
        The MURA-v1.1 directory or its parent.
    split : str
        ``"train"`` or ``"valid"``.
    classes : sequence of str
        Accepted ``XR_<NAME>`` directories (default: the names of
        :data:`~models.taxonomy.MURA_TAXONOMY`, MURA's seven bone types and ``OTHER``).

    Returns
    -------
    tuple of MuraStudy
        In ``*_labeled_studies.csv`` order.

    Raises
    ------
    ValueError
        On a missing CSV, a malformed line, a class not in ``classes``, an unlabelled image, a
        study without images, or a listed image that does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
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


def read_image(path: Path) -> NDArray[np.float32]:
    """Read a PNG/JPEG radiograph as one float32 grey channel in [0, 1] (1 = bright).

    8-bit grey, RGB(A), grey + alpha (``LA``) and palette (``P``) images are converted to grey
    (alpha dropped); 16-bit grey PNGs (``I;16`` or ``I``) are scaled by 65535.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        Naming the file, when it is not a readable image (unknown format, truncated or
        corrupt data).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):  # 16-bit grey (I;16, I;16B) or 32-bit int
                grey = np.asarray(im, dtype=np.float32) / 65535.0
                return np.clip(grey, 0.0, 1.0)
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, zlib.error) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
