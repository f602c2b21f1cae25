"""dicom_io.pixels: padding → modality LUT → VOI LUT → polarity → [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dicom_io import pixels
from dicom_io.pixels import (
    PixelDataError,
    check_pixel_module,
    normalize_radiograph,
    reduction_factor,
)


def _ramp() -> np.ndarray:
    return np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))


def test_monochrome1_round_trip_recovers_8bit_image(
    make_radiograph: Callable[..., Dataset],
) -> None:
    image = _ramp()
    ds = make_radiograph(image=image)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = normalize_radiograph(ds)
    assert out.dtype == np.float32
    assert out.shape == image.shape
    # The synthetic writer stores (255 - v) * 16 under a full-range window.
    np.testing.assert_allclose(out, image / 255.0, atol=0.01)


def test_dx_for_presentation_same_as_cr(make_radiograph: Callable[..., Dataset]) -> None:
    image = _ramp()
    cr = normalize_radiograph(make_radiograph(image=image, modality="CR"))
    dx = normalize_radiograph(make_radiograph(image=image, modality="DX"))
    np.testing.assert_allclose(cr, dx)


def test_window_clips_and_stretches(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph(image=_ramp())
    # MONOCHROME1 stored values run 4080 (black) .. 0 (white); a narrow window around the
    # middle saturates both ends.
    ds.WindowCenter = 2048
    ds.WindowWidth = 1024
    out = normalize_radiograph(ds)
    assert out.min() == 0.0 and out.max() == 1.0
    assert (out == 0.0).sum() > 0 and (out == 1.0).sum() > 0
    assert np.all(np.diff(out[0]) >= 0)  # still monotonic: brighter input, brighter output


def test_rescale_slope_is_applied_before_window(make_radiograph: Callable[..., Dataset]) -> None:
    plain = make_radiograph(image=_ramp())
    scaled = make_radiograph(image=_ramp())
    scaled.RescaleSlope = 2
    scaled.RescaleIntercept = -100
    scaled.WindowCenter = 2048 * 2 - 100
    scaled.WindowWidth = 4096 * 2
    np.testing.assert_allclose(normalize_radiograph(plain), normalize_radiograph(scaled), atol=0.01)


def test_voi_lut_sequence_is_preferred(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph(image=_ramp())
    item = Dataset()
    # 4096 entries from 0, 16-bit output, inverted ramp: stored 0 -> 65535.
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [65535 - 16 * i for i in range(4096)]
    ds.VOILUTSequence = [item]
    ds.PhotometricInterpretation = "MONOCHROME2"
    out = normalize_radiograph(ds)
    np.testing.assert_allclose(out, _ramp() / 255.0, atol=0.02)


def test_no_voi_uses_data_range(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph(image=_ramp())
    del ds.WindowCenter
    del ds.WindowWidth
    out = normalize_radiograph(ds)
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm"])
def test_real_wg04_cr(name: str) -> None:
    """NEMA WG04 CRs: MONOCHROME1, 15- and 10-bit, one J2K-compressed."""
    ds = pydicom.dcmread(get_testdata_file(name))
    out = normalize_radiograph(ds)
    assert out.dtype == np.float32
    assert out.shape == (ds.Rows, ds.Columns)
    assert 0.0 <= out.min() < 0.2 and 0.9 < out.max() <= 1.0
    # MONOCHROME1 must be inverted: the darkest stored value becomes the brightest output.
    stored = ds.pixel_array
    assert out.flat[np.argmin(stored)] > out.flat[np.argmax(stored)]


def test_lossless_j2k_equals_uncompressed() -> None:
    raw = normalize_radiograph(pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")))
    j2k = normalize_radiograph(pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm")))
    np.testing.assert_array_equal(raw, j2k)


def test_missing_pixel_data_is_refused(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph()
    del ds.PixelData
    with pytest.raises(PixelDataError, match=r"^PixelData \(7FE0,0010\) is missing$"):
        normalize_radiograph(ds)


def test_colour_is_refused(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph()
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(PixelDataError, match=r"^PhotometricInterpretation is 'RGB', not MONOCH"):
        check_pixel_module(ds)


def test_truncated_pixel_data_is_refused(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph()
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(PixelDataError, match=r"^PixelData holds 100 bytes; .* need 6144$"):
        check_pixel_module(ds)
    with pytest.raises(PixelDataError):
        normalize_radiograph(ds)


def test_input_dataset_is_not_modified(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph(image=_ramp())
    before = pydicom.Dataset(ds)
    normalize_radiograph(ds)
    assert ds == before


# --- datasets built for one attribute at a time ---


def _gray(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **attributes: object,
) -> Dataset:
    """A minimal single-frame grayscale dataset in Explicit VR Little Endian, no VOI."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype("<i2" if stored.dtype.kind == "i" else "<u2").tobytes()
    return ds


def _ramp12() -> np.ndarray:
    """Every 12-bit value once, 64 x 64."""
    return np.arange(4096, dtype=np.uint16).reshape(64, 64)


def test_modality_lut_sequence_is_applied() -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [int(65535 * (i / 4095) ** 2) for i in range(4096)]  # a square law
    ds = _gray(_ramp12(), ModalityLUTSequence=[item])
    out = normalize_radiograph(ds)
    expected = np.asarray(item.LUTData, np.float64).reshape(64, 64)
    # No VOI: the data range of the LUT output (0 .. 65535) is scaled to [0, 1].
    np.testing.assert_allclose(out, expected / 65535, atol=1e-6)
    assert out[0, 1] < 1e-6 < out[32, 0] < 0.26  # not linear: a quarter at mid-range


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # PS3.3 C.11.2.1.2.1 LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped.
        ("LINEAR", lambda x: np.clip((x - 2047.5) / 1023 + 0.5, 0, 1)),
        # C.11.2.1.3.2 LINEAR_EXACT: (x - c) / w + 0.5, clipped.
        ("LINEAR_EXACT", lambda x: np.clip((x - 2048) / 1024 + 0.5, 0, 1)),
        # C.11.2.1.3.1 SIGMOID: 1 / (1 + exp(-4 (x - c) / w)).
        ("SIGMOID", lambda x: 1 / (1 + np.exp(-4 * (x - 2048) / 1024))),
    ],
)
def test_every_voi_lut_function(function: str, expected: Callable[[np.ndarray], np.ndarray]
                                ) -> None:
    ds = _gray(_ramp12(), WindowCenter=2048, WindowWidth=1024, VOILUTFunction=function)
    out = normalize_radiograph(ds)
    np.testing.assert_allclose(out, expected(_ramp12().astype(np.float64)), atol=2e-6)


def test_voi_lut_functions_differ() -> None:
    """The three functions are really applied: they disagree inside the window."""
    outs = {
        function: normalize_radiograph(
            _gray(_ramp12(), WindowCenter=2048, WindowWidth=1024, VOILUTFunction=function)
        )
        for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID")
    }
    # At x = c + w/4 = 2304: LINEAR 256.5 / 1023 + 0.5 = 0.75073, LINEAR_EXACT 0.75,
    # SIGMOID 1 / (1 + e^-1) = 0.73106.
    at = np.unravel_index(2304, (64, 64))
    assert outs["LINEAR"][at] == pytest.approx(0.75073, abs=1e-5)
    assert outs["LINEAR_EXACT"][at] == pytest.approx(0.75, abs=1e-6)
    assert outs["SIGMOID"][at] == pytest.approx(0.73106, abs=1e-5)


def test_first_of_several_windows_is_used() -> None:
    several = _gray(_ramp12(), WindowCenter=[1000, 3000], WindowWidth=[500, 2000])
    first = _gray(_ramp12(), WindowCenter=1000, WindowWidth=500)
    second = _gray(_ramp12(), WindowCenter=3000, WindowWidth=2000)
    out = normalize_radiograph(several)
    np.testing.assert_array_equal(out, normalize_radiograph(first))
    assert np.abs(out - normalize_radiograph(second)).max() > 0.5


def test_presentation_lut_shape_inverse_inverts_monochrome2() -> None:
    identity = normalize_radiograph(_gray(_ramp12(), PresentationLUTShape="IDENTITY"))
    inverse = normalize_radiograph(_gray(_ramp12(), PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(inverse, 1.0 - identity, atol=1e-7)
    assert inverse[0, 0] == 1.0 and inverse[-1, -1] == 0.0


def test_inverse_with_monochrome1_inverts_once() -> None:
    """A DX MONOCHROME1 image must declare INVERSE (PS3.3 C.8.11.6.1.2): the same inversion."""
    plain = normalize_radiograph(_gray(_ramp12(), photometric="MONOCHROME1"))
    declared = normalize_radiograph(
        _gray(_ramp12(), photometric="MONOCHROME1", PresentationLUTShape="INVERSE")
    )
    np.testing.assert_array_equal(plain, declared)
    assert declared[0, 0] == 1.0  # stored 0 is white in MONOCHROME1


def _padded(photometric: str, pad: int) -> np.ndarray:
    """1000..3000 inside, ``pad`` on an 8-pixel border."""
    image = np.full((64, 64), pad, dtype=np.uint16)
    image[8:-8, 8:-8] = np.linspace(1000, 3000, 48 * 48).reshape(48, 48)
    return image


def test_pixel_padding_value_is_black_and_out_of_the_range() -> None:
    stored = _padded("MONOCHROME2", 0)
    out = normalize_radiograph(_gray(stored, PixelPaddingValue=0))
    assert (out[:8] == 0.0).all() and (out[:, -8:] == 0.0).all()
    inside = out[8:-8, 8:-8]
    # The data range is the non-padding pixels', 1000 .. 3000, not 0 .. 3000.
    assert inside.min() == 0.0 and inside.max() == 1.0
    np.testing.assert_allclose(inside, (stored[8:-8, 8:-8] - 1000) / 2000, atol=1e-6)


def test_pixel_padding_is_black_in_monochrome1_too() -> None:
    stored = _padded("MONOCHROME1", 4095)  # MONOCHROME1 pads with its darkest (highest) value
    out = normalize_radiograph(_gray(stored, photometric="MONOCHROME1", PixelPaddingValue=4095))
    assert (out[:8] == 0.0).all()
    np.testing.assert_allclose(out[8:-8, 8:-8], 1 - (stored[8:-8, 8:-8] - 1000) / 2000, atol=1e-6)
    # Without the padding attribute the border is just the darkest value of the range.
    unpadded = normalize_radiograph(_gray(stored, photometric="MONOCHROME1"))
    assert unpadded[8:-8, 8:-8].min() > 0.25


def test_pixel_padding_is_black_whatever_its_value() -> None:
    """A MONOCHROME1 image padded with 0 (white) under a window: the border still ends black."""
    stored = _padded("MONOCHROME1", 0)
    ds = _gray(stored, photometric="MONOCHROME1", PixelPaddingValue=0,
               WindowCenter=2048, WindowWidth=4096)
    out = normalize_radiograph(ds)
    assert (out[:8] == 0.0).all() and (out[-8:] == 0.0).all()
    del ds.PixelPaddingValue
    assert (normalize_radiograph(ds)[:8] == 1.0).all()  # unmasked, 0 is white in MONOCHROME1


def test_pixel_padding_range_limit_masks_the_range() -> None:
    stored = _padded("MONOCHROME2", 0)
    stored[:4] = 57  # a second padding value, inside 0 .. 99
    stored[-4:] = 99
    out = normalize_radiograph(_gray(stored, PixelPaddingValue=99, PixelPaddingRangeLimit=0))
    assert (out[:8] == 0.0).all() and (out[-8:] == 0.0).all()
    assert out[8:-8, 8:-8].min() == 0.0 and out[8:-8, 8:-8].max() == 1.0


def test_all_padding_is_refused() -> None:
    with pytest.raises(PixelDataError, match=r"^PixelPaddingValue: every pixel is padding$"):
        normalize_radiograph(_gray(np.zeros((8, 8), np.uint16), PixelPaddingValue=0))


def test_signed_pixels_match_their_unsigned_twin() -> None:
    unsigned = _ramp12()
    signed = (unsigned.astype(np.int32) - 2048).astype(np.int16)
    a = normalize_radiograph(_gray(unsigned, WindowCenter=2548, WindowWidth=3001))
    b = normalize_radiograph(_gray(signed, WindowCenter=500, WindowWidth=3001))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert b[0, 0] == 0.0 and b[-1, -1] == 1.0


def test_signed_padding_value_written_as_us_is_two_complement() -> None:
    """A Pixel Padding Value of 0xF830 (US) on signed 16-bit pixels is -2000."""
    stored = np.full((16, 16), -2000, np.int16)
    stored[4:-4, 4:-4] = np.arange(64, dtype=np.int16).reshape(8, 8) * 10 - 300
    ds = _gray(stored, bits_stored=16)
    ds.add(DataElement(0x00280120, "US", 0xF830))
    out = normalize_radiograph(ds)
    assert (out[:4] == 0.0).all()
    assert out[4:-4, 4:-4].min() == 0.0 and out[4:-4, 4:-4].max() == 1.0


@pytest.mark.parametrize("max_side", [None, 20])
@pytest.mark.parametrize("garbage", ["everywhere", "one pixel"])
def test_garbage_above_bits_stored_is_masked(max_side: int | None, garbage: str) -> None:
    """Only the low Bits Stored bits count (PS3.5 8.1.1); the rest may hold anything, in
    every pixel or in one (native pixels are read in place and cleared only if needed)."""
    clean = _ramp12()
    rng = np.random.default_rng(0)
    if garbage == "everywhere":
        dirty = clean | (rng.integers(1, 16, clean.shape, dtype=np.uint16) << 12)
        assert (dirty >= 4096).all()
    else:
        dirty = clean.copy()
        dirty[5, 7] |= 0x8000
    ds = _gray(dirty)
    np.testing.assert_array_equal(
        normalize_radiograph(ds, max_side=max_side),
        normalize_radiograph(_gray(clean), max_side=max_side),
    )
    assert ds.PixelData == dirty.astype("<u2").tobytes()  # the dataset is left as it was


def test_garbage_above_bits_stored_is_masked_in_rle_too() -> None:
    clean = _ramp12()
    dirty = clean | np.uint16(0xA000)
    ds = _gray(dirty, bits_stored=16)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.BitsStored, ds.HighBit = 12, 11  # the encoder saw 16 bits; the file says 12
    np.testing.assert_array_equal(normalize_radiograph(ds), normalize_radiograph(_gray(clean)))


def test_signed_pixels_below_bits_allocated_are_sign_extended() -> None:
    values = np.array([[-2048, -5, 0, 2047]], np.int16)
    raw = (values.astype(np.int32) & 0x0FFF) | 0x5000  # 12-bit two's complement + garbage
    ds = _gray(values)
    ds.PixelData = raw.astype("<u2").tobytes()
    out = normalize_radiograph(ds)
    np.testing.assert_allclose(out[0], (values[0] + 2048) / 4095, atol=1e-6)


def test_syntax_without_a_decoder_is_named() -> None:
    ds = _gray(_ramp12())
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(
        PixelDataError,
        match=r"^no decoder for MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\)",
    ):
        check_pixel_module(ds)


def test_missing_transfer_syntax_is_named() -> None:
    ds = _gray(_ramp12())
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(PixelDataError, match=r"^TransferSyntaxUID \(0002,0010\) is missing"):
        normalize_radiograph(ds)


def test_corrupt_codestream_names_the_transfer_syntax() -> None:
    ds = _gray(_ramp12())
    ds.compress(JPEG2000Lossless)
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
                      .__next__())
    frame[len(frame) // 3 :] = b"\xff" * (len(frame) - len(frame) // 3)
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    check_pixel_module(ds)  # cheap: the attributes are fine
    with pytest.raises(
        PixelDataError,
        match=r"^JPEG 2000 Image Compression \(Lossless Only\) \(1\.2\.840\.10008\.1\.2\.4\.90\)"
        " pixel data cannot be decoded",
    ):
        normalize_radiograph(ds)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("SamplesPerPixel", 3, "^SamplesPerPixel is 3, not 1$"),
        ("NumberOfFrames", 2, "^NumberOfFrames is 2; only single-frame images are read$"),
        ("BitsStored", 17, r"^BitsStored is 17, not 1 to BitsAllocated \(16\)$"),
    ],
)
def test_pixel_module_errors_name_the_attribute(keyword: str, value: int, message: str) -> None:
    ds = _gray(_ramp12())
    setattr(ds, keyword, value)
    with pytest.raises(PixelDataError, match=message):
        check_pixel_module(ds)


def test_decoded_pixels_are_not_cached_on_the_dataset(
    make_radiograph: Callable[..., Dataset],
) -> None:
    ds = make_radiograph(image=_ramp())
    normalize_radiograph(ds)
    assert getattr(ds, "_pixel_array", None) is None


# --- reduced resolution (max_side) -------------------------------------------------------------


def _smooth12(shape: tuple[int, int] = (301, 250), *, low: int = 200, high: int = 3900
              ) -> np.ndarray:
    """A radiograph-like 12-bit image: a gradient, two blobs and faint texture."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    field = 0.5 * y / shape[0] + 0.3 * np.exp(-((y - 120) ** 2 + (x - 90) ** 2) / 2000)
    field += 0.2 * np.exp(-((y - 220) ** 2 + (x - 180) ** 2) / 600)
    field += 0.01 * np.sin(x / 3) * np.cos(y / 5)
    field = (field - field.min()) / (field.max() - field.min())
    return np.rint(low + field * (high - low)).astype(np.uint16)


def _area_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-averaging resize by an integer factor (ragged last blocks), as a reference."""
    rows, columns = np.arange(0, image.shape[0], factor), np.arange(0, image.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(image.astype(np.float64), rows, axis=0), columns,
                           axis=1)
    sizes = np.outer(np.diff(np.append(rows, image.shape[0])),
                     np.diff(np.append(columns, image.shape[1])))
    return sums / sizes


def _voi_lut_item() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [int(65535 * (i / 4095) ** 0.5) for i in range(4096)]  # a square-root law
    return item


REDUCED_CASES: dict[str, Callable[[], Dataset]] = {
    "window": lambda: _gray(_smooth12(), WindowCenter=2000, WindowWidth=1500),
    "sigmoid": lambda: _gray(_smooth12(), WindowCenter=2000, WindowWidth=1500,
                             VOILUTFunction="SIGMOID"),
    "voi-lut": lambda: _gray(_smooth12(), VOILUTSequence=[_voi_lut_item()]),
    "monochrome1-rescaled": lambda: _gray(_smooth12(), photometric="MONOCHROME1",
                                          RescaleSlope=2, RescaleIntercept=-100),
    "no-voi": lambda: _gray(_smooth12()),
    "padded": lambda: _gray(np.where(np.add.outer(np.arange(301), np.arange(250)) < 60, 0,
                                     _smooth12()).astype(np.uint16),
                            PixelPaddingValue=0, WindowCenter=2000, WindowWidth=3000),
}


@pytest.mark.parametrize("case", list(REDUCED_CASES))
@pytest.mark.parametrize("max_side", [100, 60, 20])
def test_reduced_rendering_agrees_with_area_averaging_the_full_one(case: str, max_side: int
                                                                   ) -> None:
    """Reducing the stored values before the LUTs is close to area-averaging the rendered
    full-resolution image: within 0.01 on average and 0.05 everywhere on a smooth image
    (windows clipping, a LUT or a sigmoid are not linear over a block)."""
    ds = REDUCED_CASES[case]()
    full = normalize_radiograph(ds)
    factor = 301 // max_side
    reduced = normalize_radiograph(ds, max_side=max_side)
    assert reduced.dtype == np.float32
    assert reduced.shape == (-(-301 // factor), -(-250 // factor))
    assert max(reduced.shape) >= max_side
    assert 0.0 <= reduced.min() and reduced.max() <= 1.0
    difference = np.abs(reduced - _area_mean(full, factor))
    assert difference.mean() < 0.01 and difference.max() < 0.05, (
        difference.mean(), difference.max())


LINEAR_CASES: dict[str, Callable[[], Dataset]] = {
    "linear": lambda: _gray(_smooth12(), WindowCenter=2000, WindowWidth=1500),
    "linear-exact": lambda: _gray(_smooth12(), WindowCenter=2000, WindowWidth=1500,
                                  VOILUTFunction="LINEAR_EXACT"),
    "rescaled-monochrome1": lambda: _gray(_smooth12(), photometric="MONOCHROME1",
                                          WindowCenter=3000, WindowWidth=2500,
                                          RescaleSlope=1.5, RescaleIntercept=-100),
    "several-windows": lambda: _gray(_smooth12(), WindowCenter=[1000, 3000],
                                     WindowWidth=[800, 2000]),
    "padded": REDUCED_CASES["padded"],
    "ragged-blocks": lambda: _gray(_smooth12((301, 257)), WindowCenter=2000, WindowWidth=3000),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_rendering_is_pydicoms(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A linear window on a reduced image is rendered in one float32 pass: the same image as
    pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` give, to float32 rounding."""
    ds = LINEAR_CASES[case]()
    assert pixels._linear_rendering(ds) is not None
    fast = normalize_radiograph(ds, max_side=60)
    monkeypatch.setattr(pixels, "_linear_rendering", lambda ds: None)
    np.testing.assert_allclose(fast, normalize_radiograph(ds, max_side=60), atol=1e-5)


@pytest.mark.parametrize("attributes", [
    {},  # no window: the data range
    {"WindowCenter": 2000, "WindowWidth": 1500, "VOILUTFunction": "SIGMOID"},
    {"WindowCenter": 2000, "WindowWidth": 1, "VOILUTFunction": "LINEAR"},  # pydicom's 0 width
    {"WindowCenter": 2000, "WindowWidth": 1500, "RescaleSlope": -1, "RescaleIntercept": 4095},
    {"WindowCenter": 2000, "WindowWidth": 1500, "VOILUTSequence": [_voi_lut_item()]},
])
def test_other_renderings_are_left_to_pydicom(attributes: dict[str, object]) -> None:
    assert pixels._linear_rendering(_gray(_smooth12(), **attributes)) is None


def test_reduced_padding_is_black() -> None:
    ds = REDUCED_CASES["padded"]()
    reduced = normalize_radiograph(ds, max_side=20)  # factor 15
    assert reduced[0, 0] == 0.0  # a block of padding only
    assert reduced[-1, -1] > 0.1


@pytest.mark.parametrize("max_side", [None, 301, 1000])
def test_no_reduction_is_the_full_resolution_rendering(max_side: int | None) -> None:
    ds = REDUCED_CASES["window"]()
    np.testing.assert_array_equal(normalize_radiograph(ds, max_side=max_side),
                                  normalize_radiograph(ds))


@pytest.mark.parametrize("max_side", [0, -3, 1.5, True])
def test_max_side_must_be_a_positive_integer(max_side: object) -> None:
    with pytest.raises(ValueError, match=r"^max_side must be a positive integer"):
        normalize_radiograph(_gray(_ramp12()), max_side=max_side)  # type: ignore[arg-type]


def test_reduction_factor_keeps_the_longest_side_at_least_max_side() -> None:
    assert reduction_factor((3000, 2500), 1024) == 2
    assert reduction_factor((2500, 3000), 224) == 13
    assert reduction_factor((3000, 2500), 3000) == 1
    assert reduction_factor((3000, 2500), None) == 1


def _j2k(ds: Dataset) -> Dataset:
    compressed = pydicom.dcmread(_to_bytes(ds))
    compressed.compress(JPEG2000Lossless)
    return compressed


def _to_bytes(ds: Dataset) -> pydicom.filebase.DicomBytesIO:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("signed", [False, True])
def test_j2k_is_decoded_at_reduced_resolution(signed: bool) -> None:
    """JPEG 2000 drops its highest wavelet levels: a 4x reduction decodes 2 levels fewer,
    close to the 4 x 4 block means of the stored values (the 5/3 low-pass band is not a box
    filter, and it is centred on the block's first pixel)."""
    unsigned = _smooth12((300, 250))
    stored = unsigned.astype(np.int16) - 2048 if signed else unsigned
    ds = _j2k(_gray(stored, WindowCenter=0 if signed else 2048, WindowWidth=4096))
    reduced = pixels._decode_reduced(ds, JPEG2000Lossless, 4)
    assert reduced is not None and reduced.shape == (75, 63)
    difference = np.abs(reduced - _area_mean(stored, 4))
    assert difference.mean() < 41 and np.percentile(difference, 99) < 164  # 1% and 4% of 4096
    reduced = pixels._decode_reduced(ds, JPEG2000Lossless, 3)  # one level: 2x
    assert reduced is not None and reduced.shape == (150, 125)


def test_j2k_reduction_stops_where_pillow_would_size_it_wrongly() -> None:
    """301 rows: OpenJPEG decodes ceil(301 / 4) = 76 rows at 2 levels, Pillow expects
    round(301 / 4) = 75; one level (151 rows either way) is decoded instead."""
    ds = _j2k(_gray(_smooth12((301, 250)), WindowCenter=2048, WindowWidth=4096))
    reduced = pixels._decode_reduced(ds, JPEG2000Lossless, 4)
    assert reduced is not None and reduced.shape == (151, 125)
    assert normalize_radiograph(ds, max_side=75).shape == (76, 63)  # 2x more by block means


def test_reduced_j2k_rendering_agrees_with_uncompressed() -> None:
    plain = _gray(_smooth12((300, 250)), WindowCenter=2000, WindowWidth=3000)
    reduced_plain = normalize_radiograph(plain, max_side=75)  # factor 4
    reduced_j2k = normalize_radiograph(_j2k(plain), max_side=75)
    assert reduced_j2k.shape == reduced_plain.shape == (75, 63)
    difference = np.abs(reduced_j2k - reduced_plain)
    assert difference.mean() < 0.01 and np.percentile(difference, 99) < 0.05


def test_reduced_j2k_falls_back_to_full_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Pillow's OpenJPEG, or with padding, the image is decoded at full size: a
    lossless J2K then renders exactly as its uncompressed original."""
    plain = _gray(_smooth12((300, 250)), WindowCenter=2000, WindowWidth=3000)
    expected = normalize_radiograph(plain, max_side=75)
    from PIL import features

    monkeypatch.setattr(features, "check_codec", lambda codec: False)
    assert pixels._decode_reduced(_j2k(plain), JPEG2000Lossless, 4) is None
    np.testing.assert_array_equal(normalize_radiograph(_j2k(plain), max_side=75), expected)
    monkeypatch.undo()
    padded = REDUCED_CASES["padded"]()
    assert pixels._decode_reduced(_j2k(padded), JPEG2000Lossless, 4) is None
    np.testing.assert_array_equal(normalize_radiograph(_j2k(padded), max_side=75),
                                  normalize_radiograph(padded, max_side=75))


def test_real_j2k_cr_reduced_agrees_with_its_uncompressed_twin() -> None:
    raw = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    side = max(int(raw.Rows), int(raw.Columns)) // 4
    reduced_raw = normalize_radiograph(raw, max_side=side)
    reduced_j2k = normalize_radiograph(j2k, max_side=side)
    assert reduced_raw.shape == reduced_j2k.shape
    assert np.abs(reduced_raw - reduced_j2k).mean() < 0.01


def test_corrupt_codestream_reduced_is_still_a_pixel_data_error() -> None:
    ds = _gray(_ramp12())
    ds.compress(JPEG2000Lossless)
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
                      .__next__())
    frame[len(frame) // 3 :] = b"\xff" * (len(frame) - len(frame) // 3)
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    with pytest.raises(PixelDataError, match=r"pixel data cannot be decoded"):
        normalize_radiograph(ds, max_side=16)


def test_all_padding_reduced_is_refused() -> None:
    ds = _gray(np.zeros((64, 64), np.uint16), PixelPaddingValue=0)
    with pytest.raises(PixelDataError, match="every pixel is padding"):
        normalize_radiograph(ds, max_side=16)
