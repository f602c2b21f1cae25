"""Signed-distance primitives and the anatomy container of the phantom.

Body frame: u to the right, v downwards, anatomy within about [-1, 1]. Primitives are
vectorized over numpy coordinate arrays; a bone is a union of primitives with a cortical rim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Point = tuple[float, float]

BONE_DENSITY = 1.0

@dataclass(frozen=True)
class Capsule:
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


def to_local(u: FloatArray, v: FloatArray, c: Point,
              angle: float) -> tuple[FloatArray, FloatArray]:
    """Body coordinates in the frame centred on ``c`` and rotated by ``angle``."""
    cos, sin = math.cos(angle), math.sin(angle)
    return (u - c[0]) * cos + (v - c[1]) * sin, -(u - c[0]) * sin + (v - c[1]) * cos


@dataclass(frozen=True)
class Ellipse:
    c: Point
    ru: float
    rv: float
    angle: float = 0.0

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        x, y = to_local(u, v, self.c, self.angle)
        k: FloatArray = np.hypot(x / self.ru, y / self.rv)
        return (k - 1.0) * min(self.ru, self.rv)

    def extent(self) -> tuple[float, float, float, float]:
        r = max(self.ru, self.rv)
        return (self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r)


@dataclass(frozen=True)
class Box:
    c: Point
    half_u: float
    half_v: float
    angle: float = 0.0

    def sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        x, y = to_local(u, v, self.c, self.angle)
        x = np.abs(x) - self.half_u
        y = np.abs(y) - self.half_v
        outside = np.hypot(np.maximum(x, 0.0), np.maximum(y, 0.0))
        result: FloatArray = outside + np.minimum(np.maximum(x, y), 0.0)
        return result

    def extent(self) -> tuple[float, float, float, float]:
        r = math.hypot(self.half_u, self.half_v)
        return (self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r)


Primitive = Capsule | Ellipse | Box


def union_sdf(prims: Sequence[Primitive], u: FloatArray, v: FloatArray) -> FloatArray:
    result = prims[0].sdf(u, v)
    for prim in prims[1:]:
        result = np.minimum(result, prim.sdf(u, v))
    return result


def union_extent(prims: Sequence[Primitive]) -> tuple[float, float, float, float]:
    boxes = [p.extent() for p in prims]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


@dataclass(frozen=True)
class Site:
    """A long-bone segment where a fracture or hardware may sit (t range along the capsule)."""

    bone: int
    capsule: Capsule
    t_min: float = 0.25
    t_max: float = 0.75


@dataclass
class Bone:
    prims: list[Primitive]
    density: float = BONE_DENSITY
    cortex: float = 0.3  # cortical thickness relative to the smallest radius


@dataclass
class Anatomy:
    bones: list[Bone] = field(default_factory=list)
    tissue: list[Primitive] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)

    def add(self, prims: Sequence[Primitive], *, density: float = BONE_DENSITY,
            sites: Sequence[tuple[int, float, float]] = (), cortex: float = 0.3) -> int:
        """Add a bone; ``sites`` are (primitive index, t_min, t_max) of fracturable capsules.

        ``cortex`` is the cortical thickness relative to the bone's smallest radius (thin for
        plates such as the skull vault or the iliac wings).
        """
        index = len(self.bones)
        self.bones.append(Bone(list(prims), density=density, cortex=cortex))
        for prim_index, t_min, t_max in sites:
            capsule = prims[prim_index]
            assert isinstance(capsule, Capsule)
            self.sites.append(Site(index, capsule, t_min, t_max))
        return index


def long_bone(a: Point, b: Point, r1: float, r2: float, *, flare_a: float = 1.5,
               flare_b: float = 1.5) -> list[Primitive]:
    """A shaft with flared (epiphyseal) ends; primitive 0 is the shaft capsule."""
    shaft = Capsule(a, b, r1, r2)
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    prims: list[Primitive] = [shaft]
    if flare_a > 0:
        prims.append(Ellipse(a, r1 * 0.9, r1 * flare_a, angle))
    if flare_b > 0:
        prims.append(Ellipse(b, r2 * 0.9, r2 * flare_b, angle))
    return prims


def along(origin: Point, angle: float, length: float) -> Point:
    """Point ``length`` away from ``origin`` in direction ``angle`` (0 = up, radians clockwise)."""
    return (origin[0] + length * math.sin(angle), origin[1] - length * math.cos(angle))
