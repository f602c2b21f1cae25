"""dicom_io.pixels: modality LUT → VOI LUT → MONOCHROME1 inversion → [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from dicom_io.pixels import PixelDataError, check_pixel_module, normalize_radiograph


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
    with pytest.raises(PixelDataError, match="Pixel Data"):
        normalize_radiograph(ds)


def test_colour_is_refused(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph()
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(PixelDataError, match="PhotometricInterpretation"):
        check_pixel_module(ds)


def test_truncated_pixel_data_is_refused(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph()
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(PixelDataError, match="bytes"):
        check_pixel_module(ds)
    with pytest.raises(PixelDataError):
        normalize_radiograph(ds)


def test_input_dataset_is_not_modified(make_radiograph: Callable[..., Dataset]) -> None:
    ds = make_radiograph(image=_ramp())
    before = pydicom.Dataset(ds)
    normalize_radiograph(ds)
    assert ds == before
