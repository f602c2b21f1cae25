"""Tests of dicom_io.capture: the Secondary Capture of one radiograph, its
findings outlined. The drawing on its own (dicom_io.capture.draw): tests/test_capture_draw.py."""

from __future__ import annotations

import copy
import io
import logging
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from dicom_io.capture import (
    OUTLINE_WIDTH,
    RESEARCH_NOTICE,
    SC_CONTRIBUTION,
    SERIES_DESCRIPTION,
    build_secondary_capture,
    derivation_description,
    sc_label,
    secondary_capture_uids,
)
from dicom_io.capture.draw import display_boxes, display_size, label_band, render
from dicom_io.derived import encode_file
from dicom_io.synthetic import StudyIdentity
from models.serving.findings import Finding
from models.serving.results import AlgorithmInfo, ImagePrediction
from tests.conftest import dciodvfy_errors, dcmtk
from tests.test_capture_draw import is_outline, outline_mask

ALGORITHM = AlgorithmInfo(name="Ossa two-stage MobileNetV2", version="mura-v1 3f2a9c1")
LABEL = "Ossa research use - not for diagnosis - ABNORMAL p=0.87 - WRIST"
#: A 300 x 200 radiograph of uniform grey 120/255 is shown at 512 x 341 (longest side 512).
SHOWN = (512, 341)
GREY = 120
#: A finding in the pixels of the 300 x 200 source: columns 60-120, rows 90-180.
FINDING = Finding(60.0, 90.0, 120.0, 180.0, 0.74)

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
    findings: Sequence[Finding] = (),
    *,
    label: str = LABEL,
) -> Dataset:
    """Build an SC and return it as a PACS would hand it back (encoded, decoded again)."""
    series, sop = secondary_capture_uids(
        source.StudyInstanceUID, source.SOPInstanceUID, ALGORITHM.version
    )
    sc = build_secondary_capture(
        source,
        image.astype(np.float32) / 255.0,
        findings,
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
@pytest.mark.parametrize("findings", [(FINDING,), ()], ids=["findings", "normal"])
def test_sc_passes_dciodvfy(
    make_radiograph: MakeRadiograph, tmp_path: Path, modality: str, findings: tuple[Finding, ...]
) -> None:
    source = make_radiograph(_identity(), image=_grey(), modality=modality)
    sc = _build(source, _grey(), findings)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == (
        ("RGB", 3) if findings else ("MONOCHROME2", 1)
    )
    assert dciodvfy_errors(_write(sc, tmp_path / "sc.dcm")) == []


def test_an_imperfect_source_header_gives_a_valid_capture_but_its_identifiers(
    make_radiograph: MakeRadiograph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capture copies what the SR copies, by the same rule (an invalid value left out
    or written empty, an invalid identifier as the source has it)."""
    from tests.test_sr import (
        DCIODVFY_SUMMARY,
        INVALID_IDENTIFIERS,
        _imperfect,
        identifier_errors,
    )

    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode",
                        pydicom.config.IGNORE)
    (source,) = _imperfect([make_radiograph(_identity(), image=_grey())])
    sc = _build(source, _grey(), (FINDING,))
    path = _write(sc, tmp_path / "sc.dcm")
    errors = dciodvfy_errors(path)
    assert errors == [*identifier_errors(errors), DCIODVFY_SUMMARY], errors
    read = pydicom.dcmread(path)
    for keyword, value in INVALID_IDENTIFIERS.items():
        assert read[keyword].value == value
    assert "PatientAge" not in read and "BodyPartExamined" not in read
    assert read.StudyDate == "" and read.PatientSex == ""


def test_identity_marks_it_as_derived_research_output(source: Dataset) -> None:
    sc = _build(source, _grey(), [FINDING])
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert sc.Modality == "OT"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert sc.ConversionType == "WSD"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ContentQualification == "RESEARCH"
    assert sc.SeriesDescription == SERIES_DESCRIPTION
    assert SERIES_DESCRIPTION == "Ossa findings - research use, not for diagnosis"
    assert sc.DerivationDescription == derivation_description(1)
    assert "not an original image" in sc.DerivationDescription
    assert "1 finding outlined" in sc.DerivationDescription
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
    assert "heatmap" not in SC_CONTRIBUTION
    assert [i.Manufacturer for i in sc.ContributingEquipmentSequence] == [
        "Ossa phantom", "Ossa", "Highdicom open-source contributors"]
    acquisition = sc.ContributingEquipmentSequence[0]
    assert acquisition.PurposeOfReferenceCodeSequence[0].CodeValue == "109101"
    assert acquisition.ContributionDescription == "Acquisition equipment of the source image(s)"


def test_acquisition_equipment_is_the_sources(source: Dataset) -> None:
    """The source's equipment and acquisition time, as highdicom's
    ``for_image_acquisition`` names them; none without a Manufacturer."""
    source.ManufacturerModelName = "Phantom DX"
    source.AcquisitionDateTime = "20240506070809"
    sc = _build(source, _grey())
    acquisition = sc.ContributingEquipmentSequence[0]
    assert (acquisition.Manufacturer, acquisition.ManufacturerModelName) == (
        "Ossa phantom", "Phantom DX")
    assert str(acquisition.ContributionDateTime) == "20240506070809"
    source.Manufacturer = ""
    assert [i.Manufacturer for i in _build(source, _grey()).ContributingEquipmentSequence] == [
        "Ossa", "Highdicom open-source contributors"]


def test_derivation_description_counts_the_outlined_findings(source: Dataset) -> None:
    assert derivation_description(0) == (
        "Ossa research output, not for diagnosis and not an original image: the source "
        "radiograph (VOI LUT applied, resampled, 8 bit) and a burned-in label; no finding. "
        "Not for measurement."
    )
    assert "with 1 finding outlined (suspected fractures" in derivation_description(1)
    assert "with 3 findings outlined (suspected fractures" in derivation_description(3)
    assert all(len(derivation_description(n)) <= 1024 for n in (0, 1, 99))  # ST
    normal = _build(source, _grey())
    assert normal.DerivationDescription == derivation_description(0)
    two = _build(source, _grey(), [FINDING, Finding(10, 10, 40, 50, 0.3)])
    assert two.DerivationDescription == derivation_description(2)
    # One Series Description for the whole series, whatever each capture shows.
    assert normal.SeriesDescription == two.SeriesDescription == SERIES_DESCRIPTION


def test_same_study_own_series_and_references_its_source(source: Dataset) -> None:
    before = copy.deepcopy(source)
    sc = _build(source, _grey(), [FINDING])
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
    sc = _build(source, _grey())
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
    path = _write(_build(received, _grey(), [FINDING]), tmp_path / "sc.dcm")
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
        sc = _build(source, _grey(), [FINDING])
    assert sc.PatientName == "SECRETNAME"
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert "built secondary capture: 341 x 559 RGB, 1 finding(s) outlined" in messages
    assert not [m for m in messages if "SECRETNAME" in m or "SECRETID" in m]


def test_lossy_source_stays_marked_lossy(make_radiograph: MakeRadiograph) -> None:
    source = make_radiograph(_identity(), image=_grey())
    assert "LossyImageCompression" not in _build(source, _grey())
    source.LossyImageCompression = "01"
    assert _build(source, _grey()).LossyImageCompression == "01"


def test_real_cr_from_pydicom_data(tmp_path: Path) -> None:
    """NEMA WG04 CR (1955 x 1841, 12 bit): downscaled to 1024 on its longest side, with two
    findings outlined; it passes dciodvfy."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(path, str), "pydicom-data's RG1_UNCR.dcm is not available"
    source = pydicom.dcmread(path)
    pixels = source.pixel_array.astype(np.float32)
    image = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    series, sop = secondary_capture_uids(source.StudyInstanceUID, source.SOPInstanceUID, "v")
    findings = [Finding(900.0, 700.0, 1300.0, 1100.0, 0.81), Finding(200.0, 1500.0, 420.0,
                                                                     1800.0, 0.43)]
    sc = build_secondary_capture(
        source, image, findings, label=LABEL, series_instance_uid=series,
        sop_instance_uid=sop, instance_number=1, algorithm=ALGORITHM,
    )
    rows, columns = display_size(image.shape)
    assert max(rows, columns) == 1024
    assert (sc.Columns, sc.Rows - rows) == (columns, label_band(LABEL, columns, 1).shape[0])
    assert sc.PhotometricInterpretation == "RGB"
    assert int(is_outline(sc.pixel_array[:rows]).sum()) > 2 * 4 * 100 * OUTLINE_WIDTH
    out = _write(sc, tmp_path / "sc.dcm")
    assert dciodvfy_errors(out) == []
    assert pydicom.dcmread(out).PatientID == source.PatientID


# --- pixels of the capture --------------------------------------------------------------------


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


@pytest.mark.parametrize("findings", [(FINDING,), ()], ids=["findings", "normal"])
def test_dcmtk_renders_it_with_the_label(
    source: Dataset, tmp_path: Path, findings: tuple[Finding, ...]
) -> None:
    sc = _build(source, _grey(), findings)
    rendered = _dcmj2pnm_png(_write(sc, tmp_path / "sc.dcm"), tmp_path)
    # DCMTK shows exactly the stored pixels (8 bit, no VOI LUT to apply).
    assert rendered.shape == ((559, 341, 3) if findings else (559, 341))
    np.testing.assert_array_equal(rendered, sc.pixel_array)
    grey = rendered if rendered.ndim == 2 else rendered.max(axis=2)
    band = grey[SHOWN[0] :]
    # The band: white text on black, a few hundred text pixels; nothing of it above.
    assert 300 < int((band > 200).sum()) < 2000
    assert int((band == 0).sum()) > 0.8 * band.size
    above = rendered[: SHOWN[0]]
    if findings:
        assert int(is_outline(above).sum()) > 0  # yellow outline and text, on grey film
        film = np.all(above == GREY, axis=-1)
        assert film.mean() > 0.9
    else:
        assert np.unique(above).tolist() == [GREY]


def test_label_band_shows_the_text(source: Dataset) -> None:
    abnormal = _build(source, _grey()).pixel_array
    normal = _build(source, _grey(), label=LABEL.replace("ABNORMAL", "NORMAL")).pixel_array
    again = _build(source, _grey()).pixel_array
    np.testing.assert_array_equal(abnormal, again)  # deterministic
    np.testing.assert_array_equal(abnormal[: SHOWN[0]], normal[: SHOWN[0]])
    assert int((abnormal[SHOWN[0] :] != normal[SHOWN[0] :]).sum()) > 50
    plain = label_band(RESEARCH_NOTICE, SHOWN[1], 1)
    assert int((plain > 200).sum()) > 100
    assert int((label_band("", SHOWN[1], 1) > 0).sum()) == 0


def test_normal_image_is_the_film_unchanged_above_the_label_band(
    make_radiograph: MakeRadiograph,
) -> None:
    """No finding: MONOCHROME2, the film's own 8-bit values (shown at its own size: no
    resampling), then the research-use label band."""
    film = np.random.default_rng(3).integers(0, 256, SHOWN, dtype=np.uint8)
    source = make_radiograph(_identity(), image=film)
    sc = _build(source, film)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("MONOCHROME2", 1)
    np.testing.assert_array_equal(sc.pixel_array[: SHOWN[0]], film)
    np.testing.assert_array_equal(sc.pixel_array[SHOWN[0] :], label_band(LABEL, SHOWN[1], 1))


def test_capture_with_findings_is_the_film_but_for_outlines_and_text(
    make_radiograph: MakeRadiograph,
) -> None:
    """Findings: the film's values on every channel except on the outline and its text above
    it; the label band is that of the same capture without findings; the research-use label
    stays."""
    film = np.random.default_rng(4).integers(0, 200, SHOWN, dtype=np.uint8)
    source = make_radiograph(_identity(), image=film)
    finding = Finding(100.0, 200.0, 200.0, 300.0, 0.74)
    sc = _build(source, film, [finding]).pixel_array
    normal = _build(source, film).pixel_array
    assert sc.shape == (*normal.shape, 3)
    np.testing.assert_array_equal(sc[SHOWN[0] :], np.repeat(normal[SHOWN[0] :, :, None], 3, 2))
    shown = sc[: SHOWN[0]]
    ring = outline_mask((100 - 3, 200 - 3, 199 + 3, 299 + 3), SHOWN)
    assert is_outline(shown[ring]).all()
    changed = np.any(shown != film[..., None], axis=-1)
    assert not changed[203:297, 103:197].any()  # the boxed region is left as it is
    text = changed & ~ring
    rows, columns = np.nonzero(text)
    assert rows.size > 20  # "1: 0.74"
    assert rows.max() < 200 - 3 and rows.min() > 200 - 3 - 40  # just above the outline
    assert columns.min() >= 100 - 3 and columns.max() < 100 - 3 + 120
    # The research-use label band, grey on every channel.
    for channel in range(3):
        np.testing.assert_array_equal(sc[SHOWN[0] :, :, channel], label_band(LABEL, SHOWN[1], 1))


def test_findings_are_scaled_from_the_source_onto_a_reduced_rendering(
    make_radiograph: MakeRadiograph,
) -> None:
    """A 600 x 400 source rendered at 300 x 200 (a working size) and shown at 512 x 341: a
    finding in the source's pixels is outlined where it lies on the shown film."""
    source = make_radiograph(_identity(), image=_grey(600, 400))
    finding = Finding(100.0, 120.0, 220.0, 300.0, 0.5)
    sc = _build(source, _grey(), [finding]).pixel_array[: SHOWN[0]]
    sx, sy = SHOWN[1] / 400, SHOWN[0] / 600
    left, top = round(100 * sx), round(120 * sy)
    right, bottom = round(220 * sx) - 1, round(300 * sy) - 1
    assert (left, top, right, bottom) == (85, 102, 187, 255)
    ring = outline_mask((left - 3, top - 3, right + 3, bottom + 3), SHOWN)
    assert is_outline(sc[ring]).all()
    outline = is_outline(sc)
    assert not outline[top : bottom + 1, left : right + 1].any()
    assert not outline[bottom + 4 :].any() and not outline[:, right + 4 :].any()
    assert not outline[:, : left - 3].any()
    assert display_boxes([finding], (600, 400), (300, 200), SHOWN) == [
        pytest.approx((100 * sx, 120 * sy, 220 * sx, 300 * sy))]


def test_its_pixels_are_those_of_render(make_radiograph: MakeRadiograph) -> None:
    """The capture's Pixel Data is :func:`render`'s picture of the film, the findings in the
    source's pixels and the label: RGB with findings, MONOCHROME2 without."""
    source = make_radiograph(_identity(), image=_grey(600, 400))
    film = _grey().astype(np.float32) / 255.0
    for findings in ([FINDING], []):
        np.testing.assert_array_equal(
            _build(source, _grey(), findings).pixel_array,
            render(film, findings, LABEL, source_size=(600, 400)),
        )


def test_probability_and_rank_are_written(source: Dataset) -> None:
    """The text above an outline changes with the probability and with the rank, and nothing
    else does."""
    left = round(FINDING.x0 * SHOWN[1] / 200) - OUTLINE_WIDTH
    top = round(FINDING.y0 * SHOWN[0] / 300) - OUTLINE_WIDTH
    text = np.zeros((559, 341), dtype=bool)
    text[top - 40 : top, left : left + 100] = True
    first = _build(source, _grey(), [FINDING]).pixel_array
    other = _build(source, _grey(), [replace(FINDING, probability=0.41)]).pixel_array
    differs = np.any(first != other, axis=-1)
    assert int(differs[text].sum()) > 10  # "1: 0.74" against "1: 0.41"
    assert not differs[~text].any()
    # The same finding ranked second: "2: 0.74" instead of "1: 0.74" at the same place.
    second = _build(source, _grey(), [Finding(5.0, 250.0, 30.0, 290.0, 0.9), FINDING])
    assert np.any(second.pixel_array != first, axis=-1)[text].any()


# --- validation -------------------------------------------------------------------------------


def _call(source: Dataset, image: object, findings: object, **overrides: object) -> object:
    kwargs: dict[str, object] = {
        "label": LABEL, "series_instance_uid": generate_uid(),
        "sop_instance_uid": generate_uid(), "instance_number": 1, "algorithm": ALGORITHM,
    }
    kwargs.update(overrides)
    return build_secondary_capture(source, image, findings, **kwargs)  # type: ignore[arg-type]


def test_rejects_invalid_arguments(source: Dataset) -> None:
    image = _grey().astype(np.float32) / 255.0
    findings = [FINDING]
    with pytest.raises(ValueError, match="label must contain 'Ossa research use - not for"):
        _call(source, image, findings, label="ABNORMAL p=0.87")
    with pytest.raises(TypeError, match="findings must be a sequence of Finding"):
        _call(source, image, None)
    with pytest.raises(TypeError, match=r"findings\[0\] must be a Finding"):
        _call(source, image, [(60, 90, 120, 180)])
    with pytest.raises(ValueError, match=r"findings\[1\] starts outside the source image"):
        _call(source, image, [FINDING, Finding(200.0, 10.0, 230.0, 40.0, 0.5)])
    with pytest.raises(ValueError, match="image must lie in"):
        _call(source, image * 3, findings)
    with pytest.raises(ValueError, match="instance_number must be >= 1"):
        _call(source, image, findings, instance_number=0)
    with pytest.raises(TypeError, match="algorithm must be an AlgorithmInfo"):
        _call(source, image, findings, algorithm="Ossa")
    with pytest.raises(TypeError, match="source must be a pydicom Dataset"):
        _call({"SOPInstanceUID": "1.2"}, image, findings)  # type: ignore[arg-type]
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="source lacks SOPInstanceUID"):
        _call(source, image, findings)
