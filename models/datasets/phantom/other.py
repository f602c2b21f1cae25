"""Out-of-scope anatomy (class ``OTHER``): radiographs a MURA model should not assess.

Each kind is named by its DICOM Body Part Examined defined term (PS3.16 Annex L) and has its own
recognisable geometry, in the body frame of :mod:`.geometry` (u to the right, v downwards,
anatomy within about [-1, 1]; trunk anatomy is drawn at a smaller scale than a limb, so bones
look thinner and more numerous than in the seven MURA classes):

- ``CHEST``: rib cage (posterior and faint anterior ribs), thoracic spine, clavicles, dark lung
  fields between the mediastinum, the heart shadow and the chest wall, diaphragm domes;
- ``PELVIS``: iliac wings, sacrum, pubic and ischial rami around the obturator foramina,
  femoral heads, necks, trochanters and proximal shafts;
- ``KNEE``: distal femur with condyles, patella, tibial plateau and shaft, fibula (leg);
- ``SKULL``: thin-walled vault, orbits, nasal septum, mandible, teeth, upper cervical spine;
- ``SPINE``: a column of vertebral bodies with pedicles, spinous and transverse processes;
- ``ABDOMEN``: lumbar spine inside a large soft-tissue field, lower ribs and the pelvic brim.

No kind has a fracture site: OTHER studies never carry a finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np

from models.datasets.phantom.geometry import Anatomy, Box, Capsule, Ellipse, Point, Primitive

#: The phantom's out-of-scope class (not assessed in
#: :data:`~models.serving.taxonomy.MURA_TAXONOMY`).
OTHER_CLASS = "OTHER"
#: Kinds of out-of-scope anatomy, as DICOM Body Part Examined defined terms.
OTHER_KINDS: tuple[str, ...] = ("CHEST", "PELVIS", "KNEE", "SKULL", "SPINE", "ABDOMEN")


def _vertebrae(an: Anatomy, top: float, bottom: float, count: int, width: float, *,
               curve: float = 0.0, processes: bool = True, density: float = 1.0) -> None:
    """``count`` vertebrae from ``v = top`` to ``bottom``, bodies ``width`` wide (half-width).

    ``curve`` bends the column sideways (scoliosis-like); ``processes`` adds pedicles, spinous
    and transverse processes (the AP view's "owl eyes" and wings).
    """
    step = (bottom - top) / max(count - 1, 1)
    height = 0.36 * step
    for i in range(count):
        v = top + i * step
        u = curve * math.sin(math.pi * i / max(count - 1, 1))
        an.add([Box((u, v), width, height)], density=density, cortex=0.35)
        if processes:
            for side in (-1.0, 1.0):
                an.add([Ellipse((u + side * 0.55 * width, v - 0.2 * height), 0.18 * width,
                                0.5 * height)], density=0.7 * density, cortex=0.4)
                an.add([Capsule((u + side * width, v), (u + side * 1.7 * width, v - 0.15 * height),
                                0.16 * width, 0.12 * width)], density=0.6 * density)
            an.add([Ellipse((u, v + 0.45 * height), 0.12 * width, 0.55 * height)],
                   density=0.6 * density)


def _chest(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.05)
    _vertebrae(an, -1.05, 1.0, 12, 0.07 * k, processes=False, density=0.8)
    n_ribs = 10
    for i in range(n_ribs):
        v = -0.78 + 0.19 * i * k
        reach = min(0.55 + 0.06 * i, 0.9) * k
        for side in (-1.0, 1.0):
            posterior: list[Primitive] = [
                Capsule((side * 0.07, v), (side * 0.45 * reach, v - 0.07), 0.028, 0.026),
                Capsule((side * 0.45 * reach, v - 0.07), (side * 0.9 * reach, v + 0.05),
                        0.026, 0.024),
                Capsule((side * 0.9 * reach, v + 0.05), (side * reach, v + 0.3), 0.024, 0.022),
            ]
            an.add(posterior, density=0.9, cortex=0.45)
            if i < 7:  # anterior ribs, faint, running down towards the sternum
                an.add([Capsule((side * reach, v + 0.3), (side * 0.25, v + 0.52), 0.022, 0.02)],
                       density=0.4, cortex=0.5)
    for side in (-1.0, 1.0):  # clavicles
        an.add([Capsule((side * 0.08, -0.88), (side * 0.75 * k, -1.02 + rng.uniform(-0.04, 0.04)),
                        0.04, 0.035)], density=1.0)
    heart = (rng.uniform(0.05, 0.15), 0.45)
    an.tissue += [
        Box((0.0, -0.35), 0.14, 0.65),  # mediastinum
        Ellipse(heart, 0.36 * k, 0.32 * k, -0.3),
        Ellipse((-0.45, 1.15), 0.55, 0.3),  # diaphragm domes and the abdomen below
        Ellipse((0.45, 1.2), 0.55, 0.3),
        Box((0.0, 1.45), 1.1, 0.15),
        Capsule((-1.0, -0.9), (-1.05, 1.2), 0.14, 0.16),  # chest walls
        Capsule((1.0, -0.9), (1.05, 1.2), 0.14, 0.16),
        Capsule((-1.1, -1.05), (1.1, -1.05), 0.14, 0.14),  # shoulders, neck
        Capsule((0.0, -1.6), (0.0, -1.0), 0.25, 0.25),
    ]
    return an


def _pelvis(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.05)
    _vertebrae(an, -1.1, -0.62, 2, 0.16 * k)  # L4, L5
    an.add([Ellipse((0.0, -0.22), 0.19 * k, 0.3 * k)], density=0.8, cortex=0.15)  # sacrum
    for side in (-1.0, 1.0):
        an.add([Ellipse((side * 0.5 * k, -0.35), 0.42 * k, 0.33 * k, side * 0.35)],
               density=0.55, cortex=0.12)  # iliac wing
        acetabulum: Point = (side * 0.52 * k, 0.12)
        an.add([Capsule(acetabulum, (side * 0.08, 0.42), 0.06, 0.05),  # superior ramus
                Capsule((side * 0.08, 0.42), (side * 0.1, 0.62), 0.05, 0.05),  # symphysis
                Capsule((side * 0.1, 0.62), (side * 0.38 * k, 0.62), 0.045, 0.05),  # inferior
                Ellipse((side * 0.42 * k, 0.5), 0.1, 0.15)],  # ischium
               density=0.9, cortex=0.35)
        head: Point = (side * 0.55 * k, 0.14)
        neck_end: Point = (side * 0.75 * k, 0.38)
        an.add([Ellipse(head, 0.15 * k, 0.15 * k),
                Capsule(head, neck_end, 0.09 * k, 0.1 * k),
                Ellipse((side * 0.85 * k, 0.33), 0.09 * k, 0.12 * k),  # greater trochanter
                Capsule(neck_end, (side * 0.82 * k, 1.5), 0.12 * k, 0.1 * k)],
               density=1.0)
    an.tissue += [Ellipse((0.0, 0.0), 1.15, 0.95),
                  Capsule((-0.75, 0.4), (-0.85, 1.6), 0.4, 0.35),
                  Capsule((0.75, 0.4), (0.85, 1.6), 0.4, 0.35)]
    return an


def _knee(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    flex = rng.uniform(-0.12, 0.12)  # slight valgus/varus
    an.add([Capsule((rng.uniform(-0.04, 0.04), -1.6), (0.0, -0.3), 0.15 * k, 0.18 * k),
            Ellipse((0.0, -0.18), 0.33 * k, 0.13 * k),
            Ellipse((-0.17 * k, -0.08), 0.16 * k, 0.12 * k),  # condyles
            Ellipse((0.17 * k, -0.08), 0.16 * k, 0.12 * k)])
    an.add([Ellipse((rng.uniform(-0.05, 0.05), -0.3), 0.13 * k, 0.16 * k)],
           density=0.7, cortex=0.3)  # patella, over the femur
    tibia_end: Point = (math.sin(flex) * 1.5, 1.6)
    an.add([Ellipse((0.0, 0.12), 0.34 * k, 0.08 * k),  # plateau
            Ellipse((-0.04, 0.03), 0.035, 0.05), Ellipse((0.04, 0.03), 0.035, 0.05),  # spines
            Capsule((0.0, 0.15), tibia_end, 0.2 * k, 0.12 * k)])
    fibula_top: Point = (0.3 * k, 0.24)
    an.add([Ellipse(fibula_top, 0.07 * k, 0.06 * k),
            Capsule(fibula_top, (tibia_end[0] + 0.26 * k, 1.6), 0.045 * k, 0.04 * k)],
           density=0.9)
    an.tissue += [Capsule((0.0, -1.7), (0.0, 0.0), 0.5 * k, 0.55 * k),
                  Capsule((0.0, 0.0), (tibia_end[0], 1.7), 0.55 * k, 0.42 * k)]
    return an


def _skull(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.92, 1.05)
    an.add([Ellipse((0.0, -0.15), 0.85 * k, 0.75 * k)], density=1.1, cortex=0.07)  # vault
    for side in (-1.0, 1.0):
        an.add([Ellipse((side * 0.3 * k, 0.2), 0.17 * k, 0.14 * k)],
               density=0.7, cortex=0.18)  # orbit rims
    an.add([Capsule((0.0, 0.2), (0.0, 0.55), 0.025, 0.03)], density=0.7)  # nasal septum
    jaw = [(-0.58, 0.25), (-0.5, 0.75), (0.0, 0.95), (0.5, 0.75), (0.58, 0.25)]
    jaw_points: list[Point] = [(u * k, v * k) for u, v in jaw]
    an.add([Capsule(a, b, 0.06, 0.06) for a, b in pairwise(jaw_points)],
           density=1.0, cortex=0.4)  # mandible
    for i in range(8):  # teeth
        u = (-0.35 + 0.1 * i) * k
        an.add([Box((u, 0.68 * k - 0.08 * abs(u)), 0.035, 0.07)], density=1.5, cortex=0.5)
    _vertebrae(an, 1.08, 1.5, 3, 0.12, processes=False, density=0.8)  # upper cervical spine
    an.tissue += [Ellipse((0.0, -0.05), 0.95 * k, 0.9 * k),
                  Capsule((0.0, 0.6), (0.0, 1.7), 0.4, 0.35)]
    return an


def _spine(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.1)
    _vertebrae(an, -1.35, 1.35, 9, 0.17 * k, curve=rng.uniform(-0.12, 0.12))
    an.tissue += [Capsule((0.0, -1.7), (0.0, 1.7), 0.75 * k, 0.8 * k)]
    return an


def _abdomen(rng: np.random.Generator) -> Anatomy:
    an = Anatomy()
    k = rng.uniform(0.9, 1.05)
    _vertebrae(an, -0.7, 0.3, 5, 0.1 * k, curve=rng.uniform(-0.05, 0.05))  # L1-L5
    for side in (-1.0, 1.0):
        for i in range(2):  # lowest ribs
            v = -0.95 + 0.15 * i
            an.add([Capsule((side * 0.12, v), (side * 0.55, v + 0.08), 0.025, 0.024),
                    Capsule((side * 0.55, v + 0.08), (side * 0.85, v + 0.3), 0.024, 0.02)],
                   density=0.8, cortex=0.45)
        an.add([Ellipse((side * 0.42 * k, 0.75), 0.36 * k, 0.26 * k, side * 0.35)],
               density=0.55, cortex=0.12)  # iliac wings
    an.add([Ellipse((0.0, 0.78), 0.14 * k, 0.22 * k)], density=0.8, cortex=0.15)  # sacrum
    an.tissue += [Ellipse((0.0, 0.0), 1.05 * k, 1.3),
                  Ellipse((0.2 + rng.uniform(-0.05, 0.05), -0.6), 0.6, 0.35)]  # liver
    return an


#: Out-of-scope anatomy builders, by kind.
OTHER_ANATOMY: dict[str, Callable[[np.random.Generator], Anatomy]] = {
    "CHEST": _chest,
    "PELVIS": _pelvis,
    "KNEE": _knee,
    "SKULL": _skull,
    "SPINE": _spine,
    "ABDOMEN": _abdomen,
}
