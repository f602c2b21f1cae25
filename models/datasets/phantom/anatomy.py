"""Anatomy builders: one random anatomy per MURA bone type (body frame of :mod:`.geometry`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from models.datasets.phantom.geometry import Anatomy, Capsule, Ellipse, Point, along, long_bone


def _humerus(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    r = 0.085 * k
    top, bottom = (0.0, -0.78), (rng.uniform(-0.05, 0.05), 0.78)
    shaft = Capsule(top, bottom, r * 1.1, r * 0.95)
    an.add(
        [
            shaft,
            Ellipse((0.06, -0.86), 0.21 * k, 0.19 * k),  # head
            Ellipse((-0.13, -0.8), 0.08 * k, 0.09 * k),  # greater tubercle
            Ellipse((bottom[0], 0.86), 0.24 * k, 0.08 * k),  # condyles
            Ellipse((bottom[0] - 0.2 * k, 0.8), 0.06, 0.06),  # epicondyle
        ],
        sites=[(0, 0.15, 0.85)],
    )
    an.add([Ellipse((0.36, -0.88), 0.05, 0.16, 0.2)], density=0.8)  # glenoid
    an.add(long_bone((bottom[0] - 0.08, 0.98), (bottom[0] - 0.1, 1.5), 0.05, 0.05, flare_b=0))
    an.add(long_bone((bottom[0] + 0.08, 0.95), (bottom[0] + 0.07, 1.5), 0.06, 0.05, flare_b=0))
    an.tissue += [Capsule((0.0, -1.4), (0.0, 1.5), 0.3 * k, 0.26 * k)]
    return an


def _forearm(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    gap = rng.uniform(0.09, 0.14)
    cross = rng.uniform(-0.04, 0.06)  # pronation brings the radius across the ulna
    radius = Capsule((-gap, -0.82), (-gap - cross, 0.82), 0.055 * k, 0.075 * k)
    ulna = Capsule((gap, -0.84), (gap - 0.02, 0.84), 0.075 * k, 0.05 * k)
    an.add(
        [radius, Ellipse((-gap, -0.88), 0.08 * k, 0.045 * k),
         Ellipse((-gap - cross - 0.01, 0.9), 0.12 * k, 0.06 * k)],
        sites=[(0, 0.2, 0.8)],
    )
    an.add(
        [ulna, Ellipse((gap + 0.01, -0.92), 0.09 * k, 0.1 * k),
         Ellipse((gap - 0.02, 0.89), 0.06 * k, 0.05 * k)],
        sites=[(0, 0.2, 0.8)],
    )
    an.add([Ellipse((-0.02, -1.1), 0.28 * k, 0.08 * k)])  # distal humerus, mostly cropped
    for i in range(3):  # proximal carpal row, mostly cropped
        an.add([Ellipse((-0.14 + 0.12 * i, 1.06), 0.055, 0.045)], density=0.9)
    an.tissue += [Capsule((0.0, -1.4), (0.0, 1.4), 0.36 * k, 0.3 * k)]
    return an


def _elbow(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    flex = math.radians(rng.uniform(40.0, 110.0)) * rng.choice([-1.0, 1.0])
    down = math.pi + flex  # forearm direction (0 = up)
    humerus_top = (rng.uniform(-0.05, 0.05), -1.4)
    an.add(
        [
            Capsule(humerus_top, (0.0, -0.12), 0.1 * k, 0.12 * k),
            Ellipse((0.0, -0.07), 0.27 * k, 0.1 * k),
            Ellipse((-0.26 * k, -0.12), 0.06, 0.06),
            Ellipse((0.26 * k, -0.12), 0.05, 0.05),
        ],
        sites=[(0, 0.45, 0.8)],
    )
    r_start, u_start = (-0.1 * k, 0.08), (0.08 * k, 0.05)
    radius = Capsule(r_start, along(r_start, down, 1.3), 0.05 * k, 0.06 * k)
    ulna = Capsule(u_start, along(u_start, down, 1.3), 0.075 * k, 0.055 * k)
    an.add(
        [radius, Ellipse(r_start, 0.085 * k, 0.045 * k, down - math.pi / 2)],
        sites=[(0, 0.25, 0.6)],
    )
    an.add(
        [ulna, Ellipse(along(u_start, down, -0.08), 0.09 * k, 0.11 * k, down)],
        sites=[(0, 0.25, 0.6)],
    )
    an.tissue += [
        Capsule(humerus_top, (0.0, 0.0), 0.4 * k, 0.42 * k),
        Capsule((0.0, 0.0), along((0.0, 0.0), down, 1.4), 0.42 * k, 0.34 * k),
    ]
    return an


def _carpals(an: Anatomy, center: Point, k: float, density: float = 0.95) -> None:
    cu, cv = center
    for i, du in enumerate((-0.2, -0.07, 0.06, 0.18)):  # proximal row
        an.add([Ellipse((cu + du * k, cv + 0.1 * k), 0.07 * k, 0.06 * k, 0.3 * i)],
               density=density)
    for i, du in enumerate((-0.19, -0.07, 0.05, 0.16)):  # distal row
        an.add([Ellipse((cu + du * k, cv - 0.06 * k), 0.06 * k, 0.065 * k, -0.2 * i)],
               density=density)


def _digit(an: Anatomy, base: Point, angle: float, lengths: Sequence[float],
           radius: float, bend: float, sites: int = 99) -> Point:
    """Chain of bones from ``base`` along ``angle`` bending ``bend`` per joint; returns the tip.

    The first ``sites`` bones of the chain may carry a fracture or hardware.
    """
    point, r = base, radius
    for i, length in enumerate(lengths):
        start = along(point, angle, 0.025)
        end = along(start, angle, length)
        prims = long_bone(start, end, r, r * 0.85, flare_a=1.4, flare_b=1.2)
        an.add(prims, sites=[(0, 0.3, 0.7)] if i < sites else [])
        point, r, angle = end, r * 0.85, angle + bend
    return point


def _wrist(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    an.add(
        [Capsule((-0.16, 1.5), (-0.17, 0.36), 0.1 * k, 0.12 * k),
         Ellipse((-0.15, 0.3), 0.2 * k, 0.085 * k, rng.uniform(-0.15, 0.15))],
        sites=[(0, 0.6, 0.92)],
    )
    an.add(
        [Capsule((0.18, 1.5), (0.17, 0.42), 0.07 * k, 0.075 * k),
         Ellipse((0.17, 0.4), 0.08 * k, 0.07 * k), Ellipse((0.22, 0.33), 0.025, 0.04)],
        sites=[(0, 0.6, 0.9)],
    )
    _carpals(an, (0.0, 0.08), k)
    for i, du in enumerate((-0.16, -0.05, 0.06, 0.17)):
        base = (du * k, -0.17)
        _digit(an, base, math.radians(-9 + 6 * i), [0.75], 0.045 * k, 0.0)
    _digit(an, (-0.26 * k, -0.05), math.radians(-38), [0.4, 0.3], 0.05 * k, 0.15)
    an.tissue += [
        Capsule((0.0, 1.6), (0.0, 0.1), 0.34 * k, 0.4 * k),
        Ellipse((0.0, -0.55), 0.45 * k, 0.6),
        Capsule((-0.3, -0.1), along((-0.3, -0.1), math.radians(-38), 0.7), 0.14, 0.1),
    ]
    return an


def _hand(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.85, 1.0)
    spread = rng.uniform(0.6, 1.2)
    an.add([Capsule((-0.14, 1.6), (-0.15, 0.98), 0.09 * k, 0.1 * k),
            Ellipse((-0.14, 0.95), 0.16 * k, 0.06 * k)])
    an.add([Capsule((0.15, 1.6), (0.14, 1.0), 0.06 * k, 0.06 * k),
            Ellipse((0.14, 0.98), 0.065 * k, 0.055 * k)])
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
    an.tissue += [Capsule(base, tip, 0.08, 0.07) for base, tip in tips]
    an.tissue += [Ellipse((0.0, 0.4), 0.38 * k, 0.42),
                  Capsule((0.0, 1.6), (0.0, 0.8), 0.33, 0.36)]
    return an


def _finger(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    bend = math.radians(rng.uniform(-18, 18))
    an.add(
        [Capsule((0.0, 1.6), (0.0, 0.9), 0.1 * k, 0.1 * k),
         Ellipse((0.0, 0.86), 0.12 * k, 0.1 * k)],
        sites=[(0, 0.4, 0.8)],
    )
    tip = _digit(an, (0.0, 0.8), 0.0, [0.6 * k, 0.42 * k, 0.3 * k], 0.09 * k, bend)
    an.add([Ellipse(tip, 0.08 * k, 0.045 * k)])  # distal tuft
    an.tissue += [Capsule((0.0, 1.7), (0.0, 0.8), 0.22 * k, 0.2 * k),
                  Capsule((0.0, 0.8), tip, 0.2 * k, 0.16 * k)]
    for side in (-1.0, 1.0):  # neighbouring fingers, partly in frame
        if rng.random() < 0.5:
            base = (side * 0.55, 0.9)
            neighbour_tip = _digit(an, base, side * math.radians(8), [0.55, 0.38], 0.08 * k, bend,
                                   sites=0)
            an.tissue.append(Capsule(base, neighbour_tip, 0.18, 0.16))
    return an


def _shoulder(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    head = (0.1, 0.0)
    shaft_end = (0.25 + rng.uniform(-0.05, 0.05), 1.5)
    an.add(
        [
            Ellipse(head, 0.3 * k, 0.29 * k),
            Capsule((0.15, 0.15), shaft_end, 0.16 * k, 0.13 * k),
            Ellipse((0.36, 0.02), 0.1 * k, 0.13 * k),  # greater tubercle
        ],
        sites=[(1, 0.3, 0.7)],
    )
    an.add([Ellipse((-0.26, 0.02), 0.06, 0.21 * k, 0.1)], density=1.1)  # glenoid
    an.add([Ellipse((-0.72, 0.35), 0.38, 0.55, 0.35),  # scapular body
            Capsule((-0.3, 0.1), (-0.8, 1.1), 0.09, 0.07)], density=0.45)
    an.add([Capsule((-0.25, -0.42), (0.28, -0.38), 0.065, 0.05)])  # acromion
    an.add([Capsule((-0.28, -0.2), (-0.05, -0.24), 0.045, 0.035)])  # coracoid
    clavicle = Capsule((0.05, -0.52), (-1.4, -0.78 + rng.uniform(-0.08, 0.08)), 0.065, 0.08)
    an.add([clavicle], sites=[(0, 0.25, 0.6)])
    for i in range(3):  # ribs, faint
        y = -0.1 + 0.45 * i
        an.add([Capsule((-1.5, y + 0.2), (-0.7, y - 0.1), 0.035, 0.035)], density=0.5)
    an.tissue += [Ellipse((-0.2, 0.35), 1.3, 1.2), Capsule((0.2, 0.3), shaft_end, 0.4, 0.35)]
    return an


ANATOMY: dict[str, Callable[[np.random.Generator], Anatomy]] = {
    "ELBOW": _elbow,
    "FINGER": _finger,
    "FOREARM": _forearm,
    "HAND": _hand,
    "HUMERUS": _humerus,
    "SHOULDER": _shoulder,
    "WRIST": _wrist,
}
