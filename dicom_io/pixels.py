"""Pixel data of a grayscale radiograph to a normalized float32 image.

The pipeline is the grayscale rendering pipeline of DICOM PS3.4 N.2.1.1 (Grayscale
Transformations), built on :mod:`pydicom.pixels`:

1. decoding, in any transfer syntax of :mod:`dicom_io.transfer_syntax`. When Bits Stored is
   below Bits Allocated, pydicom keeps only the stored bits (PS3.5 8.1.1: the others may hold
   anything, such as an overlay) and sign-extends signed pixels (Pixel Representation 1);
2. Pixel Padding Value, with Pixel Padding Range Limit when present (PS3.3 C.7.5.1.1.2): the
   padding pixels are found in the stored values, left out of every range computed from the
   data, and rendered 0 (black) at the end;
3. Modality LUT Sequence or Rescale Slope/Intercept (PS3.3 C.11.1), ``apply_modality_lut``;
4. VOI LUT Sequence, or Window Center/Width with the VOI LUT Function LINEAR,
   LINEAR_EXACT or SIGMOID (PS3.3 C.11.2), ``apply_voi_lut``; of several LUTs or windows the
   first is used;
5. polarity: MONOCHROME1 (PS3.3 C.7.6.3.1.2) or Presentation LUT Shape INVERSE inverts, so
   that 1.0 always means bright (bone). A DX image declares INVERSE together with
   MONOCHROME1 for the same inversion (PS3.3 C.8.11.6.1.2), so the image is inverted once;
6. scaling of the VOI output range to [0, 1].

The result has the same convention as MURA's 8-bit PNGs divided by 255.

Reduced-resolution decoding of JPEG 2000 (decoding only the wavelet levels the model needs) is
not done: none of pydicom 3.0's decoder plugins takes a reduction factor (pylibjpeg-openjpeg
2.6's ``decode`` has none; Pillow's JPEG 2000 plugin has one but rescales the precision and
fails on the NEMA WG04 CR ``RG1_J2KR`` at reduce=2), so every image is decoded at full size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID

from dicom_io.transfer_syntax import decoder_available

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class PixelDataError(ValueError):
    """Pixel data that Ossa cannot turn into a grayscale image; the message names the
    transfer syntax or the attribute at fault."""


def check_pixel_module(ds: Dataset) -> None:
    """Validate the Image Pixel module attributes that normalization needs (PS3.3 C.7.6.3).

    Cheap: it reads attributes only and decodes nothing.

    Parameters
    ----------
    ds : pydicom.Dataset
        A CR, DX or secondary capture image instance.

    Raises
    ------
    PixelDataError
        If pixel data is missing, not single-sample grayscale, multi-frame, shorter than its
        attributes say, in a transfer syntax this install cannot decode, or an attribute
        needed to decode it is missing. The message starts with the attribute at fault.
    """
    if "PixelData" not in ds:
        raise PixelDataError("PixelData (7FE0,0010) is missing")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        if ds.get(keyword) is None:
            raise PixelDataError(f"{keyword} is missing")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in _MONOCHROME:
        raise PixelDataError(f"PhotometricInterpretation is {photometric!r}, not MONOCHROME1/2")
    samples = ds.get("SamplesPerPixel", 1)
    if samples != 1:
        raise PixelDataError(f"SamplesPerPixel is {samples!r}, not 1")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise PixelDataError(f"NumberOfFrames is {frames}; only single-frame images are read")
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if not 1 <= stored <= allocated:
        raise PixelDataError(f"BitsStored is {stored}, not 1 to BitsAllocated ({allocated})")
    syntax = _transfer_syntax(ds)
    if syntax is None:
        raise PixelDataError("TransferSyntaxUID (0002,0010) is missing: encoding unknown")
    if not decoder_available(syntax):
        raise PixelDataError(f"no decoder for {_name(syntax)} is installed")
    if not syntax.is_encapsulated:
        expected = (int(ds.Rows) * int(ds.Columns) * allocated + 7) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise PixelDataError(
                f"PixelData holds {actual} bytes; Rows x Columns x BitsAllocated need {expected}"
            )


def normalize_radiograph(ds: Dataset) -> NDArray[np.float32]:
    """Render a grayscale radiograph dataset to a float32 image in [0, 1], 1 = bright.

    Parameters
    ----------
    ds : pydicom.Dataset
        A single-frame grayscale image (CR Image IOD PS3.3 A.2, DX Image IOD PS3.3 A.26,
        Secondary Capture Image IOD PS3.3 A.8.1) with its file meta information. It is not
        modified, and the decoded pixels are not cached on it.

    Returns
    -------
    numpy.ndarray
        2-D float32 array of shape (Rows, Columns) with values in [0, 1]; padding pixels
        are 0.

    Raises
    ------
    PixelDataError
        If the pixel data is missing, not grayscale, cannot be decoded (the message names
        the transfer syntax), or its modality or VOI LUT is invalid.

    Notes
    -----
    With a VOI LUT Sequence the first LUT is used; with several Window Center/Width values,
    the first window (PS3.3 C.11.2.1.2). The VOI output range is scaled to [0, 1]. When the
    dataset has no VOI transformation at all, PS3.4 N.2.1.1 leaves the choice to the
    application; like DCMTK's min-max window, the range of the modality values of the
    non-padding pixels is used.
    """
    check_pixel_module(ds)
    stored = _decode(ds)
    padding = _padding_mask(stored, ds)
    if padding is not None and padding.all():
        raise PixelDataError("PixelPaddingValue: every pixel is padding")

    try:
        values = np.asarray(apply_modality_lut(stored, ds))
        if _has_voi_lut(ds) or (
            values.dtype.kind == "f" and np.array_equal(values, np.round(values))
        ):
            values = np.rint(values).astype(np.int64)  # a VOI LUT indexes by integer input
        low, high = _voi_output_range(values, ds, padding)
        rendered = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float64)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise PixelDataError(f"invalid Modality LUT or VOI LUT: {exc}") from exc

    if high > low:
        image = (rendered - low) / (high - low)
    else:
        image = np.zeros_like(rendered)
    image = np.clip(image, 0.0, 1.0)
    if _inverted(ds):
        image = 1.0 - image
    if padding is not None:
        image[padding] = 0.0
    return image.astype(np.float32)


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(syntax) if syntax else None


def _name(syntax: UID) -> str:
    """``"JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)"``; the UID alone if unknown."""
    name = syntax.name
    return f"{name} ({syntax})" if name != str(syntax) else str(syntax)


def _decode(ds: Dataset) -> NDArray[Any]:
    """The stored values of the single frame of ``ds``, high bits masked (by pydicom)."""
    syntax = _transfer_syntax(ds)
    assert syntax is not None  # check_pixel_module refuses a dataset without one
    try:
        stored, _ = get_decoder(syntax).as_array(ds)
    except Exception as exc:  # pydicom and its plugins raise many types for corrupt data
        raise PixelDataError(f"{_name(syntax)} pixel data cannot be decoded: {exc}") from exc
    if stored.ndim != 2:
        raise PixelDataError(
            f"{_name(syntax)} pixel data decoded to shape {stored.shape}, not one 2-D frame"
        )
    return stored


def _stored_value(value: Any, ds: Dataset) -> int:
    """A US or SS attribute (Pixel Padding Value, Range Limit) as a stored pixel value:
    for signed pixels a value written as US is read as Bits Stored two's complement."""
    if isinstance(value, bytes):  # an ambiguous VR pydicom could not resolve
        signed = int(ds.PixelRepresentation) == 1
        value = int.from_bytes(value[:2], "little", signed=signed)
    number = int(value)
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1 and number >= 1 << (bits - 1):
        number = (number & ((1 << bits) - 1)) - (1 << bits)
    return number


def _padding_mask(stored: NDArray[Any], ds: Dataset) -> NDArray[np.bool_] | None:
    """Pixels equal to Pixel Padding Value, or between it and Pixel Padding Range Limit
    inclusive (PS3.3 C.7.5.1.1.2); None when the dataset declares no padding."""
    try:
        padding = ds.get("PixelPaddingValue")
        limit = ds.get("PixelPaddingRangeLimit")
        if padding is None:
            return None
        first = _stored_value(padding, ds)
        if limit is None:
            return np.asarray(stored == first)
        low, high = sorted((first, _stored_value(limit, ds)))
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"PixelPaddingValue or PixelPaddingRangeLimit: {exc}") from exc
    return np.asarray((stored >= low) & (stored <= high))


def _inverted(ds: Dataset) -> bool:
    """Whether low output values are bright: MONOCHROME1, or Presentation LUT Shape INVERSE
    (once, even when both are given, as a DX MONOCHROME1 image must)."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return bool(ds.PhotometricInterpretation == "MONOCHROME1" or shape == "INVERSE")


def _has_voi_lut(ds: Dataset) -> bool:
    """Whether ``apply_voi_lut`` will use a VOI LUT Sequence item (pydicom's own test)."""
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (
        items[0].get("LUTDescriptor"),
        items[0].get("LUTData"),
    )


def _voi_output_range(
    values: NDArray[np.generic], ds: Dataset, padding: NDArray[np.bool_] | None
) -> tuple[float, float]:
    """The range of values the VOI transformation of ``ds`` can produce from ``values``.

    For a VOI LUT, the range of its LUT Data; for a window, the window function applied to
    inputs below and above the window (PS3.3 C.11.2.1.2); without either, the range of the
    non-padding ``values``.
    """
    if _has_voi_lut(ds):
        # Every input the first LUT maps (PS3.3 C.11.2.1.1): its outputs bound the range.
        entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        entries = entries or 65536
        inputs = np.arange(first, first + entries, dtype=np.int64)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center = _first(ds.WindowCenter)
        width = abs(_first(ds.WindowWidth))
        # Far enough outside the window that LINEAR and SIGMOID functions saturate.
        inputs = np.array([center - 10 * width - 1, center + 10 * width + 1])
    else:
        image = values if padding is None else values[~padding]
        return float(image.min()), float(image.max())
    ends = np.asarray(apply_voi_lut(inputs, ds, index=0, prefer_lut=True), np.float64)
    return float(ends.min()), float(ends.max())


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued element (VM 1-n, PS3.3 C.11.2)."""
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0])
    return float(value)
