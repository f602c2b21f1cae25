"""Procedural radiograph phantom written in the exact MURA-v1.1 layout.

MURA (Rajpurkar et al. 2017) cannot be redistributed, so tests, demos and benchmarks use this
phantom instead: the same loader (:mod:`models.data`) serves the phantom and a real MURA-v1.1
copy. Each of MURA's seven bone types has its own anatomy-like geometry, built from
vectorized signed-distance primitives (tapered capsules, ellipses, boxes) with cortical rims,
inside a soft-tissue envelope. Densities are summed along the beam and turned into an image
with Beer-Lambert attenuation, so bone is bright on a dark background, as in MURA.

An abnormal study shows one finding in every one of its images (each image is another view of
the same anatomy, framed so that the finding is in the field of view): a fracture (a jagged
gap, a displaced and angulated fragment, soft-tissue swelling and, mostly, a fluffy callus),
expansile lytic lesions with a sclerotic margin or dense blastic ones, or metal hardware (a
plate with screws, wires or a nail), which is very bright. Findings are deliberately
conspicuous, so that a small network trained for minutes on a CPU learns them: the phantom is
much easier than MURA. Views vary in rotation, mirroring, foreshortening, scale and framing;
exposures vary in attenuation, gamma, blur, noise and heel-effect shading; some images carry a
collimation border or a bright side marker, whatever their label.

Split rule (per bone type, see :func:`split_sizes`): of ``studies`` studies, the validation split
gets ``ceil(studies * valid_fraction)`` (at least one, and at least one is left to train when
``studies >= 2``), the train split the rest. Within each split, ``round(n * abnormal_fraction)``
studies are abnormal, in a seeded random order. Patients hold one or two studies, never span
splits, and are numbered from ``patient00001`` across all bone types and both splits.

Everything is deterministic for a given seed: each study is rendered from its own seed
``(seed, bone index, split index, study index)``, independently of the others, and a seed's
normal and abnormal renderings differ only by the finding (see :func:`render_study`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from models.results import BONE_TYPES

logger = logging.getLogger(__name__)

#: Name of the dataset directory, as in the MURA-v1.1 release.
DATASET_DIRNAME = "MURA-v1.1"
#: The two MURA splits.
SPLITS: tuple[str, ...] = ("train", "valid")
#: Side file (next to MURA-v1.1/) listing each study's finding kind.
FINDINGS_CSV = "phantom_findings.csv"
#: Kinds of finding an abnormal phantom study shows.
FINDINGS: tuple[str, ...] = ("fracture", "lesion", "hardware")

FloatArray = NDArray[np.float64]
Point = tuple[float, float]

_BONE_DENSITY = 1.0
#: Findings on thinner bones are sized as if the bone had this radius (body units).
_MIN_FINDING_SCALE = 0.08
#: Largest lesion radius (body units), whatever the bone.
_MAX_LESION = 0.17
_TISSUE_DENSITY = 0.32
_METAL_DENSITY = 6.0


@dataclass(frozen=True)
class PhantomConfig:
    """How phantom images look; every field has a sane default.

    Parameters
    ----------
    min_size, max_size : int
        Range of the image side lengths in pixels (each side drawn independently, then
        stretched for long bones).
    images_per_study : tuple of float
        Probabilities of a study having 1, 2, ... images (up to 4 in MURA practice).
    findings : tuple of str
        Kinds of finding an abnormal study may show, drawn uniformly (subset of FINDINGS).
    artifact_probability : float
        Probability that an image carries a collimation border, and (independently) a side
        marker; both are label-independent distractors.
    """

    min_size: int = 200
    max_size: int = 400
    images_per_study: tuple[float, ...] = (0.05, 0.3, 0.4, 0.25)
    findings: tuple[str, ...] = FINDINGS
    artifact_probability: float = 0.15

    def __post_init__(self) -> None:
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError(
                f"min_size must be >= 32 and <= max_size, got {self.min_size}, {self.max_size}"
            )
        probs = self.images_per_study
        if not probs or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0):
            raise ValueError(f"images_per_study must be probabilities summing to 1, got {probs}")
        if not self.findings or any(f not in FINDINGS for f in self.findings):
            raise ValueError(
                f"findings must be a non-empty subset of {FINDINGS}, got {self.findings}"
            )
        if not 0.0 <= self.artifact_probability <= 1.0:
            raise ValueError(
                f"artifact_probability must be in [0, 1], got {self.artifact_probability}"
            )


@dataclass(frozen=True)
class PhantomStudy:
    """One rendered study.

    Parameters
    ----------
    bone : str
        Bone type, one of :data:`~models.results.BONE_TYPES`.
    abnormal : bool
        Study label.
    finding : str
        ``"none"`` for a normal study, else one of :data:`FINDINGS`.
    images : tuple of numpy.ndarray
        float32 2-D images in [0, 1], 1 = bright (bone).
    """

    bone: str
    abnormal: bool
    finding: str
    images: tuple[NDArray[np.float32], ...]

    def __post_init__(self) -> None:
        if self.bone not in BONE_TYPES:
            raise ValueError(f"bone must be one of {BONE_TYPES}, got {self.bone!r}")
        if self.abnormal != (self.finding != "none"):
            raise ValueError(f"finding {self.finding!r} contradicts abnormal={self.abnormal}")
        if not self.images:
            raise ValueError("images must hold at least one image")


# --------------------------------------------------------------------------------------------
# Signed-distance primitives (body frame: u to the right, v downwards, anatomy within ~[-1, 1])
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Capsule:
    a: Point
    b: Point
    r1: float
    r2: float

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        (ax, ay), (bx, by) = self.a, self.b
        dx, dy = bx - ax, by - ay
        length2 = max(dx * dx + dy * dy, 1e-12)
        t = np.clip(((u - ax) * dx + (v - ay) * dy) / length2, 0.0, 1.0)
        dist: FloatArray = np.hypot(u - ax - t * dx, v - ay - t * dy)
        return dist - (self.r1 + t * (self.r2 - self.r1))

    def extent(self) -> tuple[float, float, float, float]:
        r = max(self.r1, self.r2)
        return (
            min(self.a[0], self.b[0]) - r,
            min(self.a[1], self.b[1]) - r,
            max(self.a[0], self.b[0]) + r,
            max(self.a[1], self.b[1]) + r,
        )

    def point(self, t: float) -> Point:
        return (self.a[0] + t * (self.b[0] - self.a[0]), self.a[1] + t * (self.b[1] - self.a[1]))

    def radius(self, t: float) -> float:
        return self.r1 + t * (self.r2 - self.r1)

    def axis(self) -> Point:
        dx, dy = self.b[0] - self.a[0], self.b[1] - self.a[1]
        n = math.hypot(dx, dy) or 1.0
        return (dx / n, dy / n)

    def length(self) -> float:
        return math.hypot(self.b[0] - self.a[0], self.b[1] - self.a[1])


def _to_local(u: FloatArray, v: FloatArray, c: Point,
              angle: float) -> tuple[FloatArray, FloatArray]:
    """Body coordinates in the frame centred on ``c`` and rotated by ``angle``."""
    cos, sin = math.cos(angle), math.sin(angle)
    return (u - c[0]) * cos + (v - c[1]) * sin, -(u - c[0]) * sin + (v - c[1]) * cos


@dataclass(frozen=True)
class _Ellipse:
    c: Point
    ru: float
    rv: float
    angle: float = 0.0

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        x, y = _to_local(u, v, self.c, self.angle)
        k: FloatArray = np.hypot(x / self.ru, y / self.rv)
        return (k - 1.0) * min(self.ru, self.rv)

    def extent(self) -> tuple[float, float, float, float]:
        r = max(self.ru, self.rv)
        return (self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r)


@dataclass(frozen=True)
class _Box:
    c: Point
    half_u: float
    half_v: float
    angle: float = 0.0

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        x, y = _to_local(u, v, self.c, self.angle)
        x = np.abs(x) - self.half_u
        y = np.abs(y) - self.half_v
        outside = np.hypot(np.maximum(x, 0.0), np.maximum(y, 0.0))
        result: FloatArray = outside + np.minimum(np.maximum(x, y), 0.0)
        return result

    def extent(self) -> tuple[float, float, float, float]:
        r = math.hypot(self.half_u, self.half_v)
        return (self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r)


_Primitive = _Capsule | _Ellipse | _Box


def _union_sdf(prims: Sequence[_Primitive], u: FloatArray, v: FloatArray) -> FloatArray:
    result = prims[0].sdf(u, v)
    for prim in prims[1:]:
        result = np.minimum(result, prim.sdf(u, v))
    return result


def _union_extent(prims: Sequence[_Primitive]) -> tuple[float, float, float, float]:
    boxes = [p.extent() for p in prims]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


@dataclass(frozen=True)
class _Site:
    """A long-bone segment where a fracture or hardware may sit (t range along the capsule)."""

    bone: int
    capsule: _Capsule
    t_min: float = 0.25
    t_max: float = 0.75


@dataclass
class _Bone:
    prims: list[_Primitive]
    density: float = _BONE_DENSITY
    cortex: float = 0.3  # cortical thickness relative to the smallest radius


@dataclass
class _Anatomy:
    bones: list[_Bone] = field(default_factory=list)
    tissue: list[_Primitive] = field(default_factory=list)
    sites: list[_Site] = field(default_factory=list)

    def add(self, prims: Sequence[_Primitive], *, density: float = _BONE_DENSITY,
            sites: Sequence[tuple[int, float, float]] = ()) -> int:
        """Add a bone; ``sites`` are (primitive index, t_min, t_max) of fracturable capsules."""
        index = len(self.bones)
        self.bones.append(_Bone(list(prims), density=density))
        for prim_index, t_min, t_max in sites:
            capsule = prims[prim_index]
            assert isinstance(capsule, _Capsule)
            self.sites.append(_Site(index, capsule, t_min, t_max))
        return index


def _long_bone(a: Point, b: Point, r1: float, r2: float, *, flare_a: float = 1.5,
               flare_b: float = 1.5) -> list[_Primitive]:
    """A shaft with flared (epiphyseal) ends; primitive 0 is the shaft capsule."""
    shaft = _Capsule(a, b, r1, r2)
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    prims: list[_Primitive] = [shaft]
    if flare_a > 0:
        prims.append(_Ellipse(a, r1 * 0.9, r1 * flare_a, angle))
    if flare_b > 0:
        prims.append(_Ellipse(b, r2 * 0.9, r2 * flare_b, angle))
    return prims


def _along(origin: Point, angle: float, length: float) -> Point:
    """Point ``length`` away from ``origin`` in direction ``angle`` (0 = up, radians clockwise)."""
    return (origin[0] + length * math.sin(angle), origin[1] - length * math.cos(angle))


# --------------------------------------------------------------------------------------------
# Anatomy of the seven MURA bone types
# --------------------------------------------------------------------------------------------


def _humerus(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.9, 1.1)
    r = 0.085 * k
    top, bottom = (0.0, -0.78), (rng.uniform(-0.05, 0.05), 0.78)
    shaft = _Capsule(top, bottom, r * 1.1, r * 0.95)
    an.add(
        [
            shaft,
            _Ellipse((0.06, -0.86), 0.21 * k, 0.19 * k),  # head
            _Ellipse((-0.13, -0.8), 0.08 * k, 0.09 * k),  # greater tubercle
            _Ellipse((bottom[0], 0.86), 0.24 * k, 0.08 * k),  # condyles
            _Ellipse((bottom[0] - 0.2 * k, 0.8), 0.06, 0.06),  # epicondyle
        ],
        sites=[(0, 0.15, 0.85)],
    )
    an.add([_Ellipse((0.36, -0.88), 0.05, 0.16, 0.2)], density=0.8)  # glenoid
    an.add(_long_bone((bottom[0] - 0.08, 0.98), (bottom[0] - 0.1, 1.5), 0.05, 0.05, flare_b=0))
    an.add(_long_bone((bottom[0] + 0.08, 0.95), (bottom[0] + 0.07, 1.5), 0.06, 0.05, flare_b=0))
    an.tissue += [_Capsule((0.0, -1.4), (0.0, 1.5), 0.3 * k, 0.26 * k)]
    return an


def _forearm(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.9, 1.1)
    gap = rng.uniform(0.09, 0.14)
    cross = rng.uniform(-0.04, 0.06)  # pronation brings the radius across the ulna
    radius = _Capsule((-gap, -0.82), (-gap - cross, 0.82), 0.055 * k, 0.075 * k)
    ulna = _Capsule((gap, -0.84), (gap - 0.02, 0.84), 0.075 * k, 0.05 * k)
    an.add(
        [radius, _Ellipse((-gap, -0.88), 0.08 * k, 0.045 * k),
         _Ellipse((-gap - cross - 0.01, 0.9), 0.12 * k, 0.06 * k)],
        sites=[(0, 0.2, 0.8)],
    )
    an.add(
        [ulna, _Ellipse((gap + 0.01, -0.92), 0.09 * k, 0.1 * k),
         _Ellipse((gap - 0.02, 0.89), 0.06 * k, 0.05 * k)],
        sites=[(0, 0.2, 0.8)],
    )
    an.add([_Ellipse((-0.02, -1.1), 0.28 * k, 0.08 * k)])  # distal humerus, mostly cropped
    for i in range(3):  # proximal carpal row, mostly cropped
        an.add([_Ellipse((-0.14 + 0.12 * i, 1.06), 0.055, 0.045)], density=0.9)
    an.tissue += [_Capsule((0.0, -1.4), (0.0, 1.4), 0.36 * k, 0.3 * k)]
    return an


def _elbow(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.9, 1.1)
    flex = math.radians(rng.uniform(40.0, 110.0)) * rng.choice([-1.0, 1.0])
    down = math.pi + flex  # forearm direction (0 = up)
    humerus_top = (rng.uniform(-0.05, 0.05), -1.4)
    an.add(
        [
            _Capsule(humerus_top, (0.0, -0.12), 0.1 * k, 0.12 * k),
            _Ellipse((0.0, -0.07), 0.27 * k, 0.1 * k),
            _Ellipse((-0.26 * k, -0.12), 0.06, 0.06),
            _Ellipse((0.26 * k, -0.12), 0.05, 0.05),
        ],
        sites=[(0, 0.45, 0.8)],
    )
    r_start, u_start = (-0.1 * k, 0.08), (0.08 * k, 0.05)
    radius = _Capsule(r_start, _along(r_start, down, 1.3), 0.05 * k, 0.06 * k)
    ulna = _Capsule(u_start, _along(u_start, down, 1.3), 0.075 * k, 0.055 * k)
    an.add(
        [radius, _Ellipse(r_start, 0.085 * k, 0.045 * k, down - math.pi / 2)],
        sites=[(0, 0.25, 0.6)],
    )
    an.add(
        [ulna, _Ellipse(_along(u_start, down, -0.08), 0.09 * k, 0.11 * k, down)],
        sites=[(0, 0.25, 0.6)],
    )
    an.tissue += [
        _Capsule(humerus_top, (0.0, 0.0), 0.4 * k, 0.42 * k),
        _Capsule((0.0, 0.0), _along((0.0, 0.0), down, 1.4), 0.42 * k, 0.34 * k),
    ]
    return an


def _carpals(an: _Anatomy, center: Point, k: float, density: float = 0.95) -> None:
    cu, cv = center
    for i, du in enumerate((-0.2, -0.07, 0.06, 0.18)):  # proximal row
        an.add([_Ellipse((cu + du * k, cv + 0.1 * k), 0.07 * k, 0.06 * k, 0.3 * i)],
               density=density)
    for i, du in enumerate((-0.19, -0.07, 0.05, 0.16)):  # distal row
        an.add([_Ellipse((cu + du * k, cv - 0.06 * k), 0.06 * k, 0.065 * k, -0.2 * i)],
               density=density)


def _digit(an: _Anatomy, base: Point, angle: float, lengths: Sequence[float],
           radius: float, bend: float, sites: int = 99) -> Point:
    """Chain of bones from ``base`` along ``angle`` bending ``bend`` per joint; returns the tip.

    The first ``sites`` bones of the chain may carry a fracture or hardware.
    """
    point, r = base, radius
    for i, length in enumerate(lengths):
        start = _along(point, angle, 0.025)
        end = _along(start, angle, length)
        prims = _long_bone(start, end, r, r * 0.85, flare_a=1.4, flare_b=1.2)
        an.add(prims, sites=[(0, 0.3, 0.7)] if i < sites else [])
        point, r, angle = end, r * 0.85, angle + bend
    return point


def _wrist(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.9, 1.1)
    an.add(
        [_Capsule((-0.16, 1.5), (-0.17, 0.36), 0.1 * k, 0.12 * k),
         _Ellipse((-0.15, 0.3), 0.2 * k, 0.085 * k, rng.uniform(-0.15, 0.15))],
        sites=[(0, 0.6, 0.92)],
    )
    an.add(
        [_Capsule((0.18, 1.5), (0.17, 0.42), 0.07 * k, 0.075 * k),
         _Ellipse((0.17, 0.4), 0.08 * k, 0.07 * k), _Ellipse((0.22, 0.33), 0.025, 0.04)],
        sites=[(0, 0.6, 0.9)],
    )
    _carpals(an, (0.0, 0.08), k)
    for i, du in enumerate((-0.16, -0.05, 0.06, 0.17)):
        base = (du * k, -0.17)
        _digit(an, base, math.radians(-9 + 6 * i), [0.75], 0.045 * k, 0.0)
    _digit(an, (-0.26 * k, -0.05), math.radians(-38), [0.4, 0.3], 0.05 * k, 0.15)
    an.tissue += [
        _Capsule((0.0, 1.6), (0.0, 0.1), 0.34 * k, 0.4 * k),
        _Ellipse((0.0, -0.55), 0.45 * k, 0.6),
        _Capsule((-0.3, -0.1), _along((-0.3, -0.1), math.radians(-38), 0.7), 0.14, 0.1),
    ]
    return an


def _hand(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.85, 1.0)
    spread = rng.uniform(0.6, 1.2)
    an.add([_Capsule((-0.14, 1.6), (-0.15, 0.98), 0.09 * k, 0.1 * k),
            _Ellipse((-0.14, 0.95), 0.16 * k, 0.06 * k)])
    an.add([_Capsule((0.15, 1.6), (0.14, 1.0), 0.06 * k, 0.06 * k),
            _Ellipse((0.14, 0.98), 0.065 * k, 0.055 * k)])
    _carpals(an, (0.0, 0.78), k * 0.85)
    fingers = (
        (-0.17, -13.0, (0.5, 0.3, 0.19, 0.14)),
        (-0.06, -4.0, (0.52, 0.33, 0.21, 0.15)),
        (0.05, 4.0, (0.5, 0.31, 0.2, 0.14)),
        (0.15, 12.0, (0.45, 0.25, 0.16, 0.13)),
    )
    tips: list[tuple[Point, Point]] = []
    for du, deg, lengths in fingers:
        base = (du * k, 0.62)
        angle = math.radians(deg * spread)
        tip = _digit(an, base, angle, [x * k for x in lengths], 0.05 * k,
                     math.radians(rng.uniform(-4, 4)), sites=2)
        tips.append((base, tip))
    thumb_base = (-0.24 * k, 0.72)
    thumb_angle = math.radians(-45 * spread)
    tip = _digit(an, thumb_base, thumb_angle, [0.34 * k, 0.26 * k, 0.18 * k], 0.05 * k, 0.12,
                 sites=1)
    tips.append((thumb_base, tip))
    an.tissue += [_Capsule(base, tip, 0.08, 0.07) for base, tip in tips]
    an.tissue += [_Ellipse((0.0, 0.4), 0.38 * k, 0.42),
                  _Capsule((0.0, 1.6), (0.0, 0.8), 0.33, 0.36)]
    return an


def _finger(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.9, 1.1)
    bend = math.radians(rng.uniform(-18, 18))
    an.add(
        [_Capsule((0.0, 1.6), (0.0, 0.9), 0.1 * k, 0.1 * k),
         _Ellipse((0.0, 0.86), 0.12 * k, 0.1 * k)],
        sites=[(0, 0.4, 0.8)],
    )
    tip = _digit(an, (0.0, 0.8), 0.0, [0.6 * k, 0.42 * k, 0.3 * k], 0.09 * k, bend)
    an.add([_Ellipse(tip, 0.08 * k, 0.045 * k)])  # distal tuft
    an.tissue += [_Capsule((0.0, 1.7), (0.0, 0.8), 0.22 * k, 0.2 * k),
                  _Capsule((0.0, 0.8), tip, 0.2 * k, 0.16 * k)]
    for side in (-1.0, 1.0):  # neighbouring fingers, partly in frame
        if rng.random() < 0.5:
            base = (side * 0.55, 0.9)
            neighbour_tip = _digit(an, base, side * math.radians(8), [0.55, 0.38], 0.08 * k, bend,
                                   sites=0)
            an.tissue.append(_Capsule(base, neighbour_tip, 0.18, 0.16))
    return an


def _shoulder(rng: np.random.Generator) -> _Anatomy:
    an = _Anatomy()
    k = rng.uniform(0.9, 1.1)
    head = (0.1, 0.0)
    shaft_end = (0.25 + rng.uniform(-0.05, 0.05), 1.5)
    an.add(
        [
            _Ellipse(head, 0.3 * k, 0.29 * k),
            _Capsule((0.15, 0.15), shaft_end, 0.16 * k, 0.13 * k),
            _Ellipse((0.36, 0.02), 0.1 * k, 0.13 * k),  # greater tubercle
        ],
        sites=[(1, 0.3, 0.7)],
    )
    an.add([_Ellipse((-0.26, 0.02), 0.06, 0.21 * k, 0.1)], density=1.1)  # glenoid
    an.add([_Ellipse((-0.72, 0.35), 0.38, 0.55, 0.35),  # scapular body
            _Capsule((-0.3, 0.1), (-0.8, 1.1), 0.09, 0.07)], density=0.45)
    an.add([_Capsule((-0.25, -0.42), (0.28, -0.38), 0.065, 0.05)])  # acromion
    an.add([_Capsule((-0.28, -0.2), (-0.05, -0.24), 0.045, 0.035)])  # coracoid
    clavicle = _Capsule((0.05, -0.52), (-1.4, -0.78 + rng.uniform(-0.08, 0.08)), 0.065, 0.08)
    an.add([clavicle], sites=[(0, 0.25, 0.6)])
    for i in range(3):  # ribs, faint
        y = -0.1 + 0.45 * i
        an.add([_Capsule((-1.5, y + 0.2), (-0.7, y - 0.1), 0.035, 0.035)], density=0.5)
    an.tissue += [_Ellipse((-0.2, 0.35), 1.3, 1.2), _Capsule((0.2, 0.3), shaft_end, 0.4, 0.35)]
    return an


_ANATOMY: dict[str, Callable[[np.random.Generator], _Anatomy]] = {
    "ELBOW": _elbow,
    "FINGER": _finger,
    "FOREARM": _forearm,
    "HAND": _hand,
    "HUMERUS": _humerus,
    "SHOULDER": _shoulder,
    "WRIST": _wrist,
}

#: Views re-drawn at most this often to keep the finding in the field of view.
_VIEW_TRIES = 20
#: Long bones are imaged on tall detectors (height / width).
_TALL = {"FOREARM": 1.45, "HUMERUS": 1.5, "FINGER": 1.2}
#: Framing: (zoom, body point placed at the image centre).
_FRAME: dict[str, tuple[float, Point]] = {
    "ELBOW": (1.2, (0.0, 0.1)),
    "FINGER": (1.05, (0.0, 0.15)),
    "HAND": (1.5, (0.0, 0.25)),
    "WRIST": (1.15, (0.0, 0.1)),
    "SHOULDER": (1.1, (-0.15, 0.1)),
}


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fracture:
    bone: int
    center: Point
    normal: Point  # fracture plane normal (unit)
    shift: Point  # displacement of the distal fragment
    angle: float  # angulation of the distal fragment (radians)
    gap: float  # gap width (body units)
    jag: float  # jag amplitude
    jag_freq: float
    phase: float


@dataclass(frozen=True)
class _Lesion:
    bone: int
    center: Point
    radius: float
    lytic: bool
    lobes: tuple[float, ...]  # radial modulation of an irregular outline


@dataclass
class _Findings:
    fractures: list[_Fracture] = field(default_factory=list)
    lesions: list[_Lesion] = field(default_factory=list)
    metal: list[_Primitive] = field(default_factory=list)
    swelling: list[_Ellipse] = field(default_factory=list)
    callus: list[tuple[_Ellipse, float]] = field(default_factory=list)  # (shape, density)


def _make_fracture(site: _Site, rng: np.random.Generator, *, displaced: bool) -> _Fracture:
    t = rng.uniform(site.t_min, site.t_max)
    center = site.capsule.point(t)
    radius = max(site.capsule.radius(t), _MIN_FINDING_SCALE)  # small bones: still visible
    au, av = site.capsule.axis()
    tilt = rng.uniform(-0.6, 0.6)  # transverse to oblique
    normal = (au * math.cos(tilt) - av * math.sin(tilt), au * math.sin(tilt) + av * math.cos(tilt))
    if displaced:
        side = rng.choice([-1.0, 1.0])
        lateral = side * rng.uniform(1.6, 2.4) * radius
        axial = rng.uniform(-0.6, 0.3) * radius  # overlap or distraction
        shift = (-av * lateral + au * axial, au * lateral + av * axial)
        angle = rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(20, 40))
        gap = rng.uniform(1.1, 1.6) * radius
    else:
        shift, angle, gap = (0.0, 0.0), 0.0, rng.uniform(0.12, 0.2) * radius
    return _Fracture(
        bone=site.bone, center=center, normal=normal, shift=shift, angle=angle, gap=gap,
        jag=rng.uniform(0.1, 0.25) * radius, jag_freq=rng.uniform(40, 90),
        phase=rng.uniform(0, 2 * math.pi),
    )


def _random_bone_point(an: _Anatomy, rng: np.random.Generator) -> tuple[int, Point, float]:
    """A point inside a long-bone shaft (weighted by shaft area): bone, point, local radius."""
    weights = np.array([s.capsule.length() * s.capsule.radius(0.5) for s in an.sites])
    site = an.sites[int(rng.choice(len(an.sites), p=weights / weights.sum()))]
    t = rng.uniform(max(site.t_min - 0.1, 0.05), min(site.t_max + 0.1, 0.95))
    r = site.capsule.radius(t)
    cu, cv = site.capsule.point(t)
    au, av = site.capsule.axis()
    off = rng.uniform(-0.3, 0.3) * r
    return site.bone, (cu - av * off, cv + au * off), r


def _key_point(found: _Findings) -> Point:
    """Where the (first) finding sits, to keep it in the field of view."""
    if found.fractures:
        return found.fractures[0].center
    if found.lesions:
        return found.lesions[0].center
    first = found.metal[0]
    return first.point(0.5) if isinstance(first, _Capsule) else first.c


def _make_findings(an: _Anatomy, finding: str, rng: np.random.Generator) -> _Findings:
    found = _Findings()
    if finding == "fracture":
        sites = an.sites
        count = min(len(sites), 1 + int(rng.random() < 0.4))
        for i in rng.choice(len(sites), size=count, replace=False):
            site = sites[int(i)]
            fracture = _make_fracture(site, rng, displaced=True)
            found.fractures.append(fracture)
            r = max(site.capsule.radius(0.5), _MIN_FINDING_SCALE)
            au, av = site.capsule.axis()
            along = math.atan2(av, au)
            found.swelling.append(_Ellipse(fracture.center, 4.0 * r, 3.0 * r, along))
            if rng.random() < 0.8:  # subacute: fluffy callus bridging the fragments
                found.callus.append((_Ellipse(fracture.center, rng.uniform(2.0, 2.8) * r,
                                              rng.uniform(1.5, 2.0) * r, along),
                                     rng.uniform(0.8, 1.2)))
    elif finding == "lesion":
        for _ in range(2 + int(rng.integers(0, 2))):
            bone, center, r = _random_bone_point(an, rng)
            lobes = tuple(float(x) for x in rng.uniform(-0.12, 0.12, size=4))
            lytic = rng.random() < 0.65
            # lytic lesions are expansile (they bulge the cortex); blastic ones stay inside
            scale = max(r, _MIN_FINDING_SCALE)
            radius = (rng.uniform(2.0, 2.8) if lytic else rng.uniform(1.3, 1.8)) * scale
            found.lesions.append(_Lesion(bone, center, min(radius, _MAX_LESION), lytic, lobes))
    elif finding == "hardware":
        site = an.sites[int(rng.integers(len(an.sites)))]
        t = rng.uniform(site.t_min, site.t_max)
        cu, cv = site.capsule.point(t)
        au, av = site.capsule.axis()
        r = site.capsule.radius(t)
        angle = math.atan2(av, au)
        if rng.random() < 0.65:  # plate and screws
            half_length = min(rng.uniform(0.18, 0.3), 0.45 * site.capsule.length())
            side = rng.choice([-1.0, 1.0]) * r * 0.9
            pc = (cu - av * side, cv + au * side)
            found.metal.append(_Box(pc, half_length, max(0.35 * r, 0.022), angle))
            n_screws = int(rng.integers(3, 7))
            for s in np.linspace(-0.85, 0.85, n_screws):
                sc = (pc[0] + au * s * half_length, pc[1] + av * s * half_length)
                tip = (sc[0] + av * side * 2.2, sc[1] - au * side * 2.2)
                found.metal.append(_Capsule(sc, tip, max(0.14 * r, 0.009), max(0.1 * r, 0.007)))
                found.metal.append(_Ellipse(sc, max(0.3 * r, 0.02), max(0.3 * r, 0.02)))
        else:  # Kirschner wires or an intramedullary nail
            if rng.random() < 0.5:
                for _ in range(int(rng.integers(2, 4))):
                    tilt = angle + rng.uniform(-0.5, 0.5)
                    half = rng.uniform(0.25, 0.4)
                    off = rng.uniform(-0.6, 0.6) * r
                    c = (cu - av * off, cv + au * off)
                    a = (c[0] - math.cos(tilt) * half, c[1] - math.sin(tilt) * half)
                    b = (c[0] + math.cos(tilt) * half, c[1] + math.sin(tilt) * half)
                    found.metal.append(_Capsule(a, b, 0.022, 0.022))
            else:
                cap = site.capsule
                found.metal.append(_Capsule(cap.point(0.05), cap.point(0.95), 0.35 * r, 0.3 * r))
        if rng.random() < 0.5:  # the fixed fracture, not displaced
            fixed = _Site(site.bone, site.capsule, max(t - 0.05, 0.0), min(t + 0.05, 1.0))
            found.fractures.append(_make_fracture(fixed, rng, displaced=False))
    elif finding != "none":
        raise ValueError(f"finding must be 'none' or one of {FINDINGS}, got {finding!r}")
    return found


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    height: int
    width: int
    center: Point  # pixel position of the body origin (x, y)
    scale: float  # pixels per body unit
    angle: float  # in-plane rotation
    squash: float  # foreshortening of the u axis (oblique / lateral views)
    mirror: bool

    def to_body(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        u, v = _to_local(x, y, self.center, self.angle)
        u = u / (self.scale * self.squash)
        return (-u if self.mirror else u), v / self.scale

    def shows(self, point: Point, margin: float = 0.08) -> bool:
        """Whether a body-frame point lands inside the image, ``margin`` (fraction) from edges."""
        x0, y0, x1, y1 = self.pixel_box((point[0], point[1], point[0], point[1]))
        mx, my = margin * self.width, margin * self.height
        return x0 + 2 >= mx and y0 + 2 >= my and x1 - 3 <= self.width - mx and (
            y1 - 3 <= self.height - my)

    def pixel_box(self, extent: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Pixel window (x0, y0, x1, y1) covering a body-frame extent, clipped to the image."""
        u0, v0, u1, v1 = extent
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        xs, ys = [], []
        for u, v in ((u0, v0), (u0, v1), (u1, v0), (u1, v1)):
            uu = (-u if self.mirror else u) * self.scale * self.squash
            vv = v * self.scale
            xs.append(self.center[0] + uu * cos - vv * sin)
            ys.append(self.center[1] + uu * sin + vv * cos)
        x0 = max(math.floor(min(xs)) - 2, 0)
        y0 = max(math.floor(min(ys)) - 2, 0)
        x1 = min(math.ceil(max(xs)) + 3, self.width)
        y1 = min(math.ceil(max(ys)) + 3, self.height)
        return x0, y0, x1, y1


def _smooth_inside(d: FloatArray, pixel: float) -> FloatArray:
    """Anti-aliased inside mask from a signed distance (one pixel of transition)."""
    result: FloatArray = np.clip(0.5 - d / pixel, 0.0, 1.0)
    return result


def _bone_density(bone: _Bone, d: FloatArray, pixel: float, texture: FloatArray) -> FloatArray:
    inside = _smooth_inside(d, pixel)
    thickness = max(bone.cortex * _min_radius(bone), 1.5 * pixel)
    rim = np.exp(np.minimum(d, 0.0) / thickness)
    medulla = 0.45 * (1.0 + 0.12 * texture)
    result: FloatArray = bone.density * inside * (medulla + (1.0 - medulla) * rim)
    return result


def _min_radius(bone: _Bone) -> float:
    radii = []
    for p in bone.prims:
        if isinstance(p, _Capsule):
            radii.append(min(p.r1, p.r2))
        elif isinstance(p, _Ellipse):
            radii.append(min(p.ru, p.rv))
        else:
            radii.append(min(p.half_u, p.half_v))
    return min(radii)


def _fractured_sdf(bone: _Bone, fractures: Sequence[_Fracture], u: FloatArray, v: FloatArray,
                   pixel: float) -> tuple[FloatArray, FloatArray]:
    """SDF of a bone with its fragments displaced, and a multiplicative gap mask."""
    d = _union_sdf(bone.prims, u, v)
    keep = np.ones_like(u)
    for fr in fractures:
        cu, cv = fr.center
        nu, nv = fr.normal
        along = (u - cu) * nu + (v - cv) * nv
        across = -(u - cu) * nv + (v - cv) * nu
        side = along + fr.jag * np.sin(fr.jag_freq * across + fr.phase)
        if fr.shift != (0.0, 0.0) or fr.angle != 0.0:
            cos, sin = math.cos(-fr.angle), math.sin(-fr.angle)
            pu, pv = u - cu - fr.shift[0], v - cv - fr.shift[1]
            du = cu + pu * cos - pv * sin
            dv = cv + pu * sin + pv * cos
            d = np.where(side > 0, _union_sdf(bone.prims, du, dv), d)
        gap = np.clip((np.abs(side) - fr.gap / 2) / pixel + 0.5, 0.0, 1.0)
        keep = keep * (0.08 + 0.92 * gap)
    return d, keep


def _apply_lesions(lesions: Sequence[_Lesion], d: FloatArray, u: FloatArray, v: FloatArray,
                   pixel: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Bone SDF bulged by expansile lytic lesions, a density multiplier and an additive density.

    A lytic lesion joins the bone outline (so the cortical rim follows the bulge), empties its
    interior and has a sclerotic margin; a blastic lesion adds a dense blob inside the bone.
    """
    mult = np.ones_like(u)
    add = np.zeros_like(u)
    for les in lesions:
        du, dv = u - les.center[0], v - les.center[1]
        theta = np.arctan2(dv, du)
        wobble = 1.0 + sum(a * np.sin((i + 2) * theta + i) for i, a in enumerate(les.lobes))
        dl = np.hypot(du, dv) - les.radius * wobble
        if les.lytic:
            d = np.minimum(d, dl)
            shell = max(0.2 * les.radius, 1.5 * pixel)
            mult *= 1.0 - 0.92 * _smooth_inside(dl + shell, pixel)
            add += 0.8 * np.exp(-(((dl + shell) / shell) ** 2))  # sclerotic margin
        else:
            add += 2.5 * _smooth_inside(dl, pixel)
    return d, mult, add


def _render_view(an: _Anatomy, found: _Findings, view: _View, rng: np.random.Generator,
                 config: PhantomConfig) -> NDArray[np.float32]:
    h, w = view.height, view.width
    pixel = 1.0 / view.scale  # body units per pixel
    density = np.zeros((h, w))
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=rng.uniform(1.0, 2.0))
    texture /= texture.std() + 1e-9

    def window(extent: tuple[float, float, float, float]) -> tuple[
            tuple[slice, slice], FloatArray, FloatArray] | None:
        x0, y0, x1, y1 = view.pixel_box(extent)
        if x1 <= x0 or y1 <= y0:
            return None
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u, v = view.to_body(xs, ys)
        return (slice(y0, y1), slice(x0, x1)), u, v

    # soft tissue, thicker where a fracture made it swell
    win = window(_union_extent(an.tissue))
    if win is not None:
        sl, u, v = win
        d = _union_sdf(an.tissue, u, v)
        soft = np.clip(0.5 - d / (4.0 * pixel), 0.0, 1.0) * np.sqrt(np.clip(-d / 0.2 + 0.3, 0, 1))
        density[sl] += _TISSUE_DENSITY * soft
    for swelling in found.swelling:
        win = window(swelling.extent())
        if win is not None:
            sl, u, v = win
            depth = -swelling.sdf(u, v) / min(swelling.ru, swelling.rv)
            density[sl] += 0.6 * _TISSUE_DENSITY * np.clip(depth, 0.0, 1.0)

    for index, bone in enumerate(an.bones):
        fractures = [f for f in found.fractures if f.bone == index]
        lesions = [les for les in found.lesions if les.bone == index]
        extent = _union_extent(bone.prims)
        # displaced fragments and expansile lesions can leave the bone's own extent
        pad = max([math.hypot(*f.shift) + 0.3 for f in fractures]
                  + [les.radius for les in lesions], default=0.0)
        extent = (extent[0] - pad, extent[1] - pad, extent[2] + pad, extent[3] + pad)
        win = window(extent)
        if win is None:
            continue
        sl, u, v = win
        if fractures:
            d, keep = _fractured_sdf(bone, fractures, u, v, pixel)
        else:
            d, keep = _union_sdf(bone.prims, u, v), np.ones_like(u)
        if lesions:
            d, mult, add = _apply_lesions(lesions, d, u, v, pixel)
            bone_d = _bone_density(bone, d, pixel, texture[sl]) * mult
            bone_d = (bone_d + add * _smooth_inside(d, pixel)) * keep
        else:
            bone_d = _bone_density(bone, d, pixel, texture[sl]) * keep
        density[sl] += bone_d

    for callus, callus_density in found.callus:
        win = window(callus.extent())
        if win is not None:
            sl, u, v = win
            depth = np.clip(-callus.sdf(u, v) / (0.5 * min(callus.ru, callus.rv)), 0.0, 1.0)
            density[sl] += callus_density * depth * (1.0 + 0.4 * texture[sl])

    for prim in found.metal:
        win = window(prim.extent())
        if win is not None:
            sl, u, v = win
            density[sl] += _METAL_DENSITY * _smooth_inside(prim.sdf(u, v), pixel)

    # image formation: Beer-Lambert, exposure, blur, noise, artefacts
    mu = rng.uniform(0.6, 1.0)
    image = 1.0 - np.exp(-mu * density)
    yy, xx = np.mgrid[0:h, 0:w]
    heel = rng.uniform(-0.12, 0.12) * ((yy / h - 0.5) * math.cos(view.angle) + (xx / w - 0.5))
    image = np.clip(image * (1.0 + heel), 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    image = rng.uniform(0.0, 0.1) + rng.uniform(0.85, 1.0) * image
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.3, 1.1))
    image += rng.normal(0.0, rng.uniform(0.004, 0.015), size=image.shape)
    if rng.random() < config.artifact_probability:  # collimation border
        m = [int(rng.integers(0, max(s // 10, 1))) for s in (h, w, h, w)]
        border = np.ones((h, w), dtype=bool)
        border[m[0] : h - m[2], m[1] : w - m[3]] = False
        image[border] = rng.uniform(0.5, 0.85)
    if rng.random() < config.artifact_probability:  # side marker ("L")
        size = max(min(h, w) // 14, 6)
        y0 = int(rng.integers(2, max(h // 6, 3)))
        left = int(rng.integers(2, max(w // 6, 3)))
        x0 = left if rng.random() < 0.5 else w - 2 * size
        image[y0 : y0 + 2 * size, x0 : x0 + max(size // 3, 2)] = 0.95
        image[y0 + 2 * size - max(size // 3, 2) : y0 + 2 * size, x0 : x0 + size] = 0.95
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _random_view(bone: str, rng: np.random.Generator, config: PhantomConfig) -> _View:
    a = int(rng.integers(config.min_size, config.max_size + 1))
    b = int(rng.integers(config.min_size, config.max_size + 1))
    tall = _TALL.get(bone)
    if tall is None:
        h, w = a, b
        scale = 0.5 * min(h, w) * rng.uniform(0.75, 0.95)
    else:  # long bones lie along a tall detector
        h = max(a, b)
        w = max(int(h / tall * rng.uniform(0.9, 1.1)), config.min_size // 2)
        scale = 0.5 * h * rng.uniform(0.8, 0.92)
    zoom, (fu, fv) = _FRAME.get(bone, (1.0, (0.0, 0.0)))
    scale *= zoom
    angle = math.radians(rng.uniform(-25.0, 25.0))
    squash = 1.0 if rng.random() < 0.5 else rng.uniform(0.65, 0.95)
    mirror = bool(rng.random() < 0.5)
    # pixel position of the body origin, so that the framing point lands near the centre
    ou, ov = (fu if not mirror else -fu) * scale * squash, fv * scale
    cos, sin = math.cos(angle), math.sin(angle)
    center = (
        w / 2 + rng.uniform(-0.08, 0.08) * w - (ou * cos - ov * sin),
        h / 2 + rng.uniform(-0.08, 0.08) * h - (ou * sin + ov * cos),
    )
    return _View(h, w, center, scale, angle, squash, mirror)


def render_study(
    bone: str,
    abnormal: bool,
    seed: int | Sequence[int] | np.random.SeedSequence,
    *,
    n_images: int | None = None,
    config: PhantomConfig | None = None,
) -> PhantomStudy:
    """Render one phantom study; pure and deterministic for a given seed.

    Parameters
    ----------
    bone : str
        Bone type, one of :data:`~models.results.BONE_TYPES`.
    abnormal : bool
        Whether the study shows a finding (in every image).
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the study. Anatomy, finding and views draw from separate streams, so the
        normal and abnormal renderings of one seed differ only by the finding.
    n_images : int, optional
        Number of images (views); drawn from ``config.images_per_study`` when not given.
    config : PhantomConfig, optional
        Appearance parameters.

    Returns
    -------
    PhantomStudy
        The study's float32 images in [0, 1] (1 = bright bone), label and finding kind.
    """
    if bone not in BONE_TYPES:
        raise ValueError(f"bone must be one of {BONE_TYPES}, got {bone!r}")
    config = config or PhantomConfig()
    base = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    words = [int(w) for w in base.generate_state(4)]
    anatomy_rng, finding_rng, view_rng = (np.random.default_rng([*words, k]) for k in range(3))
    if n_images is None:
        probs = np.asarray(config.images_per_study)
        n_images = 1 + int(view_rng.choice(len(probs), p=probs / probs.sum()))
    elif n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    anatomy = _ANATOMY[bone](anatomy_rng)
    # the finding is drawn (and frames the views) whatever the label, so that a study's normal
    # and abnormal renderings differ only by it
    kind = str(finding_rng.choice(config.findings))
    candidate = _make_findings(anatomy, kind, finding_rng)
    finding, found = (kind, candidate) if abnormal else ("none", _Findings())
    images = []
    for _ in range(n_images):
        view = _random_view(bone, view_rng, config)
        for _ in range(_VIEW_TRIES):
            if view.shows(_key_point(candidate)):
                break
            view = _random_view(bone, view_rng, config)
        images.append(_render_view(anatomy, found, view, view_rng, config))
    return PhantomStudy(bone=bone, abnormal=abnormal, finding=finding, images=tuple(images))


# --------------------------------------------------------------------------------------------
# Writing the MURA-v1.1 layout
# --------------------------------------------------------------------------------------------


def split_sizes(studies: int, valid_fraction: float) -> tuple[int, int]:
    """Number of (train, valid) studies per bone type; see the module docstring."""
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    n_valid = max(1, math.ceil(studies * valid_fraction))
    if studies >= 2:
        n_valid = min(n_valid, studies - 1)
    else:
        n_valid = 0
    return studies - n_valid, n_valid


@dataclass(frozen=True)
class _StudyJob:
    rel_dir: str  # e.g. "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive"
    bone: str
    abnormal: bool
    seed: tuple[int, ...]


def _plan(studies: int, seed: int, valid_fraction: float,
          abnormal_fraction: float) -> list[tuple[str, list[_StudyJob]]]:
    """Patients, studies and labels of both splits (deterministic, no rendering)."""
    rng = np.random.default_rng([seed, 0])
    n_train, n_valid = split_sizes(studies, valid_fraction)
    plan: list[tuple[str, list[_StudyJob]]] = []
    patient = 0
    for split_index, (split, count) in enumerate(zip(SPLITS, (n_train, n_valid), strict=True)):
        jobs: list[_StudyJob] = []
        for bone_index, bone in enumerate(BONE_TYPES):
            n_abnormal = round(count * abnormal_fraction)
            labels = rng.permutation(np.array([1] * n_abnormal + [0] * (count - n_abnormal)))
            i = 0
            while i < count:
                patient += 1
                n_studies = 2 if (count - i >= 2 and rng.random() < 0.25) else 1
                for k in range(1, n_studies + 1):
                    abnormal = bool(labels[i])
                    name = f"study{k}_{'positive' if abnormal else 'negative'}"
                    rel = f"{DATASET_DIRNAME}/{split}/XR_{bone}/patient{patient:05d}/{name}"
                    jobs.append(_StudyJob(rel, bone, abnormal, (seed, bone_index, split_index, i)))
                    i += 1
        plan.append((split, jobs))
    if patient > 99999:
        raise ValueError(f"studies={studies} needs {patient} patients; at most 99999 fit 5 digits")
    return plan


def _write_study(job: _StudyJob, base: Path, config: PhantomConfig) -> tuple[list[str], str]:
    """Render and write one study; returns its image paths (CSV form) and finding kind."""
    study = render_study(job.bone, job.abnormal, job.seed, config=config)
    directory = base / job.rel_dir
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, image in enumerate(study.images, start=1):
        pixels = np.round(image * 255.0).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(directory / f"image{n}.png", compress_level=3)
        paths.append(f"{job.rel_dir}/image{n}.png")
    return paths, study.finding


def write_phantom(
    out: Path,
    studies: int,
    seed: int,
    *,
    valid_fraction: float = 0.25,
    abnormal_fraction: float = 0.5,
    config: PhantomConfig | None = None,
    workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """Render a phantom dataset in the MURA-v1.1 layout under ``out``.

    Parameters
    ----------
    out : Path
        Directory that receives ``MURA-v1.1/``; created when missing.
    studies : int
        Studies per bone type, train and valid together (split by :func:`split_sizes`).
    seed : int
        Seed; the same seed and options give byte-identical files.
    valid_fraction : float
        Share of each bone type's studies that go to the validation split.
    abnormal_fraction : float
        Share of abnormal (positive) studies within each split and bone type.
    config : PhantomConfig, optional
        Appearance parameters.
    workers : int
        Worker processes for rendering (0 renders in this process).
    overwrite : bool
        Replace an existing ``out/MURA-v1.1`` (otherwise a non-empty one is an error).

    Returns
    -------
    Path
        The ``MURA-v1.1`` directory.

    Notes
    -----
    Besides the MURA layout, ``out/phantom_findings.csv`` (outside ``MURA-v1.1/``) lists each
    study directory with its finding kind, for per-finding analysis.
    """
    if not 0.0 <= abnormal_fraction <= 1.0:
        raise ValueError(f"abnormal_fraction must be in [0, 1], got {abnormal_fraction}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    config = config or PhantomConfig()
    out = Path(out)
    root = out / DATASET_DIRNAME
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(f"out already holds a non-empty {DATASET_DIRNAME}: {root} "
                             "(use overwrite)")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = _plan(studies, seed, valid_fraction, abnormal_fraction)
    findings: list[tuple[str, str]] = []
    for split, jobs in plan:
        if workers > 0:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                written = list(pool.map(_write_study, jobs, [out] * len(jobs),
                                        [config] * len(jobs), chunksize=4))
        else:
            written = [_write_study(job, out, config) for job in jobs]
        image_paths = [paths for paths, _ in written]
        findings += [(f"{job.rel_dir}/", finding) for job, (_, finding) in zip(jobs, written,
                                                                               strict=True)]
        with open(root / f"{split}_image_paths.csv", "w", newline="") as f:
            for paths in image_paths:
                f.writelines(f"{p}\n" for p in paths)
        with open(root / f"{split}_labeled_studies.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            for job in jobs:
                writer.writerow([f"{job.rel_dir}/", int(job.abnormal)])
        logger.info("phantom %s: %d studies, %d images", split, len(jobs),
                    sum(len(p) for p in image_paths))
    with open(out / FINDINGS_CSV, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(findings)
    return root


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa phantom``."""
    parser = argparse.ArgumentParser(
        description="Write a procedural radiograph phantom in the MURA-v1.1 layout.",
        add_help=add_help,
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="directory that receives MURA-v1.1/")
    parser.add_argument("--studies", type=int, default=60,
                        help="studies per bone type, train + valid (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--valid-fraction", type=float, default=0.25,
                        help="share of each bone type's studies in valid (default: 0.25)")
    parser.add_argument("--abnormal-fraction", type=float, default=0.5,
                        help="share of abnormal studies per split and bone type (default: 0.5)")
    parser.add_argument("--min-size", type=int, default=200, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=400, help="largest image side (px)")
    parser.add_argument("--findings", nargs="+", choices=FINDINGS, default=list(FINDINGS),
                        help="kinds of finding in abnormal studies (default: all)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: os.cpu_count(); 0 = in-process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing MURA-v1.1 directory under --out")
    return parser


def main(args: argparse.Namespace) -> int:
    """Write the phantom described by ``args``; returns the exit code."""
    config = PhantomConfig(min_size=args.min_size, max_size=args.max_size,
                           findings=tuple(args.findings))
    root = write_phantom(
        args.out, args.studies, args.seed, valid_fraction=args.valid_fraction,
        abnormal_fraction=args.abnormal_fraction, config=config,
        workers=(os.cpu_count() or 1) if args.workers is None else args.workers,
        overwrite=args.overwrite,
    )
    logger.info("phantom written to %s", root)
    return 0
