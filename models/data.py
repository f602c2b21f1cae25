"""MURA-v1.1 loader: study records from the release's CSVs and a torch Dataset of images.

The same code reads a real MURA-v1.1 copy and the phantom of :mod:`models.phantom`. Lines of
``MURA-v1.1/train_image_paths.csv`` and ``MURA-v1.1/train_labeled_studies.csv`` (and valid_*)::

    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1

CSV paths start with the dataset directory's name and are relative to its parent. A study's
images are those of ``*_image_paths.csv`` under the study directory, in CSV order; its label
comes from ``*_labeled_studies.csv`` (1 = abnormal).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import Dataset

from models.enhance import Preprocessing, preprocess
from models.results import BONE_TYPES

logger = logging.getLogger(__name__)

#: MURA splits and their CSV files.
SPLITS: tuple[str, ...] = ("train", "valid")
_LABELS = {"negative": 0, "positive": 1}


@dataclass(frozen=True)
class MuraStudy:
    """One labelled study.

    Parameters
    ----------
    split : str
        ``"train"`` or ``"valid"``.
    bone : str
        Bone type from the ``XR_*`` directory, one of :data:`~models.results.BONE_TYPES`.
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
    bone: str
    patient: str
    study: str
    label: int
    images: tuple[Path, ...]

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.bone not in BONE_TYPES:
            raise ValueError(f"bone must be one of {BONE_TYPES}, got {self.bone!r}")
        if not self.patient or not self.study:
            raise ValueError("patient and study must not be empty")
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        if not self.images:
            raise ValueError(f"images must not be empty for study {self.key}")

    @property
    def key(self) -> str:
        """``split/XR_BONE/patient/study``, unique within a dataset."""
        return f"{self.split}/XR_{self.bone}/{self.patient}/{self.study}"

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
    for candidate in (path, path / "MURA-v1.1"):
        if any((candidate / f"{split}_image_paths.csv").is_file() for split in SPLITS):
            return candidate
    raise ValueError(
        f"data must be a MURA-v1.1 directory or the directory containing it, got {path}"
    )


def _resolve(dataset_dir: Path, csv_path: str, csv_name: str) -> tuple[Path, PurePosixPath]:
    """Map a CSV path (``MURA-v1.1/train/...``) to a file and its path inside the dataset."""
    parts = PurePosixPath(csv_path.strip().rstrip("/")).parts
    if len(parts) < 4 or parts[0] in ("/", "..") or ".." in parts:
        raise ValueError(f"{csv_name}: malformed path {csv_path!r}")
    inner = PurePosixPath(*parts[1:])  # relative to the dataset directory, whatever its name
    return dataset_dir.joinpath(*inner.parts), inner


def _study_fields(inner: PurePosixPath, split: str, csv_name: str) -> tuple[str, str, str]:
    """(bone, patient, study) from ``split/XR_BONE/patient/study``."""
    parts = inner.parts
    if len(parts) < 4 or parts[0] != split or not parts[1].startswith("XR_"):
        raise ValueError(f"{csv_name}: path {inner} is not under {split}/XR_*/patient/study")
    bone = parts[1][3:]
    if bone not in BONE_TYPES:
        raise ValueError(f"{csv_name}: unknown bone type directory {parts[1]!r}")
    return bone, parts[2], parts[3]


def load_studies(data: Path, split: str) -> tuple[MuraStudy, ...]:
    """Read one split's labelled studies and their images through the MURA CSVs.

    Parameters
    ----------
    data : Path
        The MURA-v1.1 directory or its parent.
    split : str
        ``"train"`` or ``"valid"``.

    Returns
    -------
    tuple of MuraStudy
        In ``*_labeled_studies.csv`` order.

    Raises
    ------
    ValueError
        On a missing CSV, a malformed line, an unlabelled image, a study without images, or a
        listed image that does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset_dir = find_dataset_dir(data)
    labels_csv = dataset_dir / f"{split}_labeled_studies.csv"
    images_csv = dataset_dir / f"{split}_image_paths.csv"
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
            bone, patient, study = _study_fields(inner, split, labels_csv.name)
            files = images.pop(inner, None)
            if not files:
                raise ValueError(f"{labels_csv.name} line {line_no}: study {inner} has no images")
            studies.append(MuraStudy(split, bone, patient, study, int(row[1]), tuple(files)))
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
    """Read a PNG/JPEG radiograph as a float32 grey image in [0, 1] (1 = bright)."""
    with Image.open(path) as im:
        if im.mode.startswith("I"):  # 16-bit grey
            return np.asarray(im, dtype=np.float32) / 65535.0
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


class ImageItem(NamedTuple):
    """One image of a study, flattened for training."""

    path: Path
    bone: int  # index into BONE_TYPES
    label: int
    study: int  # index of the study in the dataset's study sequence


class ImageBank(NamedTuple):
    """Every preprocessed image of a dataset, stacked for fast in-memory training."""

    images: torch.Tensor  # float16, N x C x S x S
    bones: torch.Tensor  # int64, N
    labels: torch.Tensor  # int64, N
    studies: torch.Tensor  # int64, N


class MuraImageDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Images of some studies, preprocessed for the network.

    Parameters
    ----------
    studies : sequence of MuraStudy
        The studies whose images make up the dataset (flattened in order).
    preprocessing : Preprocessing
        The preprocessing applied to every image.
    cache : bool
        Keep preprocessed tensors in memory (float16) after the first access.

    Items are ``(tensor, bone_index, label)`` with ``bone_index`` into
    :data:`~models.results.BONE_TYPES` and ``label`` the study's label.
    """

    def __init__(self, studies: Sequence[MuraStudy], preprocessing: Preprocessing, *,
                 cache: bool = True) -> None:
        self.studies = tuple(studies)
        self.preprocessing = preprocessing
        self.items = tuple(
            ImageItem(path, BONE_TYPES.index(s.bone), s.label, i)
            for i, s in enumerate(self.studies)
            for path in s.images
        )
        self._cache: list[torch.Tensor | None] | None = [None] * len(self.items) if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> torch.Tensor:
        return preprocess(read_image(self.items[index].path), self.preprocessing)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        if self._cache is None:
            return self._load(index), item.bone, item.label
        cached = self._cache[index]
        if cached is None:
            cached = self._load(index).to(torch.float16)
            self._cache[index] = cached
        return cached.float(), item.bone, item.label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, int]]:
        return (self[i] for i in range(len(self)))

    def bank(self, *, workers: int = 0) -> ImageBank:
        """Preprocess every image (``workers`` threads) and stack them.

        The result is cached when the dataset caches, so a second call is free.
        """
        if len(self) == 0:
            raise ValueError("the dataset holds no images")
        slots: list[torch.Tensor | None] = (
            list(self._cache) if self._cache is not None else [None] * len(self)
        )
        missing = [i for i, t in enumerate(slots) if t is None]
        if workers > 0:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                loaded = list(pool.map(self._load, missing))
        else:
            loaded = [self._load(i) for i in missing]
        for i, tensor in zip(missing, loaded, strict=True):
            slots[i] = tensor.to(torch.float16)
        tensors = [t for t in slots if t is not None]
        if self._cache is not None:
            self._cache = list(tensors)
        return ImageBank(
            images=torch.stack(tensors),
            bones=torch.tensor([it.bone for it in self.items], dtype=torch.int64),
            labels=torch.tensor([it.label for it in self.items], dtype=torch.int64),
            studies=torch.tensor([it.study for it in self.items], dtype=torch.int64),
        )
