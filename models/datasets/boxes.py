"""Finding boxes of a labelled dataset: COCO object-detection JSON beside the labels.

A dataset may hold ``boxes.json`` in its folder (beside ``labels.csv``, or in ``MURA-v1.1/``):
the COCO format (https://cocodataset.org/#format-data) that labelling tools (CVAT, Label
Studio, labelme converters) export::

    {"images": [{"id": 1, "file_name": "images/IMG0000019.jpg", "width": 373, "height": 454}],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                      "bbox": [x, y, width, height], "area": ..., "iscrowd": 0}],
     "categories": [{"id": 1, "name": "fracture", "supercategory": "finding"}]}

``file_name`` is the image's path as ``labels.csv`` (or MURA's ``*_image_paths.csv``, relative
to the folder above ``MURA-v1.1``) lists it; ``bbox`` is in the image's pixels, ``x`` and ``y``
its top-left corner. An image listed under ``images`` is *annotated*: its boxes are all its
findings (none: the annotator found none). An image not listed is unannotated, and a fractured
film without annotation trains the image-level loss alone. Every category counts as a finding.

A malformed entry never stops a load: an annotation of an unknown image, a box outside its
image or of no area, a non-numeric ``bbox`` is skipped with a warning naming the file and the
entry, and :class:`BoxReport` counts what was kept and skipped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: File name of a dataset's boxes.
BOXES_JSON = "boxes.json"
#: The one COCO category Ossa writes.
FRACTURE_CATEGORY: Mapping[str, Any] = {"id": 1, "name": "fracture", "supercategory": "finding"}
#: A box may reach this far (pixels) past its image's edge before it counts as outside; the
#: part outside is clipped. Annotation tools round the edge of a box drawn to the border.
EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in image pixels: x = column, y = row, (x0, y0) top-left.

    Raises
    ------
    ValueError
        When a coordinate is not finite or the box has no area.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values):
            raise ValueError(f"box coordinates must be finite numbers, got {values}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"box must have x1 > x0 and y1 > y0, got {values}")

    @property
    def area(self) -> float:
        """Area in square pixels."""
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1)."""
        return self.x0, self.y0, self.x1, self.y1

    def intersection(self, other: Box) -> float:
        """Area shared with ``other``."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(w, 0.0) * max(h, 0.0)

    def iou(self, other: Box) -> float:
        """Intersection over union with ``other``."""
        shared = self.intersection(other)
        return shared / (self.area + other.area - shared)

    @classmethod
    def from_coco(cls, bbox: object, *, width: float, height: float) -> Box:
        """A COCO ``[x, y, w, h]`` inside a ``width`` x ``height`` image (clipped within
        :data:`EDGE_TOLERANCE`).

        Raises
        ------
        ValueError
            When ``bbox`` is not four numbers, has no area, or lies outside the image.
        """
        if (not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in bbox)):
            raise ValueError(f"bbox must be four numbers [x, y, width, height], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise ValueError(f"bbox {list(bbox)} has no area")
        t = EDGE_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise ValueError(f"bbox {list(bbox)} lies outside the {width:g}x{height:g} image")
        return cls(max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height))

    def to_coco(self) -> list[float]:
        """COCO ``[x, y, width, height]``."""
        return [round(self.x0, 2), round(self.y0, 2), round(self.x1 - self.x0, 2),
                round(self.y1 - self.y0, 2)]


@dataclass(frozen=True)
class AnnotatedImage:
    """One image of a ``boxes.json``: its path as the labels list it, size and boxes."""

    file_name: str
    width: int
    height: int
    boxes: tuple[Box, ...] = ()

    def __post_init__(self) -> None:
        if not self.file_name:
            raise ValueError("file_name must not be empty")
        for key in ("width", "height"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")


    def boxes_on(self, rows: int, columns: int) -> tuple[Box, ...]:
        """The boxes on the image as read, ``rows`` x ``columns`` (a copy may have been
        resized since it was annotated)."""
        sx, sy = columns / self.width, rows / self.height
        return tuple(Box(b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy) for b in self.boxes)


@dataclass
class BoxReport:
    """What a load or an import kept and skipped (warnings name each skipped entry)."""

    images: int = 0
    boxes: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Count a skipped entry and log ``message``."""
        self.skipped += 1
        self.warnings.append(message)
        logger.warning("%s", message)


def write_coco(path: Path, images: Iterable[AnnotatedImage]) -> None:
    """Write ``images`` as COCO JSON at ``path`` (atomically: a partial file, then rename)."""
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, start=1):
        coco_images.append({"id": image_id, "file_name": image.file_name,
                            "width": image.width, "height": image.height})
        for box in image.boxes:
            bbox = box.to_coco()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": FRACTURE_CATEGORY["id"], "bbox": bbox,
                                "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
    document = {"images": coco_images, "annotations": annotations,
                "categories": [dict(FRACTURE_CATEGORY)]}
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def read_coco(path: Path, *, known: Sequence[str] | None = None
              ) -> tuple[dict[str, AnnotatedImage], BoxReport]:
    """Parse a COCO ``boxes.json``: annotated images by ``file_name``, and what was skipped.

    Parameters
    ----------
    path : Path
        The JSON file.
    known : sequence of str, optional
        The dataset's image paths; an image (and its boxes) not among them is skipped.

    Raises
    ------
    ValueError
        When the file is not JSON or not a COCO document at all (no ``images`` and
        ``annotations`` lists); single bad entries are skipped instead.
    """
    report = BoxReport()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from exc
    if (not isinstance(document, Mapping) or not isinstance(document.get("images"), list)
            or not isinstance(document.get("annotations"), list)):
        raise ValueError(f"{path}: a COCO document needs 'images' and 'annotations' lists")
    known_names = set(known) if known is not None else None
    by_id: dict[object, AnnotatedImage] = {}
    for n, entry in enumerate(document["images"]):
        try:
            if not isinstance(entry, Mapping):
                raise ValueError("not an object")
            image = AnnotatedImage(str(entry.get("file_name", "")), entry["width"],
                                   entry["height"])
        except (KeyError, TypeError, ValueError) as exc:
            report.warn(f"{path.name}: images[{n}] skipped: {exc!r}")
            continue
        if known_names is not None and image.file_name not in known_names:
            report.warn(f"{path.name}: images[{n}] {image.file_name!r} is not an image of the "
                        f"dataset; skipped")
            continue
        by_id[entry.get("id")] = image
    boxes: dict[object, list[Box]] = {key: [] for key in by_id}
    for n, entry in enumerate(document["annotations"]):
        image_id = entry.get("image_id") if isinstance(entry, Mapping) else None
        if image_id not in by_id:
            report.warn(f"{path.name}: annotations[{n}] refers to no kept image "
                        f"(image_id {image_id!r}); skipped")
            continue
        image = by_id[image_id]
        try:
            boxes[image_id].append(Box.from_coco(entry.get("bbox"), width=image.width,
                                                 height=image.height))
        except ValueError as exc:
            report.warn(f"{path.name}: annotations[{n}] of {image.file_name!r}: {exc}; "
                        f"skipped")
    annotated = {image.file_name: AnnotatedImage(image.file_name, image.width, image.height,
                                                 tuple(boxes[key]))
                 for key, image in by_id.items()}
    report.images = len(annotated)
    report.boxes = sum(len(a.boxes) for a in annotated.values())
    return annotated, report
