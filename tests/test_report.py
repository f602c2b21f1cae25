"""Tests of dicom_io.report: the Comprehensive 3D SR (TID 1500) built from a StudyPrediction."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from dicom_io import codes
from dicom_io.report import (
    DISCLAIMER,
    STUDY_TRACKING_IDENTIFIER,
    build_sr,
    series_description,
    sr_to_bytes,
    study_finding,
)
from dicom_io.synthetic import StudyIdentity
from models.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from tests.conftest import dciodvfy_errors

ALGORITHM = AlgorithmInfo(name="Ossa two-stage MobileNetV2", version="mura-v1 3f2a9c1")

MakeRadiograph = Callable[..., Dataset]


def _identity(**overrides: str) -> StudyIdentity:
    fields = {
        "patient_id": "PID-REPORT-7",
        "patient_name": "Doe^Jane",
        "accession_number": "ACC-42",
        "body_part": "WRIST",
    }
    fields.update(overrides)
    return StudyIdentity(**fields)


def _prediction(threshold: float = 0.5) -> StudyPrediction:
    """Three images, mixed bones and results; mean abnormality probability = 0.64."""
    return StudyPrediction(
        images=(
            ImagePrediction(bone="WRIST", bone_probability=0.93, abnormal_probability=0.87),
            ImagePrediction(bone="HAND", bone_probability=0.61, abnormal_probability=0.12),
            ImagePrediction(bone="WRIST", bone_probability=0.88, abnormal_probability=0.93),
        ),
        threshold=threshold,
        algorithm=ALGORITHM,
    )


@pytest.fixture
def sources(make_radiograph: MakeRadiograph) -> list[Dataset]:
    """A CR, a DX and a CR image of one study."""
    identity = _identity()
    return [
        make_radiograph(identity, modality=modality, instance_number=number)
        for number, modality in enumerate(("CR", "DX", "CR"), start=1)
    ]


def _write(sr: Dataset, path: Path) -> Path:
    path.write_bytes(sr_to_bytes(sr))
    return path


def _walk(items: pydicom.Sequence) -> Iterator[Dataset]:
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return (code.CodeValue, code.CodingSchemeDesignator)


def _key(code: Code) -> tuple[str, str]:
    return (code.value, code.scheme_designator)


def _num(group: Dataset, name: Code) -> float:
    """The value of the one NUM child of ``group`` with concept ``name``."""
    values = [
        float(item.MeasuredValueSequence[0].NumericValue)
        for item in group.ContentSequence
        if item.ValueType == "NUM" and _concept(item) == _key(name)
    ]
    assert len(values) == 1, f"expected one {name.meaning}, found {len(values)}"
    return values[0]


def _code(group: Dataset, name: Code) -> tuple[str, str]:
    """The value of the one CODE child of ``group`` with concept ``name``."""
    values = [
        (item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodingSchemeDesignator)
        for item in group.ContentSequence
        if item.ValueType == "CODE" and _concept(item) == _key(name)
    ]
    assert len(values) == 1, f"expected one {name.meaning}, found {len(values)}"
    return values[0]


def _groups(ds: Dataset) -> list[Dataset]:
    """Measurement Group containers under Imaging Measurements, in document order."""
    (measurements,) = [
        item for item in ds.ContentSequence if _concept(item) == _key(codes.IMAGING_MEASUREMENTS)
    ]
    return [item for item in measurements.ContentSequence if _concept(item) == ("125007", "DCM")]


def _images(group: Dataset) -> list[str]:
    return [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in group.ContentSequence
        if item.ValueType == "IMAGE"
    ]


def _tracking_identifier(group: Dataset) -> str:
    (value,) = [
        item.TextValue for item in group.ContentSequence if _concept(item) == ("112039", "DCM")
    ]
    return str(value)


# --- the SR as a file -------------------------------------------------------------------------


def test_sr_passes_dciodvfy(sources: list[Dataset], tmp_path: Path) -> None:
    path = _write(build_sr(sources, _prediction()), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []


def test_part10_bytes_round_trip(sources: list[Dataset]) -> None:
    sr = build_sr(sources, _prediction())
    data = sr_to_bytes(sr)
    assert data[128:132] == b"DICM"
    read = pydicom.dcmread(io.BytesIO(data))
    assert read.file_meta.MediaStorageSOPClassUID == Comprehensive3DSRStorage
    assert read.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    # Re-encoding what was read gives the same bytes: nothing was lost or changed.
    assert sr_to_bytes(read) == data
    # highdicom parses it back as a TID 1500 report with all four groups.
    parsed = hd.sr.srread(io.BytesIO(data))
    assert isinstance(parsed, hd.sr.Comprehensive3DSR)
    assert isinstance(parsed.content, hd.sr.MeasurementReport)
    assert len(parsed.content.get_image_measurement_groups()) == 4


def test_identity_study_and_series(sources: list[Dataset]) -> None:
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, _prediction()))))
    source = sources[0]
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in sources}
    assert sr.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources}
    assert sr.PatientName == source.PatientName
    assert sr.PatientID == source.PatientID
    assert sr.AccessionNumber == source.AccessionNumber
    assert sr.StudyDate == source.StudyDate
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.ContentQualification == "RESEARCH"
    assert sr.Manufacturer == "Ossa"
    assert sr.SoftwareVersions == ALGORITHM.version
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_uids_and_numbers_can_be_given(sources: list[Dataset]) -> None:
    series_uid, sop_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sr = build_sr(
        sources,
        _prediction(),
        series_number=77,
        instance_number=3,
        institution_name="Research Hospital",
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
    )
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (series_uid, sop_uid)
    assert (sr.SeriesNumber, sr.InstanceNumber) == (77, 3)
    assert sr.InstitutionName == "Research Hospital"


def test_every_source_is_evidence_and_in_content(sources: list[Dataset]) -> None:
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, _prediction()))))
    expected = {ds.SOPInstanceUID for ds in sources}
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == sources[0].StudyInstanceUID
    evidence = {
        ref.ReferencedSOPInstanceUID
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == expected
    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "IMAGE"
    }
    assert referenced == expected


def test_image_library_lists_every_source(sources: list[Dataset]) -> None:
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, _prediction()))))
    (library,) = [i for i in sr.ContentSequence if _concept(i) == _key(codes.IMAGE_LIBRARY)]
    entries = [i for i in _walk(library.ContentSequence) if i.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == [
        ds.SOPInstanceUID for ds in sources
    ]
    for entry, source in zip(entries, sources, strict=True):
        assert _code(entry, codes.MODALITY_DESCRIPTOR) == (source.Modality, "DCM")
        assert _num(entry, codes.PIXEL_DATA_ROWS) == source.Rows
        assert _num(entry, codes.PIXEL_DATA_COLUMNS) == source.Columns
    # The DX image carries Imager Pixel Spacing, so its entry has the TID 1603 spacings.
    assert _num(entries[1], codes.HORIZONTAL_PIXEL_SPACING) == pytest.approx(0.15)


# --- content ----------------------------------------------------------------------------------


def test_one_group_per_image(sources: list[Dataset]) -> None:
    prediction = _prediction()
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, prediction))))
    groups = _groups(sr)
    assert len(groups) == len(sources) + 1
    expected_findings = [codes.ABNORMAL, codes.NORMAL, codes.ABNORMAL]
    for group, source, image, finding in zip(
        groups, sources, prediction.images, expected_findings, strict=False
    ):
        assert _images(group) == [source.SOPInstanceUID]
        assert _code(group, codes.FINDING) == _key(finding)
        assert _code(group, Code("363698007", "SCT", "Finding Site")) == _key(
            codes.BONE_SITE[image.bone]
        )
        assert _num(group, codes.ABNORMALITY_PROBABILITY) == pytest.approx(
            image.abnormal_probability
        )
        assert _num(group, codes.BONE_PROBABILITY) == pytest.approx(image.bone_probability)


def test_groups_carry_tracking_and_algorithm(sources: list[Dataset]) -> None:
    data = sr_to_bytes(build_sr(sources, _prediction()))
    report = hd.sr.srread(io.BytesIO(data)).content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_image_measurement_groups()
    uids = [group.tracking_uid for group in groups]
    assert all(uids) and len(set(uids)) == len(groups)
    assert all(group.tracking_identifier for group in groups)
    for group in _groups(pydicom.dcmread(io.BytesIO(data))):
        texts = {
            _concept(item): item.TextValue
            for item in group.ContentSequence
            if item.ValueType == "TEXT"
        }
        assert texts[("111001", "DCM")] == ALGORITHM.name
        assert texts[("111003", "DCM")] == ALGORITHM.version


@pytest.mark.parametrize(("threshold", "finding"), [(0.5, codes.ABNORMAL), (0.7, codes.NORMAL)])
def test_study_group_matches_prediction(
    sources: list[Dataset], threshold: float, finding: Code
) -> None:
    prediction = _prediction(threshold)
    assert prediction.abnormal == (finding == codes.ABNORMAL)
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, prediction))))
    study = _groups(sr)[-1]
    assert _tracking_identifier(study) == STUDY_TRACKING_IDENTIFIER
    assert _code(study, codes.FINDING) == _key(finding)
    assert _num(study, codes.ABNORMALITY_PROBABILITY) == pytest.approx(
        prediction.abnormal_probability
    )
    assert _num(study, codes.ABNORMALITY_THRESHOLD) == pytest.approx(threshold)
    assert sorted(_images(study)) == sorted(ds.SOPInstanceUID for ds in sources)
    assert ("ABNORMAL" if prediction.abnormal else "NORMAL") in sr.SeriesDescription
    assert study_finding(sr) is prediction.abnormal


def test_study_finding_rejects_other_documents(sources: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="no Ossa study-level group"):
        study_finding(sources[0])
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, _prediction()))))
    study = _groups(sr)[-1]
    (tracking,) = [i for i in study.ContentSequence if _concept(i) == ("112039", "DCM")]
    tracking.TextValue = "someone else's group"
    with pytest.raises(ValueError, match="no Ossa study-level group"):
        study_finding(sr)


def test_image_finding_uses_the_threshold(sources: list[Dataset]) -> None:
    """At threshold 0.9 the image with p=0.87 is Normal and the one with p=0.93 Abnormal."""
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, _prediction(0.9)))))
    findings = [_code(group, codes.FINDING) for group in _groups(sr)[:3]]
    assert findings == [_key(codes.NORMAL), _key(codes.NORMAL), _key(codes.ABNORMAL)]


def test_series_description_states_result_and_research_use(sources: list[Dataset]) -> None:
    sr = build_sr(sources, _prediction())
    assert sr.SeriesDescription == "Ossa: ABNORMAL (p=0.64) - research use, not for diagnosis"
    normal = series_description(_prediction(0.99))
    assert normal.startswith("Ossa: NORMAL (p=0.64)")
    assert "not for diagnosis" in normal
    assert max(len(sr.SeriesDescription), len(normal)) <= 64


def test_content_says_research_not_diagnosis(sources: list[Dataset]) -> None:
    sr = pydicom.dcmread(io.BytesIO(sr_to_bytes(build_sr(sources, _prediction()))))
    texts = [item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"]
    assert DISCLAIMER in texts
    assert "not a diagnosis" in DISCLAIMER


def test_private_coding_scheme_is_declared(sources: list[Dataset]) -> None:
    sr = build_sr(sources, _prediction())
    designators = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert codes.OSSA_SCHEME in designators


def _set_invalid_sex(ds: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid CS value
        ds.PatientSex = "Female"


def test_sources_are_not_modified(make_radiograph: MakeRadiograph) -> None:
    """The SR builder repairs patient attributes in its own copies, never in the sources."""
    source = make_radiograph(_identity(patient_name="DOE JANE"))
    del source.StudyID
    _set_invalid_sex(source)
    before = pydicom.dcmread(io.BytesIO(_part10(source)))
    sr = build_sr([source], _single())
    sr.PatientID = "CHANGED"
    assert "StudyID" not in source
    assert source == before


# --- validation -------------------------------------------------------------------------------


def test_rejects_mismatched_lengths(sources: list[Dataset]) -> None:
    with pytest.raises(ValueError, match=r"sources.*2 source\(s\) for 3 prediction"):
        build_sr(sources[:2], _prediction())


def test_rejects_mixed_studies(make_radiograph: MakeRadiograph) -> None:
    first = make_radiograph(_identity())
    other = make_radiograph(_identity(patient_id="PID-OTHER"), instance_number=2)
    third = make_radiograph(_identity(), instance_number=3)
    with pytest.raises(ValueError, match=r"one study: sources\[1\]"):
        build_sr([first, other, third], _prediction())


def test_rejects_repeated_source(sources: list[Dataset]) -> None:
    with pytest.raises(ValueError, match=r"sources\[2\] repeats .* sources\[0\]"):
        build_sr([sources[0], sources[1], sources[0]], _prediction())


def test_rejects_source_without_uid(sources: list[Dataset]) -> None:
    del sources[1].SOPInstanceUID
    with pytest.raises(ValueError, match=r"sources\[1\] lacks SOPInstanceUID"):
        build_sr(sources, _prediction())


def test_rejects_non_image(sources: list[Dataset]) -> None:
    del sources[2].Rows
    with pytest.raises(ValueError, match=r"sources\[2\] is not an image"):
        build_sr(sources, _prediction())


def test_rejects_wrong_types(sources: list[Dataset]) -> None:
    with pytest.raises(TypeError, match="prediction"):
        build_sr(sources, _prediction().images)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sources"):
        build_sr(sources[0], _single())  # type: ignore[arg-type]


# --- real-world sources and privacy -----------------------------------------------------------


def _single(bone: str = "HUMERUS") -> StudyPrediction:
    return StudyPrediction(
        images=(ImagePrediction(bone=bone, bone_probability=0.7, abnormal_probability=0.2),),
        threshold=0.5,
        algorithm=ALGORITHM,
    )


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_real_cr_from_pydicom_data(tmp_path: Path) -> None:
    """NEMA WG04 CR: no Imager Pixel Spacing, zero Pixel Spacing, caret-less physician name."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(path, str), "pydicom-data's RG1_UNCR.dcm is not available"
    source = pydicom.dcmread(path)
    assert "ImagerPixelSpacing" not in source
    out = _write(build_sr([source], _single()), tmp_path / "sr.dcm")
    assert dciodvfy_errors(out) == []
    sr = pydicom.dcmread(out)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID"):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.StudyDescription == source.StudyDescription
    (group, _study) = _groups(sr)
    assert _images(group) == [source.SOPInstanceUID]
    assert _code(group, codes.FINDING) == _key(codes.NORMAL)


def test_missing_and_invalid_patient_attributes(
    make_radiograph: MakeRadiograph, tmp_path: Path
) -> None:
    source = make_radiograph()
    for keyword in ("PatientBirthDate", "StudyID", "ReferringPhysicianName", "AccessionNumber"):
        del source[keyword]
    _set_invalid_sex(source)
    path = _write(build_sr([source], _single("WRIST")), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    sr = pydicom.dcmread(path)
    assert sr.PatientSex == ""
    assert sr.PatientBirthDate == ""
    assert sr.PatientID == source.PatientID


def test_no_patient_identifiers_in_logs_or_warnings(
    make_radiograph: MakeRadiograph, caplog: pytest.LogCaptureFixture
) -> None:
    """A caret-less name makes highdicom warn with the name; Ossa keeps it out of the logs."""
    identity = _identity(patient_name="SECRETNAME", patient_id="SECRETID", accession_number="A9")
    source = make_radiograph(identity)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sr = build_sr([source], _single("WRIST"))
    assert sr.PatientName == "SECRETNAME"
    messages = [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught]
    assert any("built SR" in message for message in messages)
    assert not [m for m in messages if "SECRETNAME" in m or "SECRETID" in m]


def test_long_algorithm_identity_is_clipped_in_header_only(
    make_radiograph: MakeRadiograph, tmp_path: Path
) -> None:
    """Manufacturer's Model Name and Software Versions are LO (64); TID 4019 keeps it all."""
    algorithm = AlgorithmInfo(name="N" * 80, version="bundle-" + "0123456789" * 7)
    prediction = StudyPrediction(images=_single().images, threshold=0.5, algorithm=algorithm)
    path = _write(build_sr([make_radiograph()], prediction), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    sr = pydicom.dcmread(path)
    assert sr.ManufacturerModelName == algorithm.name[:64]
    assert sr.SoftwareVersions == algorithm.version[:64]
    texts = {item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"}
    assert {algorithm.name, algorithm.version} <= texts
