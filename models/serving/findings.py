"""Findings: suspected fractures located on the source image, from stage 2's fracture map.

The fracture map (:class:`models.training.networks.FractureNet`) gives a probability per cell of
``stride`` input pixels. A *finding* is a connected region (8-connectivity) of cells at or
above the class's finding threshold: its box is the cells' extent mapped back through the
preprocessing (:class:`models.serving.enhance.InputGeometry`: padding, resizing, foreground crop) to
the pixels of the image given to preprocessing, and its probability is the region's highest
cell. Findings are ordered by probability, at most ``max_findings`` per image.

Which images get findings (:func:`image_findings`): an assessed image whose own probability of
abnormality reaches its class's operating threshold. Such an image always gets at least its
most suspicious region (the cells around the map's peak down to half of it), so that an image
the model flags always shows where; an image below the threshold, a normal one or one not
assessed, gets none. numpy and scipy only (the serving path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from models.serving.enhance import InputGeometry

#: 8-connectivity of map cells.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Finding:
    """A suspected fracture: a box in image pixels (x = column, y = row) and its probability.

    Parameters
    ----------
    x0, y0, x1, y1 : float
        Top-left and bottom-right corners, continuous pixel coordinates of the image the
        finding was computed on (pixel (r, c) spans [c, c + 1) x [r, r + 1)).
    probability : float
        The highest fracture probability of the region's cells, in [0, 1].
    """

    x0: float
    y0: float
    x1: float
    y1: float
    probability: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError(f"finding corners must be finite numbers, got {values}")
        if not (self.x1 > self.x0 >= 0 and self.y1 > self.y0 >= 0):
            raise ValueError(f"finding must have 0 <= x0 < x1 and 0 <= y0 < y1, got {values}")
        if (not isinstance(self.probability, int | float) or not math.isfinite(self.probability)
                or not 0.0 <= self.probability <= 1.0):
            raise ValueError(f"finding probability must be in [0, 1], got {self.probability!r}")

    def scaled(self, sx: float, sy: float) -> Finding:
        """The same finding on an image ``sx`` times wider and ``sy`` times taller (e.g. the
        full-resolution DICOM image of a reduced rendering)."""
        return Finding(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.probability)

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form (corners rounded to 0.1 pixel, probability to 4 places)."""
        return {"x0": round(self.x0, 1), "y0": round(self.y0, 1), "x1": round(self.x1, 1),
                "y1": round(self.y1, 1), "probability": round(self.probability, 4)}


def regions(fmap: NDArray[np.floating], threshold: float
            ) -> list[tuple[float, tuple[int, int, int, int]]]:
    """Connected regions of ``fmap`` at or above ``threshold``: (peak, (r0, c0, r1, c1)) with
    exclusive ends, the highest peak first."""
    labels, _ = ndimage.label(np.nan_to_num(fmap, nan=0.0) >= threshold, structure=_EIGHT)
    found = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        rows, cols = window
        peak = float(np.nanmax(np.where(labels[window] == index, fmap[window], -np.inf)))
        found.append((peak, (rows.start, cols.start, rows.stop, cols.stop)))
    found.sort(key=lambda item: -item[0])
    return found


def _to_finding(peak: float, cells: tuple[int, int, int, int], geometry: InputGeometry,
                stride: int) -> Finding | None:
    r0, c0, r1, c1 = cells
    x0, y0, x1, y1 = geometry.to_source((c0 * stride, r0 * stride, c1 * stride, r1 * stride))
    if not (x1 > x0 and y1 > y0):  # a region on the padding only
        return None
    return Finding(x0, y0, x1, y1, min(max(peak, 0.0), 1.0))


def map_findings(fmap: NDArray[np.floating], geometry: InputGeometry, *, stride: int,
                 threshold: float, max_findings: int, at_least_one: bool = False
                 ) -> tuple[Finding, ...]:
    """Findings of one fracture map, in the pixels of the preprocessed image.

    Parameters
    ----------
    fmap : numpy.ndarray
        h x w cell probabilities.
    geometry : InputGeometry
        How the network input was made from the image.
    stride : int
        Input pixels per cell.
    threshold : float
        Cell probability from which a region is a finding.
    max_findings : int
        Most findings returned.
    at_least_one : bool
        When no cell reaches ``threshold``, return the region around the map's peak (cells at
        or above half the peak, connected to it).
    """
    found = [f for peak, cells in regions(fmap, threshold)
             if (f := _to_finding(peak, cells, geometry, stride)) is not None]
    if not found and at_least_one and fmap.size and np.isfinite(fmap).any():
        peak = float(np.nanmax(fmap))
        for region_peak, cells in regions(fmap, peak / 2):
            if region_peak >= peak and (f := _to_finding(peak, cells, geometry, stride)):
                found = [f]
                break
    return tuple(found[:max_findings])


def image_findings(fmaps: NDArray[np.floating], geometries: Sequence[InputGeometry],
                   probabilities: Sequence[float | None], classes: Sequence[str], *,
                   operating: dict[str, float], finding_thresholds: dict[str, float],
                   stride: int, max_findings: int) -> list[tuple[Finding, ...]]:
    """The findings of each image (see the module notes for which images get them).

    Parameters
    ----------
    fmaps : numpy.ndarray
        N x h x w fracture maps (N x 0 x 0: none computed, so no findings).
    geometries : sequence of InputGeometry
        Each image's preprocessing geometry.
    probabilities : sequence of float or None
        Each image's probability of abnormality (None: not assessed).
    classes : sequence of str
        Each image's routed class.
    operating : dict
        The study-level operating threshold of each assessed class.
    finding_thresholds : dict
        The finding threshold of each class that reports findings.
    stride, max_findings : int
        As in :func:`map_findings`.
    """
    out: list[tuple[Finding, ...]] = []
    for i, (probability, name) in enumerate(zip(probabilities, classes, strict=True)):
        if (probability is None or fmaps.size == 0 or name not in finding_thresholds
                or probability < operating.get(name, math.inf)):
            out.append(())
            continue
        out.append(map_findings(fmaps[i], geometries[i], stride=stride,
                                threshold=finding_thresholds[name], max_findings=max_findings,
                                at_least_one=True))
    return out
