"""Tests of dicom_io.capture.draw: the capture's picture as a pure image function (a film in,
8-bit pixels out, no DICOM). The Secondary Capture built around it: tests/test_capture.py."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from dicom_io.capture.draw import (
    OUTLINE_COLOR,
    OUTLINE_WIDTH,
    display_film,
    display_size,
    draw_findings,
    label_band,
    render,
)
from models.serving.findings import Finding

LABEL = "Ossa research use - not for diagnosis - ABNORMAL p=0.87 - WRIST"
#: A 300 x 200 film is shown at 512 x 341 (longest side 512).
SHOWN = (512, 341)
GREY = 120


def outline_mask(outer: tuple[int, int, int, int], shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Mask of an outline ``OUTLINE_WIDTH`` wide whose outer edge is ``outer`` (inclusive
    left, top, right, bottom)."""
    left, top, right, bottom = outer
    mask = np.zeros(shape, dtype=bool)
    mask[top : bottom + 1, left : right + 1] = True
    w = OUTLINE_WIDTH
    mask[top + w : bottom + 1 - w, left + w : right + 1 - w] = False
    return mask


def is_outline(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Where ``rgb`` (``... x 3``) has the outline colour."""
    return np.all(rgb == np.array(OUTLINE_COLOR, dtype=np.uint8), axis=-1)


def _film(rows: int = 300, columns: int = 200) -> NDArray[np.uint8]:
    return np.full((rows, columns), GREY, dtype=np.uint8)


def _changed(drawn: NDArray[np.uint8], film: NDArray[np.uint8]) -> NDArray[np.bool_]:
    return np.any(drawn != film[..., None], axis=-1)



# --- render: film, findings and label to pixels -----------------------------------------------


def test_render_without_findings_is_the_film_then_the_label_band() -> None:
    """No finding: one grey channel, the film as :func:`display_film` shows it, then the
    label band below it, white text on black; the film given is not modified."""
    film = np.random.default_rng(6).random((300, 200), dtype=np.float32)
    before = film.copy()
    pixels = render(film, [], LABEL, source_size=(300, 200))
    band = label_band(LABEL, SHOWN[1], 1)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (SHOWN[0] + band.shape[0], SHOWN[1])
    np.testing.assert_array_equal(pixels[: SHOWN[0]], display_film(film, SHOWN))
    np.testing.assert_array_equal(pixels[SHOWN[0] :], band)
    assert int((band > 200).sum()) > 100 and int((band == 0).sum()) > band.size // 2
    np.testing.assert_array_equal(film, before)
    np.testing.assert_array_equal(render(film, [], LABEL, source_size=(300, 200)), pixels)


def test_render_outlines_a_finding_given_in_source_pixels() -> None:
    """A 600 x 400 source rendered at 300 x 200 and shown at 512 x 341: RGB, the outline
    where the finding's box falls on the shown film, its text just above it, every other film
    pixel its own grey, and the label band on every channel below."""
    film = np.full((300, 200), GREY / 255.0, dtype=np.float32)
    pixels = render(film, [Finding(100.0, 120.0, 220.0, 300.0, 0.5)], LABEL,
                    source_size=(600, 400))
    band = label_band(LABEL, SHOWN[1], 1)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (SHOWN[0] + band.shape[0], SHOWN[1], 3)
    shown = pixels[: SHOWN[0]]
    left, top, right, bottom = 85, 102, 187, 255  # the box, scaled by 341/400 and 512/600
    outline = outline_mask((left - 3, top - 3, right + 3, bottom + 3), SHOWN)
    assert is_outline(shown[outline]).all()
    assert (shown[top : bottom + 1, left : right + 1] == GREY).all()  # the boxed region
    text = np.zeros(SHOWN, dtype=bool)
    text[top - 3 - 40 : top - 3, left - 3 : left - 3 + 120] = True
    assert int((np.any(shown != GREY, axis=-1) & text).sum()) > 20  # "1: 0.50"
    assert (shown[~outline & ~text] == GREY).all()
    for channel in range(3):
        np.testing.assert_array_equal(pixels[SHOWN[0] :, :, channel], band)


def test_render_rejects_what_is_not_a_film_or_a_size() -> None:
    film = np.full((30, 20), 0.5, dtype=np.float32)
    finding = Finding(2.0, 2.0, 10.0, 10.0, 0.5)
    with pytest.raises(TypeError, match="floating-point numpy array"):
        render(np.full((30, 20), 128, dtype=np.uint8), [], LABEL, source_size=(30, 20))
    with pytest.raises(ValueError, match="must lie in"):
        render(film * 3, [], LABEL, source_size=(30, 20))
    with pytest.raises(ValueError, match="2-D"):
        render(np.full((30, 20, 3), 0.5, dtype=np.float32), [], LABEL, source_size=(30, 20))
    with pytest.raises(ValueError, match="source_size must be two positive sizes"):
        render(film, [finding], LABEL, source_size=(0, 20))


# --- the steps: display size, film, findings --------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((64, 48), (512, 384)), ((300, 200), SHOWN), ((2048, 1536), (1024, 768)), ((700, 900),
                                                                                (700, 900))],
)
def test_display_size_clamps_the_longest_side(
    shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert display_size(shape) == expected


def test_display_film_resizes_once_in_8_bits() -> None:
    """Shrinking averages areas: a 2x reduction gives the 2 x 2 block means of the 8-bit
    values, and is within one grey level of resampling the floats; the same size is the image
    quantised; enlarging stays within the image's range."""
    image = np.random.default_rng(5).random((300, 200), dtype=np.float32)
    shrunk = display_film(image, (150, 100))
    assert shrunk.dtype == np.uint8 and shrunk.shape == (150, 100)
    quantised = np.round(image * 255.0)
    blocks = quantised.reshape(150, 2, 100, 2).mean(axis=(1, 3))
    assert np.abs(shrunk - blocks).max() <= 1.0
    floats = np.asarray(Image.fromarray(image, mode="F").resize((100, 150), Image.Resampling.BOX))
    assert np.abs(shrunk.astype(np.int16) - np.round(floats * 255.0)).max() <= 1
    np.testing.assert_array_equal(display_film(image, (300, 200)),
                                  np.round(image * 255.0).astype(np.uint8))
    ramp = np.tile(np.linspace(0.2, 0.6, 64, dtype=np.float32), (48, 1))
    enlarged = display_film(ramp, (512, 683))
    assert enlarged.shape == (512, 683)
    assert round(0.2 * 255) <= enlarged.min() and enlarged.max() <= round(0.6 * 255)
    assert (np.diff(enlarged.astype(np.int16), axis=1) >= 0).all()  # a ramp stays a ramp


def test_draw_findings_outlines_the_box_just_outside_it() -> None:
    """A box over columns 50-149, rows 60-139: a yellow ring 3 px wide around it, nothing
    inside it, and nothing elsewhere but the text above the ring."""
    film = _film()
    drawn = draw_findings(film, [(50.0, 60.0, 150.0, 140.0)], [0.74])
    assert drawn.shape == (300, 200, 3) and drawn.dtype == np.uint8
    ring = outline_mask((47, 57, 152, 142), film.shape)
    assert is_outline(drawn[ring]).all()
    changed = _changed(drawn, film)
    assert not changed[60:140, 50:150].any()
    outside = changed & ~ring
    rows, columns = np.nonzero(outside)
    assert rows.size > 20
    assert 57 - 40 < rows.min() and rows.max() < 57  # the text, just above the outline
    assert columns.min() >= 47 and columns.max() < 47 + 100
    # Film pixels are grey (R = G = B): the outline colour is not one of them.
    assert len(set(OUTLINE_COLOR)) > 1


def test_draw_findings_takes_float_film_and_rounds_as_uint8() -> None:
    film = np.random.default_rng(0).integers(0, 256, (120, 90), dtype=np.uint8)
    boxes, probabilities = [(10.4, 20.6, 50.2, 70.9)], [0.5]
    np.testing.assert_array_equal(
        draw_findings(film.astype(np.float32) / 255.0, boxes, probabilities),
        draw_findings(film, boxes, probabilities),
    )


def test_draw_findings_without_boxes_is_the_film_in_rgb() -> None:
    film = np.random.default_rng(1).integers(0, 256, (50, 70), dtype=np.uint8)
    np.testing.assert_array_equal(draw_findings(film, [], []), np.repeat(film[..., None], 3, 2))
    # A box wholly outside the image is not drawn.
    np.testing.assert_array_equal(
        draw_findings(film, [(80.0, 10.0, 90.0, 20.0)], [0.9]), np.repeat(film[..., None], 3, 2)
    )


@pytest.mark.parametrize(
    "box",
    [(150.0, 260.0, 200.0, 300.0), (0.0, 0.0, 40.0, 30.0), (80.0, 0.0, 120.0, 20.0),
     (0.0, 150.0, 200.0, 300.0)],
    ids=["bottom-right", "top-left", "top", "bottom-half"],
)
def test_draw_findings_keeps_the_text_inside_the_image(
    box: tuple[float, float, float, float],
) -> None:
    """Wherever the box lies, its whole text is drawn (as many pixels as in the open) and the
    outline runs along the image's edge where the box reaches it."""
    film = _film()
    in_the_open = _changed(draw_findings(film, [(50.0, 100.0, 150.0, 140.0)], [0.74]), film)
    open_text = int((in_the_open & ~outline_mask((47, 97, 152, 142), film.shape)).sum())
    drawn = draw_findings(film, [box], [0.74])
    x0, y0, x1, y1 = (round(v) for v in box)
    outer = (max(0, x0 - 3), max(0, y0 - 3), min(199, x1 + 2), min(299, y1 + 2))
    ring = outline_mask(outer, film.shape)
    assert is_outline(drawn[ring]).all()
    text = _changed(drawn, film) & ~ring & ~is_outline(drawn)
    assert int(text.sum()) == pytest.approx(open_text, rel=0.05)


def test_draw_findings_rejects_mismatched_arguments() -> None:
    with pytest.raises(ValueError, match="probabilities must have one value per box"):
        draw_findings(_film(), [(1.0, 1.0, 5.0, 5.0)], [])
    with pytest.raises(ValueError, match="image must be a non-empty 2-D array"):
        draw_findings(np.zeros((4, 4, 3), dtype=np.uint8), [], [])
    with pytest.raises(ValueError, match="a box must be finite with x0 < x1"):
        draw_findings(_film(), [(5.0, 1.0, 5.0, 5.0)], [0.5])
