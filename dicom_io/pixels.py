"""Pixel data of a CR/DX radiograph to a normalized float32 image.

The pipeline is the grayscale rendering pipeline of DICOM PS3.4 N.2.1.1 (Grayscale
Transformations), built on :mod:`pydicom.pixels`:

1. Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1), ``apply_modality_lut``;
2. VOI LUT Sequence or Window Center/Width (PS3.3 C.11.2), ``apply_voi_lut``;
3. MONOCHROME1 inversion (PS3.3 C.7.6.3.1.2), so that 1.0 always means bright (bone),
4. scaling of the VOI output range to [0, 1].

The result has the same convention as MURA's 8-bit PNGs divided by 255.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class PixelDataError(ValueError):
    """Pixel data that Ossa cannot turn into a grayscale image."""


def check_pixel_module(ds: Dataset) -> None:
    """Validate the Image Pixel module attributes that normalization needs (PS3.3 C.7.6.3).

    Cheap: it reads attributes only and decodes nothing.

    Parameters
    ----------
    ds : pydicom.Dataset
        A CR or DX image instance.

    Raises
    ------
    PixelDataError
        If pixel data is missing, not single-sample grayscale, multi-frame, or an attribute
        needed to decode it is missing.
    """
    if "PixelData" not in ds:
        raise PixelDataError("Pixel Data (7FE0,0010) is missing")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        if ds.get(keyword) is None:
            raise PixelDataError(f"{keyword} is missing")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in _MONOCHROME:
        raise PixelDataError(
            f"PhotometricInterpretation must be MONOCHROME1 or MONOCHROME2, got {photometric!r}"
        )
    if ds.get("SamplesPerPixel", 1) != 1:
        raise PixelDataError(f"SamplesPerPixel must be 1, got {ds.SamplesPerPixel!r}")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise PixelDataError(f"only single-frame radiographs are supported, got {frames} frames")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not syntax.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * ((int(ds.BitsAllocated) + 7) // 8)
        actual = len(ds.PixelData)
        if actual < expected:
            raise PixelDataError(
                f"Pixel Data holds {actual} bytes, Rows x Columns x BitsAllocated needs {expected}"
            )


def normalize_radiograph(ds: Dataset) -> NDArray[np.float32]:
    """Render a CR/DX dataset to a float32 image in [0, 1], 1 = bright.

    Parameters
    ----------
    ds : pydicom.Dataset
        A single-frame grayscale image (CR Image IOD PS3.3 A.2, DX Image IOD PS3.3 A.26).
        The dataset is not modified.

    Returns
    -------
    numpy.ndarray
        2-D float32 array of shape (Rows, Columns) with values in [0, 1].

    Raises
    ------
    PixelDataError
        If the pixel data is missing, not grayscale, or cannot be decoded.

    Notes
    -----
    With a VOI LUT Sequence the first LUT is used; with Window Center/Width the first window
    (PS3.3 C.11.2.1.2). The VOI output range is scaled to [0, 1]. When the dataset has no
    VOI transformation at all, PS3.4 N.2.1.1 leaves the choice to the application; like
    DCMTK's min-max window, the range of the modality values in the image is used.
    """
    check_pixel_module(ds)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for malformed or unsupported data
        raise PixelDataError(f"cannot decode pixel data: {exc}") from exc
    if stored.ndim != 2:
        raise PixelDataError(f"expected a 2-D image, got shape {stored.shape}")

    try:
        values = np.asarray(apply_modality_lut(stored, ds))
        if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # a VOI LUT indexes by integer input
        low, high = _voi_output_range(values, ds)
        rendered = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float64)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise PixelDataError(f"invalid modality or VOI LUT: {exc}") from exc

    if high > low:
        image = (rendered - low) / (high - low)
    else:
        image = np.zeros_like(rendered)
    image = np.clip(image, 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def _voi_output_range(values: NDArray[np.generic], ds: Dataset) -> tuple[float, float]:
    """The range of values the VOI transformation of ``ds`` can produce from ``values``.

    For a VOI LUT, the range of its LUT Data; for a window, the window function applied to
    inputs below and above the window (PS3.3 C.11.2.1.2); without either, the data's range.
    """
    voi_luts = ds.get("VOILUTSequence")
    if voi_luts:
        # Every input the first LUT maps (PS3.3 C.11.2.1.1): its outputs bound the range.
        entries, first, _ = (int(v) for v in voi_luts[0].LUTDescriptor)
        entries = entries or 65536
        inputs = np.arange(first, first + entries, dtype=np.int64)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = _first(ds["WindowCenter"].value)
        width = abs(_first(ds["WindowWidth"].value))
        # Far enough outside the window that LINEAR and SIGMOID functions saturate.
        inputs = np.array([center - 10 * width - 1, center + 10 * width + 1])
    else:
        return float(values.min()), float(values.max())
    ends = np.asarray(apply_voi_lut(inputs, ds, index=0, prefer_lut=True), np.float64)
    return float(ends.min()), float(ends.max())


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued element (VM 1-n, PS3.3 C.11.2)."""
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0])
    return float(value)
