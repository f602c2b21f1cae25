"""Image enhancement and the one preprocessing function shared by training and inference.

El-Saadawy et al. (AICV 2020) enhance each radiograph with adaptive histogram equalization
before classification. Here the image is first resized (keeping its aspect ratio) so that its
longest side equals the network input size, then enhanced with CLAHE (that of
:func:`skimage.exposure.equalize_adapthist`, computed faster by :mod:`models.serving.clahe`),
padded to a square with the dark background and normalized. The parameters live in
:class:`Preprocessing`, which a model bundle stores in its manifest: inference always
preprocesses exactly as the weights were trained.

Only numpy, Pillow and scikit-image are used: the serving path never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from models.serving.clahe import equalize_adapthist

#: Tolerance on the [0, 1] range of input images (rounding in upstream conversions).
_RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of :func:`preprocess`; stored in the model bundle's manifest.

    Parameters
    ----------
    input_size : int
        Side of the square network input, in pixels.
    channels : int
        Channels of the network input (1, or 3 for an RGB-shaped first layer); the grey image
        is repeated across channels.
    clahe : bool
        Whether to apply CLAHE after resizing.
    clip_limit : float
        CLAHE clip limit in (0, 1] (``equalize_adapthist``'s ``clip_limit``).
    kernel_size : int
        CLAHE tile side in pixels of the resized image.
    nbins : int
        CLAHE histogram bins.
    mean, std : float
        Normalization: ``(x - mean) / std`` after enhancement and padding. The defaults are the
        grey-level equivalent of the ImageNet statistics.
    crop_foreground : bool
        Crop the image to its exposed field (:func:`foreground_box`: the collimated area,
        without the dark border) before resizing, so that the network's pixels go to anatomy.
    """

    input_size: int = 112
    channels: int = 1
    clahe: bool = True
    clip_limit: float = 0.01
    kernel_size: int = 16
    nbins: int = 256
    mean: float = 0.449
    std: float = 0.226
    crop_foreground: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or not (
            32 <= self.input_size <= 1024
        ):
            raise ValueError(
                f"input_size must be an integer in [32, 1024], got {self.input_size!r}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.clahe, bool):
            raise ValueError(f"clahe must be a bool, got {self.clahe!r}")
        if not _is_number(self.clip_limit) or not 0.0 < self.clip_limit <= 1.0:
            raise ValueError(f"clip_limit must be in (0, 1], got {self.clip_limit!r}")
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, int) or not (
            2 <= self.kernel_size <= self.input_size
        ):
            raise ValueError(
                f"kernel_size must be an integer in [2, input_size], got {self.kernel_size!r}"
            )
        if isinstance(self.nbins, bool) or not isinstance(self.nbins, int) or self.nbins < 2:
            raise ValueError(f"nbins must be an integer >= 2, got {self.nbins!r}")
        if not _is_number(self.mean):
            raise ValueError(f"mean must be a finite number, got {self.mean!r}")
        if not _is_number(self.std) or self.std <= 0:
            raise ValueError(f"std must be a positive number, got {self.std!r}")
        if not isinstance(self.crop_foreground, bool):
            raise ValueError(f"crop_foreground must be a bool, got {self.crop_foreground!r}")

    @property
    def background(self) -> float:
        """Normalized value of a black (0) pixel: the padding value of the network input."""
        return (0.0 - self.mean) / self.std

    def working_side(self, display_side: int | None = None) -> int:
        """Longest side an image needs before :func:`preprocess`: the network's input size,
        or ``display_side`` where the image is also shown larger (a secondary capture,
        :data:`dicom_io.capture.draw.MAX_SIDE`). The ``max_side`` of
        :func:`dicom_io.pixels.normalize_radiograph`."""
        return max(self.input_size, display_side or 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a bundle manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocessing must be a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"preprocessing has unknown keys: {sorted(unknown)}")
        missing = names - set(data)
        if missing:
            raise ValueError(f"preprocessing lacks keys: {sorted(missing)}")
        return cls(**data)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


def check_image(image: object, name: str = "image") -> NDArray[np.float32]:
    """Validate a radiograph given as a 2-D float array in [0, 1] and return it as float32.

    Raises
    ------
    TypeError
        When ``image`` is not a floating-point numpy array.
    ValueError
        When it is not 2-D, is empty, holds non-finite values or leaves [0, 1].
    """
    if not isinstance(image, np.ndarray) or not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point numpy array in [0, 1]")
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"{name} must be 2-D with both sides >= 2, got shape {image.shape}")
    low, high = float(image.min()), float(image.max())  # NaN propagates to both
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} holds non-finite values")
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must lie in [0, 1] (1 = bright bone), got [{low:.4g}, {high:.4g}]"
        )
    if low < 0.0 or high > 1.0:  # within the tolerance: clipped
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    return image.astype(np.float32, copy=False)  # not copied: callers do not write to it


def clahe(image: NDArray[np.floating], *, clip_limit: float, kernel_size: int,
          nbins: int = 256) -> NDArray[np.float32]:
    """Contrast-limited adaptive histogram equalization of a [0, 1] image.

    The result of :func:`skimage.exposure.equalize_adapthist`, value for value, computed by
    :func:`models.serving.clahe.equalize_adapthist` in less than half its time.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image in [0, 1].
    clip_limit : float
        Clip limit in (0, 1].
    kernel_size : int
        Tile side in pixels (clamped to the image size).
    nbins : int
        Histogram bins.

    Returns
    -------
    numpy.ndarray
        float32 enhanced image in [0, 1].
    """
    kernel = (min(kernel_size, image.shape[0]), min(kernel_size, image.shape[1]))
    out = equalize_adapthist(np.clip(image, 0.0, 1.0), kernel, clip_limit, nbins)
    return np.asarray(out, dtype=np.float32)


def resize_longest(image: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """Resize so that the longest side is ``size``, keeping the aspect ratio.

    Pillow's bilinear filter on a 32-bit float image; it widens its support when shrinking,
    so downscaling is antialiased (the filter torchvision's ``antialias=True`` reproduces).
    """
    h, w = image.shape
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    if new == (h, w):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
        (new[1], new[0]), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class InputGeometry:
    """Where a network input's pixels come from in the image given to :func:`preprocess`.

    The input is the source image cropped to ``crop`` (top, left, bottom, right; exclusive
    ends), resized by ``scale_y`` / ``scale_x`` (input pixels per source pixel) and placed at
    ``pad_top`` / ``pad_left`` in the square. Coordinates are continuous pixel positions
    (x = column, y = row; pixel (r, c) spans [c, c + 1) x [r, r + 1)).

    Parameters
    ----------
    source_shape : tuple of int
        Rows and columns of the source image.
    crop : tuple of int
        The kept part of the source image.
    scale_y, scale_x : float
        Resize factors.
    pad_top, pad_left : int
        Offset of the resized image in the square input.
    """

    source_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    scale_y: float
    scale_x: float
    pad_top: int
    pad_left: int

    def to_source(self, box: tuple[float, float, float, float]
                  ) -> tuple[float, float, float, float]:
        """An (x0, y0, x1, y1) box in input pixels as source pixels, clipped to the image."""
        x0, y0, x1, y1 = box
        top, left = self.crop[0], self.crop[1]
        rows, cols = self.source_shape

        def sx(x: float) -> float:
            return min(max((x - self.pad_left) / self.scale_x + left, 0.0), float(cols))

        def sy(y: float) -> float:
            return min(max((y - self.pad_top) / self.scale_y + top, 0.0), float(rows))

        return sx(x0), sy(y0), sx(x1), sy(y1)

    def to_input(self, box: tuple[float, float, float, float]
                 ) -> tuple[float, float, float, float]:
        """An (x0, y0, x1, y1) box in source pixels as input pixels (not clipped)."""
        x0, y0, x1, y1 = box
        top, left = self.crop[0], self.crop[1]
        return ((x0 - left) * self.scale_x + self.pad_left,
                (y0 - top) * self.scale_y + self.pad_top,
                (x1 - left) * self.scale_x + self.pad_left,
                (y1 - top) * self.scale_y + self.pad_top)


#: A row or column belongs to the exposed field when this share of its pixels is brighter
#: than :data:`_FIELD_LEVEL` of the image's 99th percentile.
_FIELD_SHARE = 0.02
_FIELD_LEVEL = 0.15
#: Margin kept around the exposed field, as a share of each side.
_FIELD_MARGIN = 0.02
#: A field smaller than this share of the image is not trusted (the whole image is kept).
_MIN_FIELD_AREA = 0.25
#: The 99th percentile of an image larger than this (a radiograph rendered for the
#: secondary capture) is that of every k-th row and column, k the smallest step that keeps
#: at most this many pixels: a training image (FracAtlas', MURA's) is not subsampled.
_PERCENTILE_PIXELS = 1 << 18


def foreground_box(image: NDArray[np.floating]) -> tuple[int, int, int, int]:
    """The exposed field of a radiograph: (top, left, bottom, right), exclusive ends.

    Rows and columns where at least 2% of the pixels exceed 15% of the image's 99th
    percentile (of a regular subsample of a large image) are exposed; the box spans the
    first to the last of them, with a 2% margin.
    The dark border left by collimation (and black padding of scanned films) falls outside.
    When the box would keep under a quarter of the image, or the image is blank, the whole
    image is returned: a crop that drastic is more likely a dark film than a border.
    """
    rows, cols = image.shape
    whole = (0, 0, rows, cols)
    step = math.ceil(math.sqrt(image.size / _PERCENTILE_PIXELS))
    level = float(np.percentile(image[::step, ::step], 99)) * _FIELD_LEVEL
    if level <= 0:
        return whole
    bright = image > level
    row_on = np.flatnonzero(np.count_nonzero(bright, axis=1) >= _FIELD_SHARE * cols)
    col_on = np.flatnonzero(np.count_nonzero(bright, axis=0) >= _FIELD_SHARE * rows)
    if row_on.size == 0 or col_on.size == 0:
        return whole
    my, mx = round(rows * _FIELD_MARGIN), round(cols * _FIELD_MARGIN)
    top, bottom = max(int(row_on[0]) - my, 0), min(int(row_on[-1]) + 1 + my, rows)
    left, right = max(int(col_on[0]) - mx, 0), min(int(col_on[-1]) + 1 + mx, cols)
    if (bottom - top) * (right - left) < _MIN_FIELD_AREA * rows * cols:
        return whole
    return top, left, bottom, right


def preprocess_with_geometry(image: NDArray[np.floating], params: Preprocessing
                             ) -> tuple[NDArray[np.float32], InputGeometry]:
    """:func:`preprocess`, with where each input pixel comes from (:class:`InputGeometry`)."""
    source = check_image(image)
    crop = foreground_box(source) if params.crop_foreground else (0, 0, *source.shape)
    top0, left0, bottom0, right0 = crop
    array = resize_longest(source[top0:bottom0, left0:right0], params.input_size)
    if params.clahe:
        array = clahe(array, clip_limit=params.clip_limit, kernel_size=params.kernel_size,
                      nbins=params.nbins)
    size = params.input_size
    h, w = array.shape
    top, left = (size - h) // 2, (size - w) // 2
    square = np.zeros((size, size), dtype=np.float32)
    square[top : top + h, left : left + w] = array
    normalized = (square - np.float32(params.mean)) / np.float32(params.std)
    geometry = InputGeometry(source_shape=(int(source.shape[0]), int(source.shape[1])),
                             crop=(top0, left0, bottom0, right0),
                             scale_y=h / (bottom0 - top0), scale_x=w / (right0 - left0),
                             pad_top=top, pad_left=left)
    return np.ascontiguousarray(
        np.broadcast_to(normalized, (params.channels, size, size)), dtype=np.float32
    ), geometry


def preprocess(image: NDArray[np.floating], params: Preprocessing) -> NDArray[np.float32]:
    """Turn a radiograph into a network input array.

    Steps: crop to the exposed field (when ``params.crop_foreground``), resize keeping the
    aspect ratio (longest side = ``params.input_size``), CLAHE (when ``params.clahe``), pad to
    a centred square with black, normalize with ``params.mean``/``params.std``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image in [0, 1], 1 = bright (bone), as PNG/255 or the DICOM pipeline gives.
    params : Preprocessing
        Parameters, normally read from a bundle manifest.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(params.channels, input_size, input_size)`` (C-contiguous;
        ``torch.from_numpy`` turns it into a training tensor without a copy).
    """
    return preprocess_with_geometry(image, params)[0]
