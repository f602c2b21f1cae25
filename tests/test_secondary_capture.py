"""Tests of dicom_io.secondary_capture: the heatmap Secondary Capture of one radiograph."""

from __future__ import annotations

import copy
import io
import logging
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from dicom_io.report import encode_file
from dicom_io.secondary_capture import (
    DERIVATION_DESCRIPTION,
    RESEARCH_NOTICE,
    SC_CONTRIBUTION,
    SERIES_DESCRIPTION,
    build_secondary_capture,
    display_size,
    input_region,
    label_band,
    sc_label,
    secondary_capture_uids,
)
from dicom_io.synthetic import StudyIdentity
from models.enhance import Preprocessing, preprocess
from models.results import AlgorithmInfo, ImagePrediction
from tests.conftest import dciodvfy_errors, dcmtk

ALGORITHM = AlgorithmInfo(name="Ossa two-stage MobileNetV2", version="mura-v1 3f2a9c1")
LABEL = "Ossa research use - not for diagnosis - ABNORMAL p=0.87 - WRIST"
#: Network input side of the tests' CAMs.
SIZE = 64
#: A 300 x 200 radiograph of uniform grey 120/255 is shown at 512 x 341 (longest side 512).
SHOWN = (512, 341)
GREY = 120

MakeRadiograph = Callable[..., Dataset]


def _identity(**overrides: str) -> StudyIdentity:
    fields = {
        "patient_id": "PID-SC-3",
        "patient_name": "Doe^Jane",
        "accession_number": "ACC-SC",
        "body_part": "WRIST",
    }
    fields.update(overrides)
    return StudyIdentity(**fields)


def _grey(rows: int = 300, columns: int = 200, value: int = GREY) -> NDArray[np.uint8]:
    return np.full((rows, columns), value, dtype=np.uint8)


def _build(
    source: Dataset,
    image: NDArray[np.uint8],
    cam: NDArray[np.float32] | None,
    *,
    label: str = LABEL,
    input_size: int = SIZE,
) -> Dataset:
    """Build an SC and return it as a PACS would hand it back (encoded, decoded again)."""
    series, sop = secondary_capture_uids(
        source.StudyInstanceUID, source.SOPInstanceUID, ALGORITHM.version
    )
    sc = build_secondary_capture(
        source,
        image.astype(np.float32) / 255.0,
        cam,
        input_size=input_size,
        label=label,
        series_instance_uid=series,
        sop_instance_uid=sop,
        instance_number=1,
        algorithm=ALGORITHM,
    )
    return pydicom.dcmread(io.BytesIO(encode_file(sc)))


def _write(ds: Dataset, path: Path) -> Path:
    path.write_bytes(encode_file(ds))
    return path


def _quadrant_cam(shape: tuple[int, int], size: int = SIZE) -> NDArray[np.float32]:
    """A full-resolution CAM on the square input, 1 over the top-left quadrant of the region
    an image of ``shape`` occupies there, 0 elsewhere (padding included)."""
    top, left, rows, columns = input_region(shape, size)
    cam = np.zeros((size, size), dtype=np.float32)
    cam[top : top + rows // 2, left : left + columns // 2] = 1.0
    return cam


@pytest.fixture
def source(make_radiograph: MakeRadiograph) -> Dataset:
    """A CR of 300 x 200 pixels (Laterality R, no Patient Orientation)."""
    return make_radiograph(_identity(), image=_grey())


# --- UIDs and label ---------------------------------------------------------------------------


def test_uids_are_derived_from_study_source_and_version() -> None:
    series, sop = secondary_capture_uids("1.2.3", "1.2.3.1", "demo@abc")
    assert (series, sop) == secondary_capture_uids("1.2.3", "1.2.3.1", "demo@abc")
    assert series != sop and all(pydicom.uid.UID(u).is_valid for u in (series, sop))
    assert max(len(series), len(sop)) <= 64
    # One series per study and model version; one instance per source image.
    other_series, other_sop = secondary_capture_uids("1.2.3", "1.2.3.2", "demo@abc")
    assert other_series == series and other_sop != sop
    for changed in (("1.2.4", "1.2.3.1", "demo@abc"), ("1.2.3", "1.2.3.1", "demo@def")):
        new_series, new_sop = secondary_capture_uids(*changed)
        assert new_series != series and new_sop != sop
    with pytest.raises(ValueError, match="source_sop_instance_uid must be a non-empty string"):
        secondary_capture_uids("1.2.3", "", "demo@abc")


def test_label_states_verdict_probability_and_body_part() -> None:
    wrist = ImagePrediction("WRIST", 0.93, True, 0.87)
    assert sc_label(wrist, 0.5) == LABEL
    assert sc_label(wrist, 0.9) == (
        "Ossa research use - not for diagnosis - NORMAL p=0.87 - WRIST"
    )
    assert sc_label(wrist, 0.87).startswith(f"{RESEARCH_NOTICE} - ABNORMAL p=0.87")
    hand = ImagePrediction("HAND", 0.61, True, 0.123)
    assert sc_label(hand, 0.5) == "Ossa research use - not for diagnosis - NORMAL p=0.12 - HAND"
    with pytest.raises(ValueError, match="assessed image"):
        sc_label(ImagePrediction.not_assessed("pixel data could not be read"), 0.5)
    with pytest.raises(ValueError, match="threshold must be a probability"):
        sc_label(wrist, 1.5)
    with pytest.raises(TypeError, match="prediction must be an ImagePrediction"):
        sc_label("WRIST", 0.5)  # type: ignore[arg-type]


# --- the object -------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CR", "DX"])
@pytest.mark.parametrize("heatmap", [True, False], ids=["rgb", "grayscale"])
def test_sc_passes_dciodvfy(
    make_radiograph: MakeRadiograph, tmp_path: Path, modality: str, heatmap: bool
) -> None:
    source = make_radiograph(_identity(), image=_grey(), modality=modality)
    cam = _quadrant_cam((300, 200)) if heatmap else None
    sc = _build(source, _grey(), cam)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == (
        ("RGB", 3) if heatmap else ("MONOCHROME2", 1)
    )
    assert dciodvfy_errors(_write(sc, tmp_path / "sc.dcm")) == []


def test_identity_marks_it_as_derived_research_output(source: Dataset) -> None:
    sc = _build(source, _grey(), _quadrant_cam((300, 200)))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert sc.Modality == "OT"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert sc.ConversionType == "WSD"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ContentQualification == "RESEARCH"
    assert sc.SeriesDescription == SERIES_DESCRIPTION
    assert SERIES_DESCRIPTION == "Ossa heatmap - research use, not for diagnosis"
    assert sc.DerivationDescription == DERIVATION_DESCRIPTION
    assert "not an original image" in sc.DerivationDescription
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == (
        "Ossa", ALGORITHM.name, ALGORITHM.version)
    assert (sc.SeriesNumber, sc.InstanceNumber) == (9002, 1)
    assert "PixelSpacing" not in sc and "ImagerPixelSpacing" not in sc
    assert (sc.BitsAllocated, sc.BitsStored, sc.PixelRepresentation) == (8, 8, 0)
    (ossa,) = [i for i in sc.ContributingEquipmentSequence if i.Manufacturer == "Ossa"]
    assert (ossa.ManufacturerModelName, ossa.SoftwareVersions) == (
        ALGORITHM.name, ALGORITHM.version)
    assert ossa.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert ossa.ContributionDescription == SC_CONTRIBUTION
    assert [i.Manufacturer for i in sc.ContributingEquipmentSequence] == [
        "Ossa phantom", "Ossa", "Highdicom open-source contributors"]


def test_same_study_own_series_and_references_its_source(source: Dataset) -> None:
    before = copy.deepcopy(source)
    sc = _build(source, _grey(), _quadrant_cam((300, 200)))
    assert source == before  # not modified
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SOPInstanceUID != source.SOPInstanceUID
    assert (sc.SeriesInstanceUID, sc.SOPInstanceUID) == secondary_capture_uids(
        source.StudyInstanceUID, source.SOPInstanceUID, ALGORITHM.version)
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyDate", "StudyTime",
                    "StudyID", "StudyDescription", "SpecificCharacterSet", "BodyPartExamined"):
        assert sc[keyword].value == source[keyword].value, keyword
    assert sc.Laterality == "R"
    assert sc.PatientOrientation == ""
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (purpose,) = reference.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
    assert purpose.CodeMeaning == "Source image for image processing operation"


def test_dx_orientation_and_laterality_are_kept(make_radiograph: MakeRadiograph) -> None:
    source = make_radiograph(_identity(), image=_grey(), modality="DX")
    sc = _build(source, _grey(), None)
    assert list(sc.PatientOrientation) == ["A", "F"]
    assert sc.Laterality == "R"  # from the DX Image Laterality


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("Müller^Zoë", b"M\xc3\xbcller^Zo\xc3\xab"),
        ("山田^太郎", b"\xe5\xb1\xb1\xe7\x94\xb0^\xe5\xa4\xaa\xe9\x83\x8e "),
        ("Müller Zoë", b"M\xc3\xbcller Zo\xc3\xab"),  # caret-less
    ],
)
def test_utf8_patient_name_survives_byte_for_byte(
    make_radiograph: MakeRadiograph, tmp_path: Path, name: str, raw: bytes
) -> None:
    source = make_radiograph(_identity(), image=_grey())
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = name
    received = pydicom.dcmread(_write(source, tmp_path / "source.dcm"))
    path = _write(_build(received, _grey(), _quadrant_cam((300, 200))), tmp_path / "sc.dcm")
    sc = pydicom.dcmread(path)
    assert sc.get_item("PatientName").value == raw
    assert sc.SpecificCharacterSet == "ISO_IR 192"
    assert sc.PatientName == name
    assert dciodvfy_errors(path) == []


def test_no_patient_identifiers_in_logs_or_warnings(
    make_radiograph: MakeRadiograph, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_radiograph(
        _identity(patient_name="SECRETNAME", patient_id="SECRETID"), image=_grey()
    )
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sc = _build(source, _grey(), _quadrant_cam((300, 200)))
    assert sc.PatientName == "SECRETNAME"
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert "built secondary capture: 341 x 559 RGB, with heatmap" in messages
    assert not [m for m in messages if "SECRETNAME" in m or "SECRETID" in m]


def test_lossy_source_stays_marked_lossy(make_radiograph: MakeRadiograph) -> None:
    source = make_radiograph(_identity(), image=_grey())
    assert "LossyImageCompression" not in _build(source, _grey(), None)
    source.LossyImageCompression = "01"
    assert _build(source, _grey(), None).LossyImageCompression == "01"


def test_real_cr_from_pydicom_data(tmp_path: Path) -> None:
    """NEMA WG04 CR (2140 x 1760, 12 bit): downscaled to 1024 on its longest side."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(path, str), "pydicom-data's RG1_UNCR.dcm is not available"
    source = pydicom.dcmread(path)
    pixels = source.pixel_array.astype(np.float32)
    image = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    series, sop = secondary_capture_uids(source.StudyInstanceUID, source.SOPInstanceUID, "v")
    sc = build_secondary_capture(
        source, image, np.random.default_rng(0).random((7, 7), dtype=np.float32),
        input_size=224, label=LABEL, series_instance_uid=series, sop_instance_uid=sop,
        instance_number=1, algorithm=ALGORITHM,
    )
    rows, columns = display_size(image.shape)
    assert max(rows, columns) == 1024
    assert (sc.Columns, sc.Rows - rows) == (columns, label_band(LABEL, columns, 1).shape[0])
    out = _write(sc, tmp_path / "sc.dcm")
    assert dciodvfy_errors(out) == []
    assert pydicom.dcmread(out).PatientID == source.PatientID


# --- pixels -----------------------------------------------------------------------------------


def _dcmj2pnm_png(path: Path, tmp_path: Path) -> NDArray[np.uint8]:
    """DCMTK's rendering of an SC as PNG (fails the test unless dcmj2pnm exits 0)."""
    png = tmp_path / "sc.png"
    proc = subprocess.run(
        [dcmtk("dcmj2pnm"), "+on", str(path), str(png)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(png) as image:
        return np.asarray(image)


@pytest.mark.parametrize("heatmap", [True, False], ids=["rgb", "grayscale"])
def test_dcmtk_renders_it_with_the_label(source: Dataset, tmp_path: Path, heatmap: bool) -> None:
    sc = _build(source, _grey(), _quadrant_cam((300, 200)) if heatmap else None)
    rendered = _dcmj2pnm_png(_write(sc, tmp_path / "sc.dcm"), tmp_path)
    # DCMTK shows exactly the stored pixels (8 bit, no VOI LUT to apply).
    assert rendered.shape == ((559, 341, 3) if heatmap else (559, 341))
    np.testing.assert_array_equal(rendered, sc.pixel_array)
    grey = rendered if rendered.ndim == 2 else rendered.max(axis=2)
    band = grey[SHOWN[0] :]
    # The band: white text on black, a few hundred text pixels; nothing of it above.
    assert 300 < int((band > 200).sum()) < 2000
    assert int((band == 0).sum()) > 0.8 * band.size
    above = grey[: SHOWN[0]]
    assert int((above > 200).sum()) == 0 and int((above == 0).sum()) == 0
    if not heatmap:
        assert np.unique(above).tolist() == [GREY]


def test_label_band_shows_the_text(source: Dataset) -> None:
    abnormal = _build(source, _grey(), None).pixel_array
    normal = _build(
        source, _grey(), None, label=LABEL.replace("ABNORMAL", "NORMAL")
    ).pixel_array
    again = _build(source, _grey(), None).pixel_array
    np.testing.assert_array_equal(abnormal, again)  # deterministic
    np.testing.assert_array_equal(abnormal[: SHOWN[0]], normal[: SHOWN[0]])
    assert int((abnormal[SHOWN[0] :] != normal[SHOWN[0] :]).sum()) > 50
    plain = label_band(RESEARCH_NOTICE, SHOWN[1], 1)
    assert int((plain > 200).sum()) > 100
    assert int((label_band("", SHOWN[1], 1) > 0).sum()) == 0


def test_heatmap_lies_where_the_cam_is_high(source: Dataset) -> None:
    """A CAM hot over the top-left quadrant of the image's region of the padded square: the
    top-left of the SC is red, the bottom-right plain grey."""
    sc = _build(source, _grey(), _quadrant_cam((300, 200)))
    rgb = sc.pixel_array[: SHOWN[0]].astype(np.int32)
    rows, columns = SHOWN
    hot = rgb[: rows // 2 - 20, : columns // 2 - 20]
    cold = rgb[rows // 2 + 20 :, columns // 2 + 20 :]
    assert hot[..., 0].mean() > cold[..., 0].mean() + 50
    assert (hot[..., 0] > hot[..., 2]).all()  # red over blue where the CAM is high
    assert np.unique(cold).tolist() == [GREY]  # no heat where the CAM is low
    # The other two quadrants (hot in only one direction) get no heat either.
    assert np.unique(rgb[rows // 2 + 20 :, : columns // 2 - 20]).tolist() == [GREY]
    assert np.unique(rgb[: rows // 2 - 20, columns // 2 + 20 :]).tolist() == [GREY]


def test_coarse_cam_is_upsampled_onto_the_image(make_radiograph: MakeRadiograph) -> None:
    """A 7 x 7 CAM (224 px input / 32) hot in its top-left cell on a square image: heat in
    the top-left corner, grey in the opposite one."""
    image = _grey(448, 448, value=30)
    source = make_radiograph(_identity(), image=image)
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[0, 0] = 4.0
    sc = _build(source, image, cam, input_size=224)
    rgb = sc.pixel_array[:512].astype(np.int32)
    corner, opposite = rgb[:20, :20], rgb[-20:, -20:]
    assert corner[..., 0].mean() > 60 > 30 + 5 > opposite[..., 0].mean()
    assert np.unique(opposite).tolist() == [30]


def test_cam_over_the_padding_only_gives_no_heat(make_radiograph: MakeRadiograph) -> None:
    """A wide image is padded above and below; a CAM hot only there leaves the image grey."""
    image = _grey(200, 300)
    source = make_radiograph(_identity(), image=image)
    top, _left, rows, _columns = input_region(image.shape, SIZE)
    assert (top, rows) == (10, 43)
    cam = np.zeros((SIZE, SIZE), dtype=np.float32)
    cam[:top] = 1.0
    cam[top + rows :] = 1.0
    sc = _build(source, image, cam)
    assert np.unique(sc.pixel_array[: display_size(image.shape)[0]]).tolist() == [GREY]


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (97, 61), (64, 64), (1000, 333)])
def test_input_region_is_where_preprocess_puts_the_image(shape: tuple[int, int]) -> None:
    params = Preprocessing(input_size=SIZE, clahe=False, mean=0.0, std=1.0)
    square = preprocess(np.ones(shape, dtype=np.float32), params)[0]
    rows, columns = np.nonzero(square)
    top, left, height, width = input_region(shape, SIZE)
    assert (rows.min(), columns.min()) == (top, left)
    assert (rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) == (height, width)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((64, 48), (512, 384)), ((300, 200), SHOWN), ((2048, 1536), (1024, 768)), ((700, 900),
                                                                                (700, 900))],
)
def test_display_size_clamps_the_longest_side(
    shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert display_size(shape) == expected


# --- validation -------------------------------------------------------------------------------


def _call(source: Dataset, image: object, cam: object, **overrides: object) -> object:
    kwargs: dict[str, object] = {
        "input_size": SIZE, "label": LABEL, "series_instance_uid": generate_uid(),
        "sop_instance_uid": generate_uid(), "instance_number": 1, "algorithm": ALGORITHM,
    }
    kwargs.update(overrides)
    return build_secondary_capture(source, image, cam, **kwargs)  # type: ignore[arg-type]


def test_rejects_invalid_arguments(source: Dataset) -> None:
    image = _grey().astype(np.float32) / 255.0
    cam = _quadrant_cam((300, 200))
    with pytest.raises(ValueError, match="label must contain 'Ossa research use - not for"):
        _call(source, image, cam, label="ABNORMAL p=0.87")
    with pytest.raises(ValueError, match="cam holds non-finite values"):
        _call(source, image, np.full((7, 7), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="cam must be a non-empty 2-D array"):
        _call(source, image, cam[None])
    with pytest.raises(TypeError, match="cam must be a floating-point numpy array"):
        _call(source, image, cam.astype(np.int64))
    with pytest.raises(ValueError, match="image must lie in"):
        _call(source, image * 3, cam)
    with pytest.raises(ValueError, match="input_size must be a positive integer"):
        _call(source, image, cam, input_size=0)
    with pytest.raises(ValueError, match="instance_number must be >= 1"):
        _call(source, image, cam, instance_number=0)
    with pytest.raises(TypeError, match="algorithm must be an AlgorithmInfo"):
        _call(source, image, cam, algorithm="Ossa")
    with pytest.raises(TypeError, match="source must be a pydicom Dataset"):
        _call({"SOPInstanceUID": "1.2"}, image, cam)  # type: ignore[arg-type]
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="source lacks SOPInstanceUID"):
        _call(source, image, cam)
