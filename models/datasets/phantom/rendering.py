"""Views and image formation: :func:`render_study` turns an anatomy and its findings into images.

Each image comes with the boxes of the findings it shows (:attr:`PhantomStudy.boxes`), in its
pixels (:class:`models.datasets.boxes.Box`: x = column, y = row, top-left origin, clipped to the
image),
computed from the geometry the renderer drew, on the image's own pixel grid, without drawing a
random number (a seed's images are the same with or without them):

- a fracture: the bone, as drawn and as it was, within the fracture's gap, its jag and one local
  bone radius on either side of the fracture line (the step-off of both fragment ends), and its
  callus. The displaced fragment further away and the soft-tissue swelling are left out: the
  box marks the fracture site, as an annotator would;
- a lesion: its lobed outline, with the sclerotic margin of a lytic lesion, where it meets the
  bone (a blastic lesion is drawn inside the bone only);
- an implant (a plate with its screws, one wire, a nail): its metal, since MURA calls hardware
  abnormal. A non-displaced fracture under hardware has its own box.

Each box is the bounding box of the finding's pixels grown by :data:`BOX_MARGIN` pixels (the
anti-aliased edge and the image blur), clipped to the exposed field (a collimation border
hides what lies under it); a finding none of whose pixels is exposed in an image has no box
there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from models.datasets.boxes import Box
from models.datasets.phantom.anatomy import ANATOMY
from models.datasets.phantom.findings import (
    FINDINGS,
    Findings,
    Fracture,
    Lesion,
    key_point,
    make_findings,
)
from models.datasets.phantom.geometry import (
    Anatomy,
    Bone,
    Capsule,
    Ellipse,
    FloatArray,
    Point,
    Primitive,
    to_local,
    union_extent,
    union_sdf,
)
from models.datasets.phantom.other import OTHER_ANATOMY, OTHER_CLASS, OTHER_KINDS
from models.serving.taxonomy import MURA_TAXONOMY

#: Classes the phantom renders, in :data:`~models.serving.taxonomy.MURA_TAXONOMY` order: MURA's
#: seven
#: bone types and ``OTHER`` (out-of-scope anatomy, always normal).
PHANTOM_CLASSES: tuple[str, ...] = MURA_TAXONOMY.names

_TISSUE_DENSITY = 0.32
_METAL_DENSITY = 6.0

#: Finding boxes reach this many pixels past the finding's own pixels (anti-aliasing: half a
#: pixel; blur: sigma <= 1.1 px).
BOX_MARGIN = 2
#: Views re-drawn at most this often to keep the finding in the field of view.
_VIEW_TRIES = 20
#: Long bones (and a leg, a spine) are imaged on tall detectors (height / width), by anatomy.
_TALL = {"FOREARM": 1.45, "HUMERUS": 1.5, "FINGER": 1.2, "KNEE": 1.3, "SPINE": 1.4}
#: Framing: (zoom, body point placed at the image centre), by anatomy.
_FRAME: dict[str, tuple[float, Point]] = {
    "ELBOW": (1.2, (0.0, 0.1)),
    "FINGER": (1.05, (0.0, 0.15)),
    "HAND": (1.5, (0.0, 0.25)),
    "WRIST": (1.15, (0.0, 0.1)),
    "SHOULDER": (1.1, (-0.15, 0.1)),
    "CHEST": (0.92, (0.0, 0.1)),
    "PELVIS": (0.9, (0.0, 0.15)),
    "KNEE": (1.1, (0.0, 0.0)),
    "SKULL": (0.95, (0.0, 0.05)),
    "SPINE": (1.0, (0.0, 0.0)),
    "ABDOMEN": (0.92, (0.0, 0.0)),
}


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
    body_part : str
        Class, one of :data:`PHANTOM_CLASSES` (MURA's ``XR_<body_part>`` folder).
    abnormal : bool
        Study label (always ``False`` for ``OTHER``).
    finding : str
        ``"none"`` for a normal study, else one of :data:`FINDINGS`.
    images : tuple of numpy.ndarray
        float32 2-D images in [0, 1], 1 = bright (bone).
    anatomy : str
        What the images show: ``body_part`` itself for the seven MURA bone types, one of
        :data:`OTHER_KINDS` for ``OTHER``.
    boxes : tuple of tuple of models.datasets.boxes.Box
        Per image, the boxes of the findings it shows, in its pixels (see the module
        docstring); empty for a normal study. ``()`` (the default) stands for no box on any
        image.
    """

    body_part: str
    abnormal: bool
    finding: str
    images: tuple[NDArray[np.float32], ...]
    anatomy: str
    boxes: tuple[tuple[Box, ...], ...] = ()

    def __post_init__(self) -> None:
        _check_body_part(self.body_part)
        if self.abnormal != (self.finding != "none"):
            raise ValueError(f"finding {self.finding!r} contradicts abnormal={self.abnormal}")
        if self.body_part == OTHER_CLASS and self.abnormal:
            raise ValueError(f"abnormal must be False for body_part {OTHER_CLASS!r}")
        _check_anatomy(self.body_part, self.anatomy)
        if not self.images:
            raise ValueError("images must hold at least one image")
        if not self.boxes:
            object.__setattr__(self, "boxes", ((),) * len(self.images))
        if len(self.boxes) != len(self.images):
            raise ValueError(f"boxes must hold one tuple per image ({len(self.images)}), "
                             f"got {len(self.boxes)}")
        if not self.abnormal and any(self.boxes):
            raise ValueError("boxes must be empty for a normal study")
        for image, image_boxes in zip(self.images, self.boxes, strict=True):
            height, width = image.shape
            for box in image_boxes:
                if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
                    raise ValueError(f"boxes: {box} lies outside its {width}x{height} image")


def _check_body_part(body_part: str) -> None:
    if body_part not in PHANTOM_CLASSES:
        raise ValueError(f"body_part must be one of {PHANTOM_CLASSES}, got {body_part!r}")


def _check_anatomy(body_part: str, anatomy: str) -> None:
    allowed = OTHER_KINDS if body_part == OTHER_CLASS else (body_part,)
    if anatomy not in allowed:
        raise ValueError(f"anatomy of a {body_part} study must be one of {allowed}, "
                         f"got {anatomy!r}")


#: Pixel rectangle (x0, y0, x1, y1), ends excluded: the exposed field of an image.
_Field = tuple[int, int, int, int]


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
        u, v = to_local(x, y, self.center, self.angle)
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

    def window(self, extent: tuple[float, float, float, float]
               ) -> tuple[tuple[slice, slice], FloatArray, FloatArray] | None:
        """Image slices (rows, columns) of :meth:`pixel_box` and the body coordinates of their
        pixels (pixel ``(row, col)`` sampled at ``x = col``, ``y = row``); ``None`` when the
        extent misses the image."""
        x0, y0, x1, y1 = self.pixel_box(extent)
        if x1 <= x0 or y1 <= y0:
            return None
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u, v = self.to_body(xs, ys)
        return (slice(y0, y1), slice(x0, x1)), u, v


def _smooth_inside(d: FloatArray, pixel: float) -> FloatArray:
    """Anti-aliased inside mask from a signed distance (one pixel of transition)."""
    result: FloatArray = np.clip(0.5 - d / pixel, 0.0, 1.0)
    return result


def _bone_density(bone: Bone, d: FloatArray, pixel: float, texture: FloatArray) -> FloatArray:
    inside = _smooth_inside(d, pixel)
    thickness = max(bone.cortex * _min_radius(bone), 1.5 * pixel)
    rim = np.exp(np.minimum(d, 0.0) / thickness)
    medulla = 0.45 * (1.0 + 0.12 * texture)
    result: FloatArray = bone.density * inside * (medulla + (1.0 - medulla) * rim)
    return result


def _min_radius(bone: Bone) -> float:
    radii = []
    for p in bone.prims:
        if isinstance(p, Capsule):
            radii.append(min(p.r1, p.r2))
        elif isinstance(p, Ellipse):
            radii.append(min(p.ru, p.rv))
        else:
            radii.append(min(p.half_u, p.half_v))
    return min(radii)


def _fracture_side(fr: Fracture, u: FloatArray, v: FloatArray) -> FloatArray:
    """Signed distance (body units) from the jagged fracture line; > 0 on the moved fragment."""
    cu, cv = fr.center
    nu, nv = fr.normal
    along = (u - cu) * nu + (v - cv) * nv
    across = -(u - cu) * nv + (v - cv) * nu
    side: FloatArray = along + fr.jag * np.sin(fr.jag_freq * across + fr.phase)
    return side


def _fractured_sdf(bone: Bone, fractures: Sequence[Fracture], u: FloatArray, v: FloatArray,
                   pixel: float) -> tuple[FloatArray, FloatArray]:
    """SDF of a bone with its fragments displaced, and a multiplicative gap mask."""
    d = union_sdf(bone.prims, u, v)
    keep = np.ones_like(u)
    for fr in fractures:
        cu, cv = fr.center
        side = _fracture_side(fr, u, v)
        if fr.shift != (0.0, 0.0) or fr.angle != 0.0:
            cos, sin = math.cos(-fr.angle), math.sin(-fr.angle)
            pu, pv = u - cu - fr.shift[0], v - cv - fr.shift[1]
            du = cu + pu * cos - pv * sin
            dv = cv + pu * sin + pv * cos
            d = np.where(side > 0, union_sdf(bone.prims, du, dv), d)
        gap = np.clip((np.abs(side) - fr.gap / 2) / pixel + 0.5, 0.0, 1.0)
        keep = keep * (0.08 + 0.92 * gap)
    return d, keep


def _lesion_sdf(les: Lesion, u: FloatArray, v: FloatArray) -> FloatArray:
    """Distance (body units) from a lesion's lobed outline, < 0 inside."""
    du, dv = u - les.center[0], v - les.center[1]
    theta = np.arctan2(dv, du)
    wobble = 1.0 + sum(a * np.sin((i + 2) * theta + i) for i, a in enumerate(les.lobes))
    dl: FloatArray = np.hypot(du, dv) - les.radius * wobble
    return dl


def _lesion_shell(les: Lesion, pixel: float) -> float:
    """Width (body units) of a lytic lesion's sclerotic margin."""
    return max(0.2 * les.radius, 1.5 * pixel)


def _apply_lesions(lesions: Sequence[Lesion], d: FloatArray, u: FloatArray, v: FloatArray,
                   pixel: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Bone SDF bulged by expansile lytic lesions, a density multiplier and an additive density.

    A lytic lesion joins the bone outline (so the cortical rim follows the bulge), empties its
    interior and has a sclerotic margin; a blastic lesion adds a dense blob inside the bone.
    """
    mult = np.ones_like(u)
    add = np.zeros_like(u)
    for les in lesions:
        dl = _lesion_sdf(les, u, v)
        if les.lytic:
            d = np.minimum(d, dl)
            shell = _lesion_shell(les, pixel)
            mult *= 1.0 - 0.92 * _smooth_inside(dl + shell, pixel)
            add += 0.8 * np.exp(-(((dl + shell) / shell) ** 2))  # sclerotic margin
        else:
            add += 2.5 * _smooth_inside(dl, pixel)
    return d, mult, add


def _bone_extent(bone: Bone, fractures: Sequence[Fracture],
                 lesions: Sequence[Lesion]) -> tuple[float, float, float, float]:
    """Body extent a bone is drawn in: its own, grown for its displaced fragments and lesions."""
    extent = union_extent(bone.prims)
    # displaced fragments and expansile lesions can leave the bone's own extent
    pad = max([math.hypot(*f.shift) + 0.3 for f in fractures]
              + [les.radius for les in lesions], default=0.0)
    return (extent[0] - pad, extent[1] - pad, extent[2] + pad, extent[3] + pad)


def _render_view(an: Anatomy, found: Findings, view: _View, rng: np.random.Generator,
                 config: PhantomConfig) -> tuple[NDArray[np.float32], _Field]:
    """The view's image, and its exposed field (the image less any collimation border)."""
    h, w = view.height, view.width
    pixel = 1.0 / view.scale  # body units per pixel
    density = np.zeros((h, w))
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=rng.uniform(1.0, 2.0))
    texture /= texture.std() + 1e-9

    window = view.window
    # soft tissue, thicker where a fracture made it swell
    win = window(union_extent(an.tissue))
    if win is not None:
        sl, u, v = win
        d = union_sdf(an.tissue, u, v)
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
        win = window(_bone_extent(bone, fractures, lesions))
        if win is None:
            continue
        sl, u, v = win
        if fractures:
            d, keep = _fractured_sdf(bone, fractures, u, v, pixel)
        else:
            d, keep = union_sdf(bone.prims, u, v), np.ones_like(u)
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

    for prim in (prim for implant in found.metal for prim in implant):
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
    field: _Field = (0, 0, w, h)
    if rng.random() < config.artifact_probability:  # collimation border
        m = [int(rng.integers(0, max(s // 10, 1))) for s in (h, w, h, w)]
        border = np.ones((h, w), dtype=bool)
        border[m[0] : h - m[2], m[1] : w - m[3]] = False
        image[border] = rng.uniform(0.5, 0.85)
        field = (m[1], m[0], w - m[3], h - m[2])
    if rng.random() < config.artifact_probability:  # side marker ("L")
        size = max(min(h, w) // 14, 6)
        y0 = int(rng.integers(2, max(h // 6, 3)))
        left = int(rng.integers(2, max(w // 6, 3)))
        x0 = left if rng.random() < 0.5 else w - 2 * size
        image[y0 : y0 + 2 * size, x0 : x0 + max(size // 3, 2)] = 0.95
        image[y0 + 2 * size - max(size // 3, 2) : y0 + 2 * size, x0 : x0 + size] = 0.95
    return np.clip(image, 0.0, 1.0).astype(np.float32), field

#: Inclusive pixel bounds (first column, first row, last column, last row) of a finding.
_Bounds = tuple[int, int, int, int]


def _mask_bounds(sl: tuple[slice, slice], mask: NDArray[np.bool_]) -> _Bounds | None:
    """Bounds of the true pixels of ``mask``, the image window ``sl``; ``None`` if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    row0, col0 = sl[0].start, sl[1].start
    return (col0 + int(cols[0]), row0 + int(rows[0]), col0 + int(cols[-1]),
            row0 + int(rows[-1]))


def _join(bounds: Sequence[_Bounds | None]) -> _Bounds | None:
    """Bounds covering all of ``bounds`` (``None`` entries ignored)."""
    present = [b for b in bounds if b is not None]
    if not present:
        return None
    return (min(b[0] for b in present), min(b[1] for b in present),
            max(b[2] for b in present), max(b[3] for b in present))


def _to_box(bounds: _Bounds, field: _Field) -> Box | None:
    """The box of a finding's pixels, grown by :data:`BOX_MARGIN` and clipped to the exposed
    ``field``; ``None`` when none of them is exposed."""
    col0, row0, col1, row1 = bounds
    x0, y0, x1, y1 = field
    if col1 < x0 or col0 >= x1 or row1 < y0 or row0 >= y1:
        return None
    return Box(float(max(col0 - BOX_MARGIN, x0)), float(max(row0 - BOX_MARGIN, y0)),
               float(min(col1 + 1 + BOX_MARGIN, x1)), float(min(row1 + 1 + BOX_MARGIN, y1)))


def _primitives_bounds(prims: Sequence[Primitive], view: _View) -> _Bounds | None:
    """Bounds of the pixels inside ``prims`` (their anti-aliased edge included)."""
    win = view.window(union_extent(prims))
    if win is None:
        return None
    sl, u, v = win
    return _mask_bounds(sl, union_sdf(prims, u, v) <= 0.5 / view.scale)


def _finding_boxes(an: Anatomy, found: Findings, view: _View, field: _Field) -> tuple[Box, ...]:
    """Boxes of the findings ``view`` shows in its exposed ``field``: fractures, lesions, then
    implants.

    Each finding's pixels are found on the view's own pixel grid, in the window its bone (or
    its metal, its callus) is drawn in, as the module docstring describes; no random number
    is drawn.
    """
    pixel = 1.0 / view.scale
    drawn: dict[int, tuple[tuple[slice, slice], FloatArray, FloatArray, FloatArray,
                           FloatArray] | None] = {}

    def bone_grid(index: int) -> tuple[tuple[slice, slice], FloatArray, FloatArray, FloatArray,
                                      FloatArray] | None:
        """The bone's window, body coordinates, SDF without findings and SDF as drawn."""
        if index not in drawn:
            bone = an.bones[index]
            fractures = [f for f in found.fractures if f.bone == index]
            lesions = [les for les in found.lesions if les.bone == index]
            win = view.window(_bone_extent(bone, fractures, lesions))
            if win is None:
                drawn[index] = None
            else:
                sl, u, v = win
                before = union_sdf(bone.prims, u, v)
                after = _fractured_sdf(bone, fractures, u, v, pixel)[0] if fractures else before
                if lesions:
                    after = _apply_lesions(lesions, after, u, v, pixel)[0]
                drawn[index] = sl, u, v, before, after
        return drawn[index]

    bounds: list[_Bounds | None] = []
    for fr in found.fractures:
        parts: list[_Bounds | None] = []
        grid = bone_grid(fr.bone)
        if grid is not None:
            sl, u, v, before, after = grid
            # both fragment ends, as they were and as drawn, near the jagged line
            near = np.abs(_fracture_side(fr, u, v)) <= fr.gap / 2 + fr.radius
            parts.append(_mask_bounds(sl, near & ((before <= pixel / 2) | (after <= pixel / 2))))
        parts += [_primitives_bounds([callus], view) for callus, _ in found.callus
                  if callus.c == fr.center]  # a fracture's callus is centred on it
        bounds.append(_join(parts))
    for les in found.lesions:
        grid = bone_grid(les.bone)
        if grid is None:
            continue
        sl, u, v, _, after = grid
        # a lytic lesion's sclerotic margin fades out about half its width past the outline
        reach = 0.5 * _lesion_shell(les, pixel) if les.lytic else pixel / 2
        bounds.append(_mask_bounds(sl, (_lesion_sdf(les, u, v) <= reach) & (after <= pixel / 2)))
    bounds += [_primitives_bounds(implant, view) for implant in found.metal]
    boxes = (_to_box(b, field) for b in bounds if b is not None)
    return tuple(box for box in boxes if box is not None)


def _random_view(anatomy: str, rng: np.random.Generator, config: PhantomConfig) -> _View:
    a = int(rng.integers(config.min_size, config.max_size + 1))
    b = int(rng.integers(config.min_size, config.max_size + 1))
    tall = _TALL.get(anatomy)
    if tall is None:
        h, w = a, b
        scale = 0.5 * min(h, w) * rng.uniform(0.75, 0.95)
    else:  # long bones lie along a tall detector
        h = max(a, b)
        w = max(int(h / tall * rng.uniform(0.9, 1.1)), config.min_size // 2)
        scale = 0.5 * h * rng.uniform(0.8, 0.92)
    zoom, (fu, fv) = _FRAME.get(anatomy, (1.0, (0.0, 0.0)))
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
    body_part: str,
    abnormal: bool,
    seed: int | Sequence[int] | np.random.SeedSequence,
    *,
    n_images: int | None = None,
    config: PhantomConfig | None = None,
    anatomy: str | None = None,
) -> PhantomStudy:
    """Render one phantom study; pure and deterministic for a given seed.

    Parameters
    ----------
    body_part : str
        Class, one of :data:`PHANTOM_CLASSES` (the seven MURA bone types and ``OTHER``).
    abnormal : bool
        Whether the study shows a finding (in every image); must be ``False`` for ``OTHER``.
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the study. Anatomy, finding and views draw from separate streams, so the
        normal and abnormal renderings of one seed differ only by the finding.
    n_images : int, optional
        Number of images (views); drawn from ``config.images_per_study`` when not given.
    config : PhantomConfig, optional
        Appearance parameters.
    anatomy : str, optional
        For ``OTHER``, the out-of-scope kind (one of :data:`OTHER_KINDS`); drawn from the seed
        when not given. For the seven bone types, ``None`` or ``body_part`` itself.

    Returns
    -------
    PhantomStudy
        The study's float32 images in [0, 1] (1 = bright bone), label, finding kind, anatomy
        and, per image, the boxes of the findings it shows (none for a normal study).
    """
    _check_body_part(body_part)
    if body_part == OTHER_CLASS and abnormal:
        raise ValueError(f"abnormal must be False for body_part {OTHER_CLASS!r}")
    if anatomy is not None:
        _check_anatomy(body_part, anatomy)
    config = config or PhantomConfig()
    base = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    words = [int(w) for w in base.generate_state(4)]
    anatomy_rng, finding_rng, view_rng = (np.random.default_rng([*words, k]) for k in range(3))
    if n_images is None:
        probs = np.asarray(config.images_per_study)
        n_images = 1 + int(view_rng.choice(len(probs), p=probs / probs.sum()))
    elif n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if body_part == OTHER_CLASS:
        if anatomy is None:  # OTHER draws no finding: its finding stream picks the kind
            anatomy = OTHER_KINDS[int(finding_rng.integers(len(OTHER_KINDS)))]
        body = OTHER_ANATOMY[anatomy](anatomy_rng)
        images = [_render_view(body, Findings(), _random_view(anatomy, view_rng, config),
                               view_rng, config)[0] for _ in range(n_images)]
        return PhantomStudy(body_part=body_part, abnormal=False, finding="none",
                            images=tuple(images), anatomy=anatomy)
    body = ANATOMY[body_part](anatomy_rng)
    # the finding is drawn (and frames the views) whatever the label, so that a study's normal
    # and abnormal renderings differ only by it
    kind = str(finding_rng.choice(config.findings))
    candidate = make_findings(body, kind, finding_rng)
    finding, found = (kind, candidate) if abnormal else ("none", Findings())
    images, boxes = [], []
    for _ in range(n_images):
        view = _random_view(body_part, view_rng, config)
        for _ in range(_VIEW_TRIES):
            if view.shows(key_point(candidate)):
                break
            view = _random_view(body_part, view_rng, config)
        image, field = _render_view(body, found, view, view_rng, config)
        images.append(image)
        boxes.append(_finding_boxes(body, found, view, field))  # geometry only: no draws
    return PhantomStudy(body_part=body_part, abnormal=abnormal, finding=finding,
                        images=tuple(images), anatomy=body_part, boxes=tuple(boxes))
