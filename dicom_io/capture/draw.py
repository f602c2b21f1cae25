"""The capture's picture: a radiograph, its findings outlined and a label band, as pixels.

A pure image function, :func:`render`: a film in, 8-bit pixels out, no DICOM
(:mod:`dicom_io.capture.sop` puts the pixels into a Secondary Capture Image). The film is a
radiograph as :func:`dicom_io.pixels.normalize_radiograph` renders it, 2-D float in [0, 1],
1 = bright; nothing is washed over it: outside the outlines and their text, its pixels are
those of the radiograph.

Geometry. A finding is a box in the pixels of the source instance (Columns x Rows); the film
is the radiograph rendered at a working size (:func:`dicom_io.pixels.normalize_radiograph`
with ``max_side``, :data:`RENDER_SIDE` when captures are written), possibly smaller. The film
is resized once to the displayed size (area averaging when shrinking, bilinear when
enlarging, of the 8-bit values: :func:`display_film`), whose longest side is clamped to
[:data:`MIN_SIDE`, :data:`MAX_SIDE`]: small enough to keep the object small, large enough for
the text to be legible. Each box is scaled by film / source, then by display / film
(:func:`display_boxes`), and outlined with its rank and probability (:func:`draw_findings`).
The label band goes below the film (:func:`label_band`), which it does not cover.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from models.serving.enhance import check_image
from models.serving.findings import Finding

#: Longest side, in pixels, of the displayed radiograph (the label band comes below it).
MAX_SIDE = 1024
MIN_SIDE = 512
#: Longest side a radiograph needs to be rendered at for its capture (the classify stage's
#: ``max_side``): a 3000 px film is then reduced by 3 to 1000 px and shown as it is, instead
#: of being rendered at 1500 px and resized (:func:`dicom_io.pixels.normalize_radiograph`
#: reduces by whole factors).
RENDER_SIDE = 768
#: Colour of the outlines and of their text: pure yellow, which stands out on grey film and
#: which no film pixel has (R = G = B there).
OUTLINE_COLOR = (255, 255, 0)
#: Width, in capture pixels, of an outline. It is drawn just outside its box, so that it
#: covers none of the region it points at (where the box reaches the image's edge, along it).
OUTLINE_WIDTH = 3
#: Colour of the 1-pixel edge around the outlines' text, legible on bright bone too.
_TEXT_EDGE = (0, 0, 0)
_TEXT = 255
#: Pixels around a text's box that its drawing may touch (antialiasing); Pillow draws
#: within the box, the margin makes sure.
_TEXT_MARGIN = 4
_BAND = 0


def render(
    image: NDArray[np.floating],
    findings: Sequence[Finding],
    label: str,
    *,
    source_size: tuple[int, int],
) -> NDArray[np.uint8]:
    """The capture's pixels: the film, its findings outlined, and the label band below.

    The film (``image``, resized to :func:`display_size` in 8 bits by :func:`display_film`),
    an outline with its rank and probability around each finding (:func:`draw_findings`, the
    boxes scaled by :func:`display_boxes`), and the label band (:func:`label_band`) appended
    below. With findings the result is RGB; without, grey (one channel): the film and the
    label band only. The pixel values are those a Secondary Capture Image stores (PS3.3
    C.7.6.3: 8 bits, RGB or MONOCHROME2), but this function knows nothing of DICOM.

    Parameters
    ----------
    image : numpy.ndarray
        The film: 2-D float in [0, 1], 1 = bright, as
        :func:`dicom_io.pixels.normalize_radiograph` gives it; it may be rendered smaller than
        the source (a working size), but covers the whole of it.
    findings : sequence of Finding
        Boxes in the pixels of the source (x = column in [0, Columns], y = row in [0, Rows]),
        the most probable first: the rank written beside each outline is its position here.
        Empty: no outline.
    label : str
        Text of the label band, wrapped to its width.
    source_size : tuple of int
        ``(rows, columns)`` of the source the findings' boxes are in.

    Returns
    -------
    numpy.ndarray
        uint8, ``rows x columns x 3`` (RGB) with findings, ``rows x columns`` without; its
        top :func:`display_size` rows are the film, the rest the label band.

    Raises
    ------
    TypeError
        If ``image`` is not a float array.
    ValueError
        If ``image`` is not a 2-D array in [0, 1], ``source_size`` is not two positive
        sizes, or a box is not ``x0 < x1``, ``y0 < y1``.
    """
    film = check_image(image)
    rows, columns = (int(v) for v in source_size)
    if rows < 1 or columns < 1:
        raise ValueError(f"source_size must be two positive sizes, got {source_size}")
    shape = display_size(film.shape)
    canvas = np.concatenate((display_film(film, shape), label_band(label, shape[1], 1)))
    if not findings:
        return canvas
    # The outlines and their text are drawn in place on the film's rows of an RGB copy.
    pixels = _grey_rgb(canvas)
    boxes = display_boxes(findings, (rows, columns), film.shape, shape)
    _draw_findings_on(pixels[: shape[0]], boxes, [f.probability for f in findings])
    return pixels


def display_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, columns)`` of the displayed radiograph for an image of ``shape``.

    The aspect ratio is kept and the longest side clamped to [:data:`MIN_SIDE`,
    :data:`MAX_SIDE`].
    """
    h, w = int(shape[0]), int(shape[1])
    longest = max(h, w)
    scale = min(max(longest, MIN_SIDE), MAX_SIDE) / longest
    return max(1, round(h * scale)), max(1, round(w * scale))


def display_boxes(
    findings: Sequence[Finding],
    source_size: tuple[int, int],
    image_shape: tuple[int, ...],
    display_shape: tuple[int, int],
) -> list[tuple[float, float, float, float]]:
    """The boxes of ``findings`` in the pixels of the displayed image.

    A finding is in the pixels of the source instance (``source_size`` = ``(Rows,
    Columns)``). It is scaled by ``image_shape / source_size`` onto the rendered image (the
    inverse of the scaling :class:`worker.pipeline.ClassifyStage` applies to the findings of a
    reduced rendering), then by ``display_shape / image_shape`` onto the displayed one.

    Returns
    -------
    list of tuple of float
        ``(x0, y0, x1, y1)`` per finding, continuous pixel coordinates (x = column).
    """
    rows, columns = source_size
    image_rows, image_columns = int(image_shape[0]), int(image_shape[1])
    sx = (image_columns / columns) * (display_shape[1] / image_columns)
    sy = (image_rows / rows) * (display_shape[0] / image_rows)
    return [(f.x0 * sx, f.y0 * sy, f.x1 * sx, f.y1 * sy) for f in findings]


def display_film(image: NDArray[np.float32], shape: tuple[int, int]) -> NDArray[np.uint8]:
    """The film as the capture shows it: ``image`` (in [0, 1]) quantised to 8 bits, then
    resized to ``(rows, columns)``, once.

    Area averaging when shrinking (the reduction :func:`dicom_io.pixels.normalize_radiograph`
    makes too, as free of aliasing as an antialiased bilinear filter and cheaper), bilinear
    when enlarging. Resampling the 8-bit values (Pillow's integer path) costs about two thirds
    of resampling the floats and differs from it by at most one grey level (brighter by under
    half a level on average).
    """
    gray = _to_uint8(image)
    if gray.shape == shape:
        return gray
    shrinking = shape[0] <= gray.shape[0] and shape[1] <= gray.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(gray, mode="L").resize((shape[1], shape[0]), resample)
    return np.asarray(resized, dtype=np.uint8)


def _to_uint8(array: NDArray[np.floating]) -> NDArray[np.uint8]:
    """[0, 1] floats to 0-255, rounded to nearest (values outside [0, 1] clipped)."""
    scaled = np.multiply(np.asarray(array, dtype=np.float32), np.float32(255.0))
    scaled += np.float32(0.5)
    np.clip(scaled, 0.5, 255.5, out=scaled)  # as clipping to [0, 1] first
    return scaled.astype(np.uint8)


def draw_findings(
    image: NDArray[np.uint8] | NDArray[np.floating],
    boxes: Sequence[tuple[float, float, float, float]],
    probabilities: Sequence[float],
) -> NDArray[np.uint8]:
    """The film with an outline, its rank and its probability around each box.

    A pure image function (no DICOM). Each box is outlined in :data:`OUTLINE_COLOR`,
    :data:`OUTLINE_WIDTH` pixels wide, just outside it: the outline's inner edge follows the
    box's edge (box corners rounded to whole pixels) and leaves the boxed region as it is;
    where the box reaches the image's edge the outline runs along that edge instead. Beside it
    (above its top-left corner; below the box when there is no room above; always within the
    image) the text ``"<rank>: <probability>"``, e.g. ``"1: 0.74"``, in the same colour with
    a 1-pixel black edge. Every outline is drawn before any text, so that no outline crosses
    a text. Everything else keeps its grey value.

    Parameters
    ----------
    image : numpy.ndarray
        The film: 2-D, uint8 (0-255) or float in [0, 1] (1 = white).
    boxes : sequence of tuple of float
        ``(x0, y0, x1, y1)`` per finding in the pixels of ``image`` (x = column; pixel
        ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``), ranked: the first is ``"1"``. A box
        wholly outside the image is not drawn.
    probabilities : sequence of float
        The probability of each box, written with two decimals.

    Returns
    -------
    numpy.ndarray
        ``rows x columns x 3`` uint8 RGB image (grey where nothing is drawn).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, a box is not ``x0 < x1``, ``y0 < y1`` or
        ``probabilities`` has not one value per box.
    """
    gray = np.asarray(image)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {gray.shape}")
    if gray.dtype != np.uint8:
        gray = _to_uint8(gray)
    rgb = _grey_rgb(gray)
    _draw_findings_on(rgb, boxes, probabilities)
    return rgb


def _grey_rgb(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """``gray`` on each of three channels (``rows x columns x 3``)."""
    rgb = np.empty((*gray.shape, 3), dtype=np.uint8)
    for channel in range(3):  # one strided copy per channel: faster than broadcasting
        rgb[..., channel] = gray
    return rgb


def _draw_findings_on(
    rgb: NDArray[np.uint8],
    boxes: Sequence[tuple[float, float, float, float]],
    probabilities: Sequence[float],
) -> None:
    """:func:`draw_findings` on an RGB image, in place.

    Pillow draws each outline and each text on a copy of the small region it covers only
    (the pixels of a 1000 px RGB film need not go through Pillow and back); Pillow's drawing
    is the same at any offset, so the pixels are those of drawing on the whole image.
    """
    if len(boxes) != len(probabilities):
        raise ValueError(
            f"probabilities must have one value per box: {len(probabilities)} for {len(boxes)}"
        )
    rows, columns = rgb.shape[:2]
    outlines = []
    for rank, (box, probability) in enumerate(zip(boxes, probabilities, strict=True), start=1):
        outline = _outline(box, rows, columns)
        if outline is None:
            continue
        left, top, right, bottom = outline
        with _region(rgb, (left, top, right + 1, bottom + 1)) as draw:
            draw.rectangle((0, 0, right - left, bottom - top), outline=OUTLINE_COLOR,
                           width=OUTLINE_WIDTH)
        outlines.append((rank, probability, outline))
    font = _font(columns)
    for rank, probability, outline in outlines:
        text = f"{rank}: {probability:.2f}"
        ink_left, ink_top, ink_right, ink_bottom = font.getbbox(text, stroke_width=1)
        size = (math.ceil(ink_right - ink_left), math.ceil(ink_bottom - ink_top))
        x, y = _text_position(outline, size, rows, columns)
        # The text's box, with a margin for antialiasing, clipped to the image.
        x0, y0 = max(0, x - _TEXT_MARGIN), max(0, y - _TEXT_MARGIN)
        x1 = min(columns, x + size[0] + _TEXT_MARGIN)
        y1 = min(rows, y + size[1] + _TEXT_MARGIN)
        with _region(rgb, (x0, y0, x1, y1)) as draw:
            draw.text((x - ink_left - x0, y - ink_top - y0), text, fill=OUTLINE_COLOR, font=font,
                      stroke_width=1, stroke_fill=_TEXT_EDGE)


@contextmanager
def _region(rgb: NDArray[np.uint8], box: tuple[int, int, int, int]
            ) -> Iterator[ImageDraw.ImageDraw]:
    """A Pillow drawing on the ``(left, top, right, bottom)`` region (exclusive ends) of
    ``rgb``, written back into ``rgb`` when the block ends."""
    left, top, right, bottom = box
    canvas = Image.fromarray(np.ascontiguousarray(rgb[top:bottom, left:right]), mode="RGB")
    yield ImageDraw.Draw(canvas)
    rgb[top:bottom, left:right] = np.asarray(canvas, dtype=np.uint8)


def _outline(
    box: tuple[float, float, float, float], rows: int, columns: int
) -> tuple[int, int, int, int] | None:
    """Inclusive ``(left, top, right, bottom)`` of the outline around ``box`` (its outer edge,
    :data:`OUTLINE_WIDTH` pixels outside the box's pixels, clipped to the image), or None when
    the box lies wholly outside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (math.isfinite(x0 + y0 + x1 + y1) and x1 > x0 and y1 > y0):
        raise ValueError(f"a box must be finite with x0 < x1 and y0 < y1, got {box}")
    left, top = round(x0), round(y0)
    right, bottom = max(left, round(x1) - 1), max(top, round(y1) - 1)
    if left >= columns or top >= rows or right < 0 or bottom < 0:
        return None
    return (
        max(0, left - OUTLINE_WIDTH),
        max(0, top - OUTLINE_WIDTH),
        min(columns - 1, right + OUTLINE_WIDTH),
        min(rows - 1, bottom + OUTLINE_WIDTH),
    )


def _text_position(
    outline: tuple[int, int, int, int], size: tuple[int, int], rows: int, columns: int
) -> tuple[int, int]:
    """Top-left corner of a text of ``size`` (width, height) beside ``outline``: above it, or
    below it when there is no room above, or inside its top edge; always within the image."""
    left, top, _right, bottom = outline
    width, height = size
    gap = 2
    if top - gap - height >= 0:
        y = top - gap - height
    elif bottom + 1 + gap + height <= rows:
        y = bottom + 1 + gap
    else:
        y = top + OUTLINE_WIDTH + gap
    x = min(max(0, left), max(0, columns - width))
    return x, min(max(0, y), max(0, rows - height))


def _font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font, sized for an image ``width`` pixels wide (no font files)."""
    size = min(max(round(width / 40), 12), 28)
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words kept)."""
    words = text.split()
    if not words:
        return []
    one_line = " ".join(words)
    if font.getlength(one_line) <= width:  # the usual case: one measurement, not one per word
        return [one_line]
    lines: list[str] = []
    for word in words:
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def label_band(label: str, width: int, channels: int) -> NDArray[np.uint8]:
    """The label band: white text of ``label`` on black, ``width`` pixels wide.

    Returns a ``rows x width`` (``channels`` = 1) or ``rows x width x 3`` uint8 array whose
    height fits the wrapped text with a margin.
    """
    font = _font(width)
    text_height = math.ceil(font.getbbox("Ag")[3])
    margin = max(4, text_height // 2)
    lines = _wrap(label, font, width - 2 * margin)
    line_height = text_height + margin // 2
    band = Image.new("L", (width, len(lines) * line_height + 2 * margin - margin // 2), _BAND)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height), line, fill=_TEXT, font=font)
    array = np.asarray(band, dtype=np.uint8)
    return array if channels == 1 else np.repeat(array[..., None], channels, axis=2)
