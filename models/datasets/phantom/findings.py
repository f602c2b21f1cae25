"""Findings an abnormal study shows: fractures, lytic/blastic lesions and metal hardware.

Each finding keeps the geometry that :mod:`.rendering` draws and that its boxes are computed
from: a :class:`Fracture` its plane, gap, jag, displacement and the bone's local radius, a
:class:`Lesion` its outline and a metal implant (a plate with its screws, one wire, a nail) its
primitives, grouped per implant in :attr:`Findings.metal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from models.datasets.phantom.geometry import Anatomy, Box, Capsule, Ellipse, Point, Primitive, Site

#: Kinds of finding an abnormal phantom study shows.
FINDINGS: tuple[str, ...] = ("fracture", "lesion", "hardware")

#: Findings on thinner bones are sized as if the bone had this radius (body units).
_MIN_FINDING_SCALE = 0.08
#: Largest lesion radius (body units), whatever the bone.
_MAX_LESION = 0.17


@dataclass(frozen=True)
class Fracture:
    bone: int
    center: Point
    normal: Point  # fracture plane normal (unit)
    shift: Point  # displacement of the distal fragment
    angle: float  # angulation of the distal fragment (radians)
    gap: float  # gap width (body units)
    jag: float  # jag amplitude
    jag_freq: float
    phase: float
    radius: float  # the bone's local radius (at least _MIN_FINDING_SCALE) that sized the rest


@dataclass(frozen=True)
class Lesion:
    bone: int
    center: Point
    radius: float
    lytic: bool
    lobes: tuple[float, ...]  # radial modulation of an irregular outline


@dataclass
class Findings:
    fractures: list[Fracture] = field(default_factory=list)
    lesions: list[Lesion] = field(default_factory=list)
    metal: list[tuple[Primitive, ...]] = field(default_factory=list)  # one tuple per implant
    swelling: list[Ellipse] = field(default_factory=list)
    callus: list[tuple[Ellipse, float]] = field(default_factory=list)  # (shape, density)


def _make_fracture(site: Site, rng: np.random.Generator, *, displaced: bool) -> Fracture:
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
    return Fracture(
        bone=site.bone, center=center, normal=normal, shift=shift, angle=angle, gap=gap,
        jag=rng.uniform(0.1, 0.25) * radius, jag_freq=rng.uniform(40, 90),
        phase=rng.uniform(0, 2 * math.pi), radius=radius,
    )


def _random_bone_point(an: Anatomy, rng: np.random.Generator) -> tuple[int, Point, float]:
    """A point inside a long-bone shaft (weighted by shaft area): bone, point, local radius."""
    weights = np.array([s.capsule.length() * s.capsule.radius(0.5) for s in an.sites])
    site = an.sites[int(rng.choice(len(an.sites), p=weights / weights.sum()))]
    t = rng.uniform(max(site.t_min - 0.1, 0.05), min(site.t_max + 0.1, 0.95))
    r = site.capsule.radius(t)
    cu, cv = site.capsule.point(t)
    au, av = site.capsule.axis()
    off = rng.uniform(-0.3, 0.3) * r
    return site.bone, (cu - av * off, cv + au * off), r


def key_point(found: Findings) -> Point:
    """Where the (first) finding sits, to keep it in the field of view."""
    if found.fractures:
        return found.fractures[0].center
    if found.lesions:
        return found.lesions[0].center
    first = found.metal[0][0]
    return first.point(0.5) if isinstance(first, Capsule) else first.c


def make_findings(an: Anatomy, finding: str, rng: np.random.Generator) -> Findings:
    found = Findings()
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
            found.swelling.append(Ellipse(fracture.center, 4.0 * r, 3.0 * r, along))
            if rng.random() < 0.8:  # subacute: fluffy callus bridging the fragments
                found.callus.append((Ellipse(fracture.center, rng.uniform(2.0, 2.8) * r,
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
            found.lesions.append(Lesion(bone, center, min(radius, _MAX_LESION), lytic, lobes))
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
            plate: list[Primitive] = [Box(pc, half_length, max(0.35 * r, 0.022), angle)]
            n_screws = int(rng.integers(3, 7))
            for s in np.linspace(-0.85, 0.85, n_screws):
                sc = (pc[0] + au * s * half_length, pc[1] + av * s * half_length)
                tip = (sc[0] + av * side * 2.2, sc[1] - au * side * 2.2)
                plate.append(Capsule(sc, tip, max(0.14 * r, 0.009), max(0.1 * r, 0.007)))
                plate.append(Ellipse(sc, max(0.3 * r, 0.02), max(0.3 * r, 0.02)))
            found.metal.append(tuple(plate))
        else:  # Kirschner wires or an intramedullary nail
            if rng.random() < 0.5:
                for _ in range(int(rng.integers(2, 4))):
                    tilt = angle + rng.uniform(-0.5, 0.5)
                    half = rng.uniform(0.25, 0.4)
                    off = rng.uniform(-0.6, 0.6) * r
                    c = (cu - av * off, cv + au * off)
                    a = (c[0] - math.cos(tilt) * half, c[1] - math.sin(tilt) * half)
                    b = (c[0] + math.cos(tilt) * half, c[1] + math.sin(tilt) * half)
                    found.metal.append((Capsule(a, b, 0.022, 0.022),))
            else:
                cap = site.capsule
                found.metal.append((Capsule(cap.point(0.05), cap.point(0.95), 0.35 * r,
                                            0.3 * r),))
        if rng.random() < 0.5:  # the fixed fracture, not displaced
            fixed = Site(site.bone, site.capsule, max(t - 0.05, 0.0), min(t + 0.05, 1.0))
            found.fractures.append(_make_fracture(fixed, rng, displaced=False))
    elif finding != "none":
        raise ValueError(f"finding must be 'none' or one of {FINDINGS}, got {finding!r}")
    return found
