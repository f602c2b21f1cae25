"""Tests of enhancement and preprocessing (models.serving.enhance)."""

from __future__ import annotations

import numpy as np
import pytest

from models.serving.enhance import Preprocessing, check_image, clahe, preprocess, resize_longest


def _ramp(h: int, w: int) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_size": 16}, "input_size"),
        ({"input_size": 96.0}, "input_size"),
        ({"channels": 2}, "channels"),
        ({"clip_limit": 0.0}, "clip_limit"),
        ({"kernel_size": 200}, "kernel_size"),
        ({"nbins": 1}, "nbins"),
        ({"std": 0.0}, "std"),
        ({"mean": float("nan")}, "mean"),
        ({"clahe": "yes"}, "clahe"),
    ],
)
def test_preprocessing_names_the_invalid_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Preprocessing(**kwargs)  # type: ignore[arg-type]


def test_preprocessing_round_trips_through_a_dict() -> None:
    params = Preprocessing(input_size=64, kernel_size=32, clip_limit=0.02, mean=0.5, std=0.25)
    data = params.to_dict()
    assert data["input_size"] == 64 and data["mean"] == 0.5
    assert Preprocessing.from_dict(data) == params
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocessing.from_dict({**data, "gamma": 2.0})
    missing = dict(data)
    del missing["std"]
    with pytest.raises(ValueError, match="lacks keys"):
        Preprocessing.from_dict(missing)
    with pytest.raises(AttributeError):
        params.input_size = 32  # type: ignore[misc]


@pytest.mark.parametrize("shape", [(300, 150), (150, 300), (64, 64), (97, 211)])
def test_preprocess_shape_aspect_and_padding(shape: tuple[int, int]) -> None:
    params = Preprocessing(input_size=64, kernel_size=16)
    image = (0.3 + 0.6 * np.random.default_rng(0).random(shape)).astype(np.float32)
    tensor = preprocess(image, params)
    assert tensor.shape == (1, 64, 64) and tensor.dtype == np.float32
    # the content keeps the aspect ratio; the rest is the normalized black padding
    content = (tensor[0] != params.background)
    rows, cols = np.nonzero(content.any(axis=1))[0], np.nonzero(content.any(axis=0))[0]
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert max(h, w) == 64
    assert min(h, w) == pytest.approx(64 * min(shape) / max(shape), abs=1)
    # centred
    assert abs((rows.min() + rows.max()) / 2 - 31.5) <= 1
    assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1


def test_preprocess_normalizes_and_repeats_channels() -> None:
    image = _ramp(50, 80)
    plain = Preprocessing(input_size=80, kernel_size=16, clahe=False, mean=0.25, std=0.5)
    out = preprocess(image, plain)
    row = out[0, 40]
    assert row[0] == pytest.approx((0.0 - 0.25) / 0.5, abs=0.02)
    assert row[-1] == pytest.approx((1.0 - 0.25) / 0.5, abs=0.02)
    three = preprocess(image, Preprocessing(input_size=80, kernel_size=16, channels=3))
    assert three.shape == (3, 80, 80)
    assert np.array_equal(three[0], three[1]) and np.array_equal(three[1], three[2])


def test_clahe_enhances_local_contrast_and_is_used() -> None:
    rng = np.random.default_rng(0)
    image = (0.45 + 0.05 * rng.random((96, 96))).astype(np.float32)  # flat, low contrast
    enhanced = clahe(image, clip_limit=0.03, kernel_size=16)
    assert enhanced.dtype == np.float32 and enhanced.min() >= 0.0 and enhanced.max() <= 1.0
    assert enhanced.std() > 3 * image.std()
    with_clahe = preprocess(image, Preprocessing(input_size=96, kernel_size=16, clip_limit=0.03))
    without = preprocess(image, Preprocessing(input_size=96, kernel_size=16, clahe=False))
    assert with_clahe.std() > 3 * without.std()


def test_preprocess_is_deterministic() -> None:
    image = np.random.default_rng(1).random((120, 90)).astype(np.float32)
    params = Preprocessing(input_size=48, kernel_size=16)
    assert np.array_equal(preprocess(image, params), preprocess(image.copy(), params))


def test_resize_longest() -> None:
    assert resize_longest(_ramp(200, 100), 50).shape == (50, 25)
    assert resize_longest(_ramp(10, 40), 80).shape == (20, 80)
    same = _ramp(30, 60)
    assert resize_longest(same, 60) is same


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.zeros((10, 10), dtype=np.uint8), TypeError, "floating-point"),
        ([[0.0, 1.0]], TypeError, "floating-point"),
        (np.zeros((4, 4, 3), dtype=np.float32), ValueError, "2-D"),
        (np.zeros((1, 10), dtype=np.float32), ValueError, "2-D"),
        (np.full((4, 4), np.nan, dtype=np.float32), ValueError, "non-finite"),
        (np.where(np.eye(4) > 0, np.nan, 0.5).astype(np.float32), ValueError, "non-finite"),
        (np.where(np.eye(4) > 0, np.inf, 0.5), ValueError, "non-finite"),
        (np.where(np.eye(4) > 0, -np.inf, 0.5), ValueError, "non-finite"),
        (np.full((4, 4), 2.0, dtype=np.float32), ValueError, r"\[0, 1\]"),
        (np.full((4, 4), -0.5, dtype=np.float64), ValueError, r"\[0, 1\]"),
    ],
)
def test_check_image_rejects_bad_input(image: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_image(image)


def test_check_image_accepts_rounding_and_converts() -> None:
    image = np.full((4, 4), 1.0005, dtype=np.float64)
    checked = check_image(image)
    assert checked.dtype == np.float32 and checked.max() == 1.0
    inside = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    assert check_image(inside) is inside  # a float32 image in [0, 1] is not copied


def test_resize_matches_torchvision_antialiased_bilinear() -> None:
    """Pillow's float resize is the filter training used to get from torch (antialias=True)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F  # noqa: N812

    image = np.random.default_rng(3).random((300, 200)).astype(np.float32)
    ours = resize_longest(image, 96)
    theirs = F.interpolate(torch.from_numpy(image)[None, None], size=ours.shape,
                           mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    assert np.abs(ours - np.clip(theirs, 0, 1)).max() < 1e-5


def test_working_side_is_the_input_size_or_the_larger_display() -> None:
    params = Preprocessing(input_size=224, kernel_size=56)
    assert params.working_side() == 224
    assert params.working_side(1024) == 1024
    assert params.working_side(100) == 224


def test_geometry_maps_input_boxes_back_to_the_source() -> None:
    from models.serving.enhance import preprocess_with_geometry

    image = np.zeros((200, 100), np.float32)
    image[50:70, 20:40] = 1.0  # a bright square at rows 50-70, columns 20-40
    params = Preprocessing(input_size=64, kernel_size=16, clahe=False)
    array, geometry = preprocess_with_geometry(image, params)
    assert geometry.source_shape == (200, 100) and geometry.crop == (0, 0, 200, 100)
    assert geometry.scale_y == pytest.approx(64 / 200) and geometry.pad_left == 16
    # where the square landed in the input, mapped back, is where it was
    rows, cols = np.nonzero(array[0] > (0.5 - params.mean) / params.std)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    x0, y0, x1, y1 = geometry.to_source(box)
    assert (x0, y0, x1, y1) == pytest.approx((20, 50, 40, 70), abs=200 / 64)
    assert geometry.to_input(geometry.to_source((16.0, 8.0, 40.0, 30.0))) == pytest.approx(
        (16.0, 8.0, 40.0, 30.0))
    # boxes on the padding are clipped to the image
    assert geometry.to_source((0, 0, 8, 64)) == pytest.approx((0, 0, 0, 200))


def test_foreground_crop_drops_the_collimation_border() -> None:
    from models.serving.enhance import foreground_box, preprocess_with_geometry

    rng = np.random.default_rng(0)
    image = np.zeros((300, 400), np.float32)
    image[60:240, 100:320] = rng.uniform(0.3, 0.9, (180, 220)).astype(np.float32)
    top, left, bottom, right = foreground_box(image)
    assert 50 <= top <= 60 and 240 <= bottom <= 250 and 90 <= left <= 100 and 320 <= right <= 330
    params = Preprocessing(input_size=64, kernel_size=16, crop_foreground=True)
    _, geometry = preprocess_with_geometry(image, params)
    assert geometry.crop == (top, left, bottom, right)
    # the exposed field now fills the input's width
    assert geometry.scale_x == pytest.approx(64 / (right - left), rel=0.02)
    assert geometry.to_source((0, geometry.pad_top, 64, 64 - geometry.pad_top))[0] == \
        pytest.approx(left, abs=1)
    # a blank image, or a "field" too small to trust, is kept whole
    assert foreground_box(np.zeros((50, 50), np.float32)) == (0, 0, 50, 50)
    speck = np.zeros((100, 100), np.float32)
    speck[10:20, 10:20] = 1.0
    assert foreground_box(speck) == (0, 0, 100, 100)
