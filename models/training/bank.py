"""Training images in memory: every image of a split preprocessed once and stacked (torch).

Each image carries the index of its study's body part in a
:class:`~models.serving.taxonomy.Taxonomy`
(the stage-1 class order), its study's label, the index of its study and, where the dataset
has finding boxes (:func:`models.datasets.data.load_boxes`), its boxes in input pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from models.datasets.boxes import AnnotatedImage
from models.datasets.data import MuraStudy, read_image
from models.serving.enhance import Preprocessing, preprocess_with_geometry
from models.serving.taxonomy import MURA_TAXONOMY, Taxonomy


class ImageItem(NamedTuple):
    """One image of a study, flattened for training."""

    path: Path
    body_part: int  # index into the dataset's taxonomy
    label: int
    study: int  # index of the study in the dataset's study sequence


class ImageBank(NamedTuple):
    """Every preprocessed image of a dataset, stacked for fast in-memory training."""

    images: torch.Tensor  # float16, N x C x S x S
    classes: torch.Tensor  # int64, N: body-part index into the taxonomy
    labels: torch.Tensor  # int64, N: the study's label (1 = abnormal)
    studies: torch.Tensor  # int64, N: index of the study
    # finding boxes of each image in input pixels (K x 4: x0, y0, x1, y1; K may be 0)
    boxes: tuple[torch.Tensor, ...] = ()
    # bool, N: whether the image was annotated (its boxes are all its findings)
    annotated: torch.Tensor | None = None


class MuraImageDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Images of some studies, preprocessed for the network.

    Parameters
    ----------
    studies : sequence of MuraStudy
        The studies whose images make up the dataset (flattened in order).
    preprocessing : Preprocessing
        The preprocessing applied to every image.
    taxonomy : Taxonomy
        Class order of the body-part indices (default
        :data:`~models.serving.taxonomy.MURA_TAXONOMY`);
        every study's ``body_part`` must be one of its classes.
    cache : bool
        Keep preprocessed tensors in memory (float16) after the first access.
    boxes : mapping of Path to AnnotatedImage, optional
        The dataset's finding boxes by image file (:func:`models.datasets.data.load_boxes`).

    Items are ``(tensor, body_part_index, label)`` with ``body_part_index`` into ``taxonomy``
    and ``label`` the study's label.
    """

    def __init__(self, studies: Sequence[MuraStudy], preprocessing: Preprocessing,
                 taxonomy: Taxonomy = MURA_TAXONOMY, *, cache: bool = True,
                 boxes: Mapping[Path, AnnotatedImage] | None = None) -> None:
        self.studies = tuple(studies)
        self.boxes = dict(boxes or {})
        self._input_boxes: dict[int, torch.Tensor] = {}
        self.preprocessing = preprocessing
        self.taxonomy = taxonomy
        self.items = tuple(
            ImageItem(path, taxonomy.index(s.body_part), s.label, i)
            for i, s in enumerate(self.studies)
            for path in s.images
        )
        self._cache: list[torch.Tensor | None] | None = [None] * len(self.items) if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> torch.Tensor:
        # damaged but decodable files (FracAtlas has some) were named at import time
        path = self.items[index].path
        image = read_image(path, tolerate_truncated=True)
        array, geometry = preprocess_with_geometry(image, self.preprocessing)
        annotated = self.boxes.get(path)
        if annotated is not None:
            self._input_boxes[index] = torch.tensor(
                [geometry.to_input(b.as_tuple()) for b in annotated.boxes_on(*image.shape)],
                dtype=torch.float32).reshape(-1, 4)
        return torch.from_numpy(np.require(array, requirements="W"))  # copy if read-only

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        if self._cache is None:
            return self._load(index), item.body_part, item.label
        cached = self._cache[index]
        if cached is None:
            cached = self._load(index).to(torch.float16)
            self._cache[index] = cached
        return cached.float(), item.body_part, item.label

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
            classes=torch.tensor([it.body_part for it in self.items], dtype=torch.int64),
            labels=torch.tensor([it.label for it in self.items], dtype=torch.int64),
            studies=torch.tensor([it.study for it in self.items], dtype=torch.int64),
            boxes=tuple(self._input_boxes.get(i, torch.zeros(0, 4)) for i in range(len(self))),
            annotated=torch.tensor([it.path in self.boxes for it in self.items],
                                   dtype=torch.bool),
        )
