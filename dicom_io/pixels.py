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

Reduced resolution. The network sees an image whose longest side is its input size (224 px
for the shipped bundle) and a secondary capture shows at most 1024 px, so a 3000 x 2500
radiograph need not be rendered at full size. Given ``max_side``, the stored values are
reduced by the largest integer factor that keeps the longest side at least ``max_side``, as
the mean of each block of stored values (area-weighted, padding left out), before steps 3-6:
the LUTs run on the reduced array. The result agrees with resizing the full-resolution
rendering by area averaging wherever the transformation is close to linear over a block; a
block straddling the edge of a window or a steep part of a LUT or SIGMOID gives the value of
its mean rather than the mean of its values. JPEG 2000 (PS3.5 A.4.4) is decoded at a reduced
resolution when the reduction allows it: the wavelet levels above it are not decoded (ISO/IEC
15444-1 discards the highest resolution levels; the remaining low-pass band is close to a
2^levels block mean). pydicom 3.0's decoder plugins take no reduction factor (pylibjpeg-openjpeg
2.6's ``decode`` has none), so this uses Pillow's JPEG 2000 plugin (OpenJPEG's ``reduce``)
directly, with pydicom's own correction of Pillow's precision scaling and sign, and only by
levels where Pillow's rounding of the reduced size agrees with OpenJPEG's; whatever it cannot
do (no Pillow OpenJPEG, Pixel Padding Value declared, a precision other than Bits Stored, fewer
decomposition levels, any decoding error) falls back to decoding at full size.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.utils import get_j2k_parameters
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless

from dicom_io.transfer_syntax import decoder_available, decoding_plugins

logger = logging.getLogger(__name__)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Largest image read, in pixels (Rows x Columns): 8192 x 8192, twice the largest detectors
#: and film digitisers give, 128 MiB at 16 bits. Checked on receipt, before anything decodes:
#: a header declaring 65535 x 65535 (8 GiB of pixels) is refused, not allocated.
MAX_PIXELS = 8192 * 8192
#: Bits Allocated that pydicom decodes (PS3.5 8.1.1; 1 for bilevel images).
_BITS_ALLOCATED = (1, 8, 16, 32)
#: Transfer syntaxes decoded at a reduced resolution when asked (PS3.5 A.4.4).
_REDUCIBLE = (JPEG2000Lossless, JPEG2000)


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
        If pixel data is missing, not single-sample grayscale, multi-frame, without pixels or
        larger than :data:`MAX_PIXELS`, of a Bits Allocated pydicom does not decode, shorter
        than its attributes say, in a transfer syntax this install cannot decode, or an
        attribute needed to decode it is missing. The message starts with the attribute at
        fault.
    """
    with _as_pixel_data_error("malformed image pixel attributes"):
        _check_pixel_module(ds)


@contextmanager
def _as_pixel_data_error(what: str) -> Iterator[None]:
    """Any error but :class:`PixelDataError` raised inside, as one: ``what (Type: error)``.

    pydicom converts values lazily, when they are read, and raises many types for a value of
    the wrong VR or form (an unknown VR is a ``NotImplementedError``).
    """
    try:
        yield
    except PixelDataError:
        raise
    except Exception as exc:
        raise PixelDataError(f"{what} ({type(exc).__name__}: {exc})") from exc


def _check_pixel_module(ds: Dataset) -> None:
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
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 1 or columns < 1:
        raise PixelDataError(f"Rows x Columns is {rows} x {columns}: no pixels")
    if rows * columns > MAX_PIXELS:
        raise PixelDataError(
            f"Rows x Columns is {rows} x {columns}; at most {MAX_PIXELS} pixels are read"
        )
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if allocated not in _BITS_ALLOCATED:
        raise PixelDataError(f"BitsAllocated is {allocated}, not 1, 8, 16 or 32")
    if not 1 <= stored <= allocated:
        raise PixelDataError(f"BitsStored is {stored}, not 1 to BitsAllocated ({allocated})")
    syntax = _transfer_syntax(ds)
    if syntax is None:
        raise PixelDataError("TransferSyntaxUID (0002,0010) is missing: encoding unknown")
    if not decoder_available(syntax):
        raise PixelDataError(f"no decoder for {_name(syntax)} is installed")
    if not syntax.is_encapsulated:
        expected = (rows * columns * allocated + 7) // 8
        # A raw element read with a defer size has its length but not its value.
        element = ds.get_item("PixelData", keep_deferred=True)
        value = None if element is None else element.value
        actual = len(value) if value is not None else int(getattr(element, "length", 0))
        if actual < expected:
            raise PixelDataError(
                f"PixelData holds {actual} bytes; Rows x Columns x BitsAllocated need {expected}"
            )


def normalize_radiograph(ds: Dataset, *, max_side: int | None = None) -> NDArray[np.float32]:
    """Render a grayscale radiograph dataset to a float32 image in [0, 1], 1 = bright.

    Parameters
    ----------
    ds : pydicom.Dataset
        A single-frame grayscale image (CR Image IOD PS3.3 A.2, DX Image IOD PS3.3 A.26,
        Secondary Capture Image IOD PS3.3 A.8.1) with its file meta information. It is not
        modified, and the decoded pixels are not cached on it.
    max_side : int, optional
        The longest side the caller needs (see
        :meth:`models.serving.enhance.Preprocessing.working_side`). The image is then reduced by the
        largest integer factor ``max(Rows, Columns) // max_side`` before the LUTs are applied
        (see the module notes), so its longest side is at least ``max_side``. None (the
        default), or a ``max_side`` at least the longest side: full resolution.

    Returns
    -------
    numpy.ndarray
        2-D float32 array with values in [0, 1]: of shape (Rows, Columns) at full
        resolution, or ``(ceil(Rows / f), ceil(Columns / f))`` reduced by a factor ``f``.
        Padding pixels are 0; a reduced pixel is scaled by its share of non-padding pixels.

    Raises
    ------
    PixelDataError
        If the pixel data is missing, not grayscale, bilevel (Bits Stored 1), under 2 pixels
        a side when ``max_side`` is given, cannot be
        decoded (the message names the transfer syntax), or its modality or VOI LUT is
        invalid.
    ValueError
        If ``max_side`` is not a positive integer.

    Notes
    -----
    With a VOI LUT Sequence the first LUT is used; with several Window Center/Width values,
    the first window (PS3.3 C.11.2.1.2). The VOI output range is scaled to [0, 1]. When the
    dataset has no VOI transformation at all, PS3.4 N.2.1.1 leaves the choice to the
    application; like DCMTK's min-max window, the range of the modality values of the
    non-padding pixels is used (at reduced resolution, of the decoded stored values, so that
    averaging does not narrow it).
    """
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")
    with _as_pixel_data_error("image attributes cannot be read"):
        return _normalize(ds, max_side)


def _normalize(ds: Dataset, max_side: int | None) -> NDArray[np.float32]:
    """:func:`normalize_radiograph`, raising what pydicom raises for a malformed value."""
    check_pixel_module(ds)
    if int(ds.BitsStored) == 1:  # stored on receipt, so the report can say why
        raise PixelDataError("BitsStored is 1: a bilevel image is not read as a radiograph")
    if max_side is not None and min(int(ds.Rows), int(ds.Columns)) < 2:
        # a working-size image (a network input) needs 2 pixels a side
        raise PixelDataError(
            f"Rows x Columns is {ds.Rows} x {ds.Columns}: under 2 pixels a side"
        )
    factor = reduction_factor((int(ds.Rows), int(ds.Columns)), max_side)
    stored = _decode(ds, factor)
    padding = _padding_mask(stored, ds)
    if padding is not None and padding.all():
        raise PixelDataError("PixelPaddingValue: every pixel is padding")
    if max_side is not None:
        factor = reduction_factor(stored.shape, max_side)  # what decoding left to do
        if factor > 1 or stored.shape != (int(ds.Rows), int(ds.Columns)):
            return _render_reduced(stored, ds, padding, factor)

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


def reduction_factor(shape: tuple[int, ...], max_side: int | None) -> int:
    """The largest integer factor that keeps the longest side of ``shape`` at least
    ``max_side``; 1 when ``max_side`` is None or not below the longest side."""
    if max_side is None:
        return 1
    # never below 2 pixels on the short side (an image of a very long, thin strip)
    longest, shortest = max(int(shape[0]), int(shape[1])), min(int(shape[0]), int(shape[1]))
    return max(1, min(longest // max_side, shortest // 2))


def _render_reduced(
    stored: NDArray[Any], ds: Dataset, padding: NDArray[np.bool_] | None, factor: int
) -> NDArray[np.float32]:
    """Steps 3-6 of the module notes on the block means of ``stored`` (``factor`` x
    ``factor`` blocks; ``factor`` 1 renders ``stored`` as it is, as an already reduced
    decoding gives it)."""
    linear = _linear_rendering(ds)
    if linear is not None:  # the common case, in one pass of float32 arithmetic
        scale, offset = linear
        # stored values are below 2**BitsStored (decoding clears the bits above)
        image, coverage = _block_mean(stored, factor, padding, (1 << int(ds.BitsStored)) - 1)
        image *= np.float32(scale)
        image += np.float32(offset)
        return _finish(image, ds, coverage)
    kept = stored if padding is None else stored[~padding]
    low_stored, high_stored = int(kept.min()), int(kept.max())
    means, coverage = _block_mean(stored, factor, padding, high_stored)
    try:
        if "ModalityLUTSequence" in ds:  # a LUT indexes by integer stored values
            means = np.rint(means).astype(np.int64)
        values = np.asarray(apply_modality_lut(means, ds))
        if _has_voi_lut(ds):
            values = np.rint(values).astype(np.int64)
        low, high = _voi_output_range(
            values, ds, None, data_range=_modality_range(low_stored, high_stored, ds)
        )
        rendered = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float32)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise PixelDataError(f"invalid Modality LUT or VOI LUT: {exc}") from exc

    if high > low:
        image = (rendered - np.float32(low)) * np.float32(1.0 / (high - low))
    else:
        image = np.zeros_like(rendered)
    return _finish(image, ds, coverage)


def _finish(image: NDArray[np.float32], ds: Dataset, coverage: NDArray[np.float32] | None
            ) -> NDArray[np.float32]:
    """Steps 5-6 on a scaled rendering, in place: clip to [0, 1], invert where the
    polarity asks, weigh padding in by its area."""
    np.clip(image, 0.0, 1.0, out=image)
    if _inverted(ds):
        np.subtract(np.float32(1.0), image, out=image)
    if coverage is not None:
        image *= coverage  # padding renders 0 and weighs in by its area
    return image


def _linear_rendering(ds: Dataset) -> tuple[float, float] | None:
    """``(scale, offset)`` such that steps 3, 4 and 6 map a stored value x to
    ``x * scale + offset`` (before clipping to [0, 1]), when they are linear: Rescale
    Slope/Intercept (or none) and a window with the VOI LUT Function LINEAR (the default) or
    LINEAR_EXACT (PS3.3 C.11.2.1.2), no LUT. None otherwise, and wherever pydicom would
    refuse the attributes, so that ``apply_voi_lut`` renders (or rejects) them as it does.

    The window maps x to ``(x - c) / w + 0.5`` scaled to its output range, c and w the
    center and width (less 0.5 and 1 for LINEAR); step 6 undoes the output range.
    """
    if "ModalityLUTSequence" in ds or _has_voi_lut(ds):
        return None
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    function = ds.get("VOILUTFunction", "LINEAR")
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        slope, intercept = (
            (float(ds.RescaleSlope), float(ds.RescaleIntercept))
            if "RescaleSlope" in ds and "RescaleIntercept" in ds  # as apply_modality_lut
            else (1.0, 0.0)
        )
    except (TypeError, ValueError, IndexError):
        return None
    if not slope > 0:  # a negative slope also reverses pydicom's window output range
        return None
    if function == "LINEAR" and width > 1:
        center, width = center - 0.5, width - 1
    elif not (function == "LINEAR_EXACT" and width > 0):
        return None
    if not all(math.isfinite(v) for v in (center, width, slope, intercept)):
        return None
    return slope / width, (intercept - center) / width + 0.5


def _block_mean(
    stored: NDArray[Any], factor: int, padding: NDArray[np.bool_] | None, peak: int
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Mean of the non-padding stored values of each ``factor`` x ``factor`` block (the last
    row and column of blocks may be smaller), and each block's share of non-padding pixels
    (None without padding; a block of padding only has mean 0 and share 0). ``peak``: the
    largest stored value (sums of non-negative values up to it may fit 16 bits)."""
    if factor == 1:
        if padding is None:
            return stored.astype(np.float32), None
        return np.where(padding, 0, stored).astype(np.float32), (~padding).astype(np.float32)
    if padding is None:
        means = _block_sum(stored, factor, _sum_dtype(stored, factor, peak)).astype(np.float32)
        means *= np.float32(1.0 / (factor * factor))
        # the last row and column of blocks may be smaller than factor x factor
        rows, columns = stored.shape[0] % factor, stored.shape[1] % factor
        if rows:
            means[-1, :] *= np.float32(factor / rows)
        if columns:
            means[:, -1] *= np.float32(factor / columns)
        return means, None
    # integer sums are exact: at most factor**2 values of at most 16 bits each
    dtype = np.int32 if factor * factor < 1 << 15 else np.int64
    sizes = np.outer(_block_sizes(stored.shape[0], factor),
                     _block_sizes(stored.shape[1], factor)).astype(np.float32)
    counts = _block_sum(~padding, factor, dtype).astype(np.float32)
    sums = _block_sum(np.where(padding, 0, stored), factor, dtype)
    means = (sums / np.maximum(counts, 1.0)).astype(np.float32)
    return means, counts / sizes


def _sum_dtype(stored: NDArray[Any], factor: int, peak: int) -> type[np.integer[Any]]:
    """The narrowest integer type in which sums of ``factor`` x ``factor`` stored values up
    to ``peak`` are exact: 16 bits for unsigned values that allow it (a 12-bit radiograph
    reduced by up to 4), which halves the memory the reduction reads and writes."""
    if stored.dtype.kind == "u" and factor * factor * peak <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.int32 if factor * factor < 1 << 15 else np.int64


def _block_sizes(length: int, factor: int) -> NDArray[np.int64]:
    """Lengths of the ``factor``-long blocks along a side of ``length`` (the last may be
    shorter)."""
    sizes = np.full(-(-length // factor), factor, dtype=np.int64)
    sizes[-1] = length - factor * (len(sizes) - 1)
    return sizes


def _block_sum(array: NDArray[Any], factor: int, dtype: type[np.integer[Any]]
               ) -> NDArray[Any]:
    """Sum of each ``factor`` x ``factor`` block of ``array`` in ``dtype``: the sums of every
    ``factor``-th row, then of every ``factor``-th column (:func:`_strided_sum`), which read
    the array once (``np.add.reduceat`` is ten times slower)."""
    return _strided_sum(_strided_sum(array, factor, 0, dtype), factor, 1, dtype)


def _strided_sum(array: NDArray[Any], factor: int, axis: int, dtype: type[np.integer[Any]]
                 ) -> NDArray[Any]:
    """Sums of each run of ``factor`` consecutive rows (``axis`` 0) or columns (1) of
    ``array``, in ``dtype`` (the last run may be shorter): the first two strided slices added
    into a new array, the others added to it in place."""

    def nth(i: int) -> NDArray[Any]:
        return array[i::factor] if axis == 0 else array[:, i::factor]

    first = nth(0)
    if factor == 1:
        return first.astype(dtype)
    second = nth(1)
    if second.shape[axis] == first.shape[axis]:
        out = np.add(first, second, dtype=dtype)
    else:  # fewer rows (columns) than two: the second slice is shorter
        out = first.astype(dtype)
        _head(out, second.shape[axis], axis)[...] += second
    for i in range(2, factor):
        part = nth(i)
        _head(out, part.shape[axis], axis)[...] += part
    return out


def _head(array: NDArray[Any], length: int, axis: int) -> NDArray[Any]:
    """The first ``length`` rows (``axis`` 0) or columns (1) of ``array``, a view."""
    return array[:length] if axis == 0 else array[:, :length]


def _modality_range(low: int, high: int, ds: Dataset) -> tuple[float, float]:
    """The range of the modality values (PS3.3 C.11.1) of the stored values ``low`` to
    ``high``: exact for Rescale Slope/Intercept and a monotonic Modality LUT."""
    values = np.asarray(apply_modality_lut(np.arange(low, high + 1, dtype=np.int64), ds))
    return float(values.min()), float(values.max())


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(syntax) if syntax else None


def _name(syntax: UID) -> str:
    """``"JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)"``; the UID alone if unknown."""
    name = syntax.name
    return f"{name} ({syntax})" if name != str(syntax) else str(syntax)


def _decode(ds: Dataset, factor: int = 1) -> NDArray[Any]:
    """The stored values of the single frame of ``ds``, high bits masked (by pydicom).

    With ``factor`` above 1, a JPEG 2000 image may come back reduced by the largest power of
    two up to ``factor`` (:func:`_decode_reduced`); every other image at full size.
    """
    syntax = _transfer_syntax(ds)
    assert syntax is not None  # check_pixel_module refuses a dataset without one
    if factor > 1 and syntax in _REDUCIBLE:
        reduced = _decode_reduced(ds, syntax, factor)
        if reduced is not None:
            return reduced
    decoder = get_decoder(syntax)
    # Unsigned little-endian native pixels are read in place (a read-only view of Pixel Data;
    # big-endian ones are byte-swapped by pydicom) and their
    # unused high bits cleared only where some are set (_clear_unused_bits): one copy of a
    # large radiograph fewer.
    in_place = (not syntax.is_encapsulated and syntax.is_little_endian
                and int(ds.PixelRepresentation) == 0)
    options = {"view_only": True, "correct_unused_bits": False} if in_place else {}
    error: BaseException | None = None
    for plugin in decoding_plugins(syntax):  # the preferred first; never an excluded one
        try:
            # pydicom annotates its **kwargs as DecodeOptions each, not as their values
            stored, _ = decoder.as_array(ds, decoding_plugin=plugin, **options)  # type: ignore[arg-type]
            break
        except (KeyboardInterrupt, SystemExit):
            raise
        # pydicom and its plugins raise many types for corrupt data; pylibjpeg-rle, in Rust,
        # panics (pyo3's PanicException is a BaseException) on some corrupt RLE segments.
        except BaseException as exc:
            logger.debug("%s plugin %s failed: %s", _name(syntax), plugin or "pydicom", exc)
            error = exc if error is None else error  # the first plugin's error names the cause
    else:
        raise PixelDataError(
            f"{_name(syntax)} pixel data cannot be decoded: {error or 'no decoder plugin'}"
        ) from error
    if stored.ndim != 2:
        raise PixelDataError(
            f"{_name(syntax)} pixel data decoded to shape {stored.shape}, not one 2-D frame"
        )
    return _clear_unused_bits(stored, int(ds.BitsStored)) if in_place else stored


def _clear_unused_bits(stored: NDArray[Any], bits_stored: int) -> NDArray[Any]:
    """Unsigned stored values with the bits above Bits Stored cleared (PS3.5 8.1.1: they
    may hold anything, such as an overlay), as pydicom's ``correct_unused_bits`` does; the
    array itself when none is set (the usual case), which is then not copied."""
    if bits_stored >= 8 * stored.dtype.itemsize or int(stored.max()) < 1 << bits_stored:
        return stored
    return np.bitwise_and(stored, (1 << bits_stored) - 1, dtype=stored.dtype)


def _decode_reduced(ds: Dataset, syntax: UID, factor: int) -> NDArray[np.int32] | None:
    """The stored values of a JPEG 2000 image decoded without its ``levels`` highest
    resolution levels (ISO/IEC 15444-1 ``reduce``), ``2**levels`` the largest power of two
    up to ``factor``; None where this cannot be done (the caller then decodes at full size).

    Pillow's JPEG 2000 plugin scales samples of precision P to 8 or 16 bits (and offsets
    signed ones); the scaling is undone as pydicom's Pillow decoder does.
    """
    if "PixelPaddingValue" in ds:  # padding is found in full-resolution stored values
        return None
    levels = factor.bit_length() - 1
    try:
        from PIL import Image, features

        if not features.check_codec("jpg_2000"):
            return None
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        params = get_j2k_parameters(frame)
        precision = params.get("precision")
        rows, columns = int(ds.Rows), int(ds.Columns)
        levels = min(levels, _decomposition_levels(frame))
        # Pillow sizes a reduced image round(n / 2**levels), OpenJPEG ceil(n / 2**levels)
        while levels and any(-(-n // (1 << levels)) != (n + (1 << levels >> 1)) >> levels
                             for n in (rows, columns)):
            levels -= 1
        if levels < 1 or precision != int(ds.BitsStored) or precision > 16:
            return None
        with Image.open(io.BytesIO(frame), formats=("JPEG2000",)) as image:
            image.reduce = levels  # type: ignore[method-assign, assignment]
            image.load()
            container = {"L": 8, "I;16": 16}.get(image.mode)
            array = np.asarray(image)
        step = 1 << levels
        if container is None or array.shape != (-(-rows // step), -(-columns // step)):
            return None
    except Exception as exc:  # Pillow raises many types; the full decoder names the error
        logger.debug("reduced JPEG 2000 decoding failed (%s); decoding at full size", exc)
        return None
    values = array.astype(np.int32)
    if params.get("is_signed") and int(ds.PixelRepresentation) == 1:
        values -= 1 << (container - 1)
    return np.right_shift(values, container - precision)


def _decomposition_levels(codestream: bytes) -> int:
    """Number of wavelet decomposition levels in the COD marker segment of a JPEG 2000 main
    header (ISO/IEC 15444-1 A.6.1); 0 if there is none before the first tile."""
    offset = 2  # after SOC
    while offset + 4 <= len(codestream):
        marker = int.from_bytes(codestream[offset : offset + 2], "big")
        if marker == 0xFF52:  # COD: Lcod(2) Scod(1) SGcod(4) then the levels
            return codestream[offset + 9]
        if marker == 0xFF90:  # SOT: the main header has ended
            return 0
        offset += 2 + int.from_bytes(codestream[offset + 2 : offset + 4], "big")
    return 0


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
    values: NDArray[np.generic],
    ds: Dataset,
    padding: NDArray[np.bool_] | None,
    data_range: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """The range of values the VOI transformation of ``ds`` can produce from ``values``.

    For a VOI LUT, the range of its LUT Data; for a window, the window function applied to
    inputs below and above the window (PS3.3 C.11.2.1.2); without either, ``data_range`` or
    else the range of the non-padding ``values``.
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
    elif data_range is not None:
        return data_range
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
