"""Localisation figures of an evaluation: do the findings point at the annotated fractures?

For each image of an assessed class, :func:`locate` keeps what the model reported (its
findings at the operating point, :mod:`models.serving.findings`), its most suspicious region
whatever
the verdict, and the map's regions at every threshold of :data:`FROC_THRESHOLDS`, all in the
image's pixels. :func:`localisation_metrics` sets them against the dataset's boxes
(:mod:`models.datasets.boxes`), per assessed class of the images' TRUE class:

* **hit rate**: among fractured films with at least one annotated box, the share whose highest
  finding overlaps an annotated box (a film without findings is a miss), with a 95% bootstrap
  interval; the **pointing** hit rate does the same with the film's most suspicious region
  whether or not the film was flagged, which isolates localisation from detection;
* **findings per normal film** at the operating point (normal films of the class);
* **FROC**: for each map threshold, the share of annotated boxes overlapped by a region
  (lesion sensitivity) against the mean number of regions per normal film.

*Overlaps* means the two boxes share area (intersection > 0); the share reaching IoU 0.1 is
reported beside it. Only annotated images count (an unannotated fractured film has no boxes to
hit). No torch: this runs on the base install.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.datasets.boxes import Box
from models.serving.enhance import InputGeometry
from models.serving.findings import Finding, map_findings

#: Map thresholds of the FROC curve.
FROC_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))
#: IoU of the stricter hit criterion reported beside "overlaps".
STRICT_IOU = 0.1


@dataclass(frozen=True)
class LocalisedImage:
    """One assessed image of an evaluation, with what localisation needs.

    Parameters
    ----------
    path : str
        The image file.
    true_type : str
        Its true class.
    label : int
        1 = fractured.
    boxes : tuple of Box or None
        Its annotated boxes in its pixels; None when it was not annotated.
    findings : tuple of Finding
        What the model reported at the operating point.
    top_region : Finding or None
        Its most suspicious region, whatever the verdict.
    froc_regions : tuple of tuple of Finding
        Its map's regions at each of :data:`FROC_THRESHOLDS`.
    """

    path: str
    true_type: str
    label: int
    boxes: tuple[Box, ...] | None
    findings: tuple[Finding, ...]
    top_region: Finding | None
    froc_regions: tuple[tuple[Finding, ...], ...]


def locate(fmap: NDArray[np.floating], geometry: InputGeometry, *, stride: int,
           max_findings: int) -> tuple[Finding | None, tuple[tuple[Finding, ...], ...]]:
    """The most suspicious region of one map and its regions at each FROC threshold."""
    top = map_findings(fmap, geometry, stride=stride, threshold=1.1, max_findings=1,
                       at_least_one=True)
    froc = tuple(map_findings(fmap, geometry, stride=stride, threshold=t,
                              max_findings=len(fmap.ravel()))
                 for t in FROC_THRESHOLDS)
    return (top[0] if top else None), froc


def _box(finding: Finding) -> Box:
    return Box(finding.x0, finding.y0, finding.x1, finding.y1)


def _hits(finding: Finding | None, boxes: Sequence[Box], *, iou: float = 0.0) -> bool:
    if finding is None:
        return False
    box = _box(finding)
    if iou <= 0:
        return any(box.intersection(b) > 0 for b in boxes)
    return any(box.iou(b) >= iou for b in boxes)


def _rate(hits: Sequence[bool], rng: np.random.Generator, n_bootstrap: int
          ) -> dict[str, float | int | None]:
    values = np.asarray(hits, dtype=np.float64)
    if values.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    samples = values[rng.integers(0, values.size, size=(n_bootstrap, values.size))].mean(1)
    return {"value": float(values.mean()), "ci_low": float(np.quantile(samples, 0.025)),
            "ci_high": float(np.quantile(samples, 0.975)), "n": int(values.size)}


def localisation_metrics(images: Sequence[LocalisedImage], classes: Sequence[str], *,
                         n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Hit rates, findings per normal film and the FROC curve of each class (see the module
    notes); JSON-ready."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"definition": "hit: the highest finding shares area with an "
                           "annotated box; pointing: the same with the most suspicious region "
                           "whether or not the film was flagged", "classes": {}}
    for name in classes:
        mine = [i for i in images if i.true_type == name]
        fractured = [i for i in mine if i.label == 1 and i.boxes]
        normal = [i for i in mine if i.label == 0]
        first = [i.findings[0] if i.findings else None for i in fractured]
        lesions = sum(len(i.boxes or ()) for i in fractured)
        froc = []
        for k, threshold in enumerate(FROC_THRESHOLDS):
            found = sum(1 for i in fractured for b in (i.boxes or ())
                        if any(_box(f).intersection(b) > 0 for f in i.froc_regions[k]))
            fp = (float(np.mean([len(i.froc_regions[k]) for i in normal])) if normal
                  else None)
            froc.append({"threshold": threshold,
                         "sensitivity": found / lesions if lesions else None,
                         "findings_per_normal_film": fp})
        out["classes"][name] = {
            "fractured_annotated_films": len(fractured),
            "annotated_boxes": lesions,
            "normal_films": len(normal),
            "hit_rate": _rate([_hits(f, i.boxes or ()) for f, i in zip(first, fractured,
                                                                        strict=True)],
                              rng, n_bootstrap),
            "hit_rate_iou_0.1": _rate([_hits(f, i.boxes or (), iou=STRICT_IOU)
                                       for f, i in zip(first, fractured, strict=True)],
                                      rng, n_bootstrap),
            "pointing_hit_rate": _rate([_hits(i.top_region, i.boxes or ()) for i in fractured],
                                       rng, n_bootstrap),
            "findings_per_normal_film": (float(np.mean([len(i.findings) for i in normal]))
                                         if normal else None),
            "normal_films_with_findings": sum(1 for i in normal if i.findings),
            "froc": froc,
        }
    return out


def write_findings_csv(images: Sequence[tuple[str, Sequence[Finding]]], path: Path) -> None:
    """``findings.csv``: ``path,rank,x0,y0,x1,y1,probability``, one row per finding."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("path", "rank", "x0", "y0", "x1", "y1", "probability"))
        for image, findings in images:
            for rank, finding in enumerate(findings, start=1):
                d = finding.as_dict()
                writer.writerow((image, rank, d["x0"], d["y0"], d["x1"], d["y1"],
                                 d["probability"]))


def plot_froc(metrics: Mapping[str, Any], path: Path) -> None:
    """The FROC curve of each class: lesion sensitivity against findings per normal film."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, figures in metrics["classes"].items():
        points = [(p["findings_per_normal_film"], p["sensitivity"]) for p in figures["froc"]
                  if p["findings_per_normal_film"] is not None and p["sensitivity"] is not None]
        if points:
            x, y = zip(*sorted(points), strict=True)
            ax.plot(x, y, marker=".", label=f"{name} ({figures['annotated_boxes']} boxes)")
    ax.set_xlabel("regions per normal film")
    ax.set_ylabel("share of annotated fractures overlapped")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title("FROC (map thresholds 0.05-0.95)")
    if ax.lines:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
