"""Tests of dicom_io.sr: the Comprehensive 3D SR (TID 1500) built from a StudyPrediction."""

from __future__ import annotations

import datetime
import io
import logging
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from dicom_io import codes
from dicom_io.derived import algorithm_equipment, encode_file
from dicom_io.sr import (
    DISCLAIMER,
    SR_CONTRIBUTION,
    STUDY_TRACKING_IDENTIFIER,
    build_sr,
    report_uids,
    series_description,
    study_finding,
)
from dicom_io.synthetic import StudyIdentity
from models.serving.findings import Finding
from models.serving.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from models.serving.taxonomy import MURA_TAXONOMY, BodyPartClass, CodedConcept, Taxonomy
from tests.conftest import dciodvfy_errors, dcmtk

ALGORITHM = AlgorithmInfo(name="Ossa two-stage MobileNetV2", version="mura-v1 3f2a9c1")
OUT_OF_SCOPE = "body part OTHER is outside the assessed scope"
LOW_CONFIDENCE = "body-part confidence 0.41 is below the bundle's minimum 0.62"
UNREADABLE = "pixel data could not be read"
#: A bundle's own taxonomy: a class MURA does not have, with its own code.
ANKLE = CodedConcept("70258002", "SCT", "Ankle joint")
CUSTOM_TAXONOMY = Taxonomy(
    (
        BodyPartClass("ANKLE", ANKLE, True),
        BodyPartClass("OTHER", CodedConcept("38266002", "SCT", "Entire body"), False),
    )
)

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


def _assessed(body_part: str, body_part_probability: float, probability: float) -> ImagePrediction:
    return ImagePrediction(body_part, body_part_probability, True, probability)


def _skipped(body_part: str, body_part_probability: float, reason: str) -> ImagePrediction:
    return ImagePrediction(body_part, body_part_probability, False, None, reason)


def _thresholds(
    threshold: float, taxonomy: Taxonomy = MURA_TAXONOMY, **per_class: float
) -> tuple[tuple[str, float], ...]:
    """``threshold`` for every assessed class of ``taxonomy``, except those in ``per_class``."""
    return tuple((name, per_class.get(name, threshold)) for name in taxonomy.assessed)


def _prediction(threshold: float = 0.5) -> StudyPrediction:
    """Three images, mixed body parts and results; mean abnormality probability = 0.64."""
    return StudyPrediction(
        images=(
            _assessed("WRIST", 0.93, 0.87),
            _assessed("HAND", 0.61, 0.12),
            _assessed("WRIST", 0.88, 0.93),
        ),
        thresholds=_thresholds(threshold),
        algorithm=ALGORITHM,
    )


def _mixed() -> StudyPrediction:
    """The second image (OTHER) is not assessed; the study mean is (0.87 + 0.93) / 2 = 0.9."""
    return StudyPrediction(
        images=(
            _assessed("WRIST", 0.93, 0.87),
            _skipped("OTHER", 0.8, OUT_OF_SCOPE),
            _assessed("WRIST", 0.88, 0.93),
        ),
        thresholds=_thresholds(0.5),
        algorithm=ALGORITHM,
    )


def _not_assessed() -> StudyPrediction:
    """No image assessed: out of scope, too unsure, unreadable (body part UNKNOWN)."""
    return StudyPrediction(
        images=(
            _skipped("OTHER", 0.8, OUT_OF_SCOPE),
            _skipped("WRIST", 0.41, LOW_CONFIDENCE),
            ImagePrediction.not_assessed(UNREADABLE),
        ),
        thresholds=_thresholds(0.5),
        algorithm=ALGORITHM,
    )


def _custom() -> StudyPrediction:
    """Three ankle images of a bundle with :data:`CUSTOM_TAXONOMY`; mean 0.7 >= 0.6."""
    return StudyPrediction(
        images=(
            _assessed("ANKLE", 0.9, 0.6),
            _assessed("ANKLE", 0.8, 0.7),
            _assessed("ANKLE", 0.95, 0.8),
        ),
        thresholds=_thresholds(0.6, CUSTOM_TAXONOMY),
        algorithm=ALGORITHM,
    )


def _build(
    sources: list[Dataset], prediction: StudyPrediction, taxonomy: Taxonomy = MURA_TAXONOMY
) -> hd.sr.Comprehensive3DSR:
    return build_sr(sources, prediction, taxonomy=taxonomy)


def _read(sr: Dataset) -> Dataset:
    """The SR as a PACS would hand it back: encoded and decoded again."""
    return pydicom.dcmread(io.BytesIO(encode_file(sr)))


@pytest.fixture
def sources(make_radiograph: MakeRadiograph) -> list[Dataset]:
    """A CR, a DX and a CR image of one study."""
    identity = _identity()
    return [
        make_radiograph(identity, modality=modality, instance_number=number)
        for number, modality in enumerate(("CR", "DX", "CR"), start=1)
    ]


def _write(sr: Dataset, path: Path) -> Path:
    path.write_bytes(encode_file(sr))
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


def _texts(group: Dataset, name: Code) -> list[str]:
    """The values of the TEXT children of ``group`` with concept ``name``."""
    return [
        str(item.TextValue)
        for item in group.ContentSequence
        if item.ValueType == "TEXT" and _concept(item) == _key(name)
    ]


def _has_child(group: Dataset, name: Code) -> bool:
    return any(_concept(item) == _key(name) for item in group.ContentSequence)


def _tracking_identifier(group: Dataset) -> str:
    (value,) = [
        item.TextValue for item in group.ContentSequence if _concept(item) == ("112039", "DCM")
    ]
    return str(value)


# --- the SR as a file -------------------------------------------------------------------------


def test_sr_passes_dciodvfy(sources: list[Dataset], tmp_path: Path) -> None:
    path = _write(_build(sources, _prediction()), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []


def test_part10_bytes_round_trip(sources: list[Dataset]) -> None:
    sr = _build(sources, _prediction())
    data = encode_file(sr)
    assert data[128:132] == b"DICM"
    read = pydicom.dcmread(io.BytesIO(data))
    assert read.file_meta.MediaStorageSOPClassUID == Comprehensive3DSRStorage
    assert read.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    # Re-encoding what was read gives the same bytes: nothing was lost or changed.
    assert encode_file(read) == data
    # highdicom parses it back as a TID 1500 report with all four groups.
    parsed = hd.sr.srread(io.BytesIO(data))
    assert isinstance(parsed, hd.sr.Comprehensive3DSR)
    assert isinstance(parsed.content, hd.sr.MeasurementReport)
    assert len(parsed.content.get_image_measurement_groups()) == 4


def test_identity_study_and_series(sources: list[Dataset]) -> None:
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, _prediction()))))
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
        taxonomy=MURA_TAXONOMY,
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
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, _prediction()))))
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
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, _prediction()))))
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
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, prediction))))
    groups = _groups(sr)
    assert len(groups) == len(sources) + 1
    expected_findings = [codes.ABNORMAL, codes.NORMAL, codes.ABNORMAL]
    for group, source, image, finding in zip(
        groups, sources, prediction.images, expected_findings, strict=False
    ):
        site = MURA_TAXONOMY.get(image.body_part).code
        assert _images(group) == [source.SOPInstanceUID]
        assert _code(group, codes.FINDING) == _key(finding)
        assert _code(group, codes.FINDING_SITE) == (site.value, site.scheme)
        assert _num(group, codes.ABNORMALITY_PROBABILITY) == pytest.approx(
            image.abnormal_probability
        )
        assert _num(group, codes.BODY_PART_PROBABILITY) == pytest.approx(
            image.body_part_probability
        )
        assert not _texts(group, codes.COMMENT)


def test_groups_carry_tracking_and_algorithm(sources: list[Dataset]) -> None:
    data = encode_file(_build(sources, _prediction()))
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
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, prediction))))
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
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, _prediction()))))
    study = _groups(sr)[-1]
    (tracking,) = [i for i in study.ContentSequence if _concept(i) == ("112039", "DCM")]
    tracking.TextValue = "someone else's group"
    with pytest.raises(ValueError, match="no Ossa study-level group"):
        study_finding(sr)


def test_image_finding_uses_the_threshold(sources: list[Dataset]) -> None:
    """At threshold 0.9 the image with p=0.87 is Normal and the one with p=0.93 Abnormal."""
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, _prediction(0.9)))))
    findings = [_code(group, codes.FINDING) for group in _groups(sr)[:3]]
    assert findings == [_key(codes.NORMAL), _key(codes.NORMAL), _key(codes.ABNORMAL)]


def test_each_image_uses_the_threshold_of_its_body_part(sources: list[Dataset]) -> None:
    """WRIST at 0.9, HAND at 0.1: the hand image with p=0.12 is Abnormal, the study (WRIST,
    mean 0.64) Normal."""
    thresholds = _thresholds(0.5, WRIST=0.9, HAND=0.1)
    prediction = StudyPrediction(_prediction().images, thresholds, ALGORITHM)
    sr = _read(_build(sources, prediction))
    *images, study = _groups(sr)
    findings = [_code(group, codes.FINDING) for group in images]
    assert findings == [_key(codes.NORMAL), _key(codes.ABNORMAL), _key(codes.ABNORMAL)]
    assert _num(study, codes.ABNORMALITY_THRESHOLD) == pytest.approx(0.9)
    assert _code(study, codes.FINDING) == _key(codes.NORMAL)
    assert study_finding(sr) is False


def test_series_description_states_result_and_research_use(sources: list[Dataset]) -> None:
    sr = _build(sources, _prediction())
    assert sr.SeriesDescription == "Ossa: ABNORMAL (p=0.64) - research use, not for diagnosis"
    normal = series_description(_prediction(0.99))
    assert normal.startswith("Ossa: NORMAL (p=0.64)")
    assert "not for diagnosis" in normal
    assert max(len(sr.SeriesDescription), len(normal)) <= 64


def test_content_says_research_not_diagnosis(sources: list[Dataset]) -> None:
    sr = pydicom.dcmread(io.BytesIO(encode_file(_build(sources, _prediction()))))
    texts = [item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"]
    assert DISCLAIMER in texts
    assert "not a diagnosis" in DISCLAIMER


def test_private_coding_scheme_is_declared(sources: list[Dataset]) -> None:
    sr = _build(sources, _prediction())
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
    sr = _build([source], _single())
    sr.PatientID = "CHANGED"
    assert "StudyID" not in source
    assert source == before


# --- images and studies not assessed ---------------------------------------------------------


def test_mixed_study_reports_the_assessed_images_and_says_why_not_the_others(
    sources: list[Dataset],
) -> None:
    prediction = _mixed()
    sr = _read(_build(sources, prediction))
    first, skipped, third, study = _groups(sr)
    for group, source in zip((first, skipped, third), sources, strict=True):
        assert _images(group) == [source.SOPInstanceUID]
    for group in (first, third):
        assert _code(group, codes.FINDING) == _key(codes.ABNORMAL)
        assert not _texts(group, codes.COMMENT)
    # The image not assessed: its image and finding site, no Finding and no probability of
    # abnormality, the reason in words.
    assert not _has_child(skipped, codes.FINDING)
    assert not _has_child(skipped, codes.ABNORMALITY_PROBABILITY)
    assert _code(skipped, codes.FINDING_SITE) == ("38266002", "SCT")
    assert _num(skipped, codes.BODY_PART_PROBABILITY) == pytest.approx(0.8)
    assert _texts(skipped, codes.COMMENT) == [f"Not assessed: {OUT_OF_SCOPE}"]
    # The study: the verdict and mean of the assessed images, which are its sources.
    assert _code(study, codes.FINDING) == _key(codes.ABNORMAL)
    assert _num(study, codes.ABNORMALITY_PROBABILITY) == pytest.approx(0.9)
    assert sorted(_images(study)) == sorted([sources[0].SOPInstanceUID, sources[2].SOPInstanceUID])
    (comment,) = _texts(study, codes.COMMENT)
    assert comment == (
        f"Study result from 2 of 3 images; not assessed: image 2 of 3 ({OUT_OF_SCOPE})"
    )
    assert study_finding(sr) is True
    assert sr.SeriesDescription == "Ossa: ABNORMAL (p=0.90) - research use, not for diagnosis"


def test_study_not_assessed_has_no_finding_and_says_why(sources: list[Dataset]) -> None:
    prediction = _not_assessed()
    assert prediction.verdict == "NOT ASSESSED"
    sr = _read(_build(sources, prediction))
    # No Normal/Abnormal anywhere in the document, and no probability of abnormality.
    names = {_concept(item) for item in _walk(sr.ContentSequence)}
    assert _key(codes.FINDING) not in names
    assert _key(codes.ABNORMALITY_PROBABILITY) not in names
    assert _key(codes.ABNORMALITY_THRESHOLD) not in names
    *images, study = _groups(sr)
    for group, source, reason in zip(
        images, sources, (OUT_OF_SCOPE, LOW_CONFIDENCE, UNREADABLE), strict=True
    ):
        assert _images(group) == [source.SOPInstanceUID]
        assert _texts(group, codes.COMMENT) == [f"Not assessed: {reason}"]
    # Finding site and body-part probability where stage 1 named a class, not for UNKNOWN.
    assert _code(images[0], codes.FINDING_SITE) == ("38266002", "SCT")
    assert _code(images[1], codes.FINDING_SITE) == ("74670003", "SCT")
    assert _num(images[1], codes.BODY_PART_PROBABILITY) == pytest.approx(0.41)
    assert not _has_child(images[2], codes.FINDING_SITE)
    assert not _has_child(images[2], codes.BODY_PART_PROBABILITY)
    assert _tracking_identifier(study) == STUDY_TRACKING_IDENTIFIER
    assert sorted(_images(study)) == sorted(ds.SOPInstanceUID for ds in sources)
    assert _texts(study, codes.COMMENT) == [f"NOT ASSESSED: {prediction.reason}"]
    for reason in (OUT_OF_SCOPE, LOW_CONFIDENCE, UNREADABLE):
        assert reason in prediction.reason
    assert study_finding(sr) is None
    assert sr.SeriesDescription == "Ossa: NOT ASSESSED - research use, not for diagnosis"
    assert len(sr.SeriesDescription) <= 64
    texts = [item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"]
    assert DISCLAIMER in texts


def test_study_finding_needs_a_finding_or_a_not_assessed_comment(sources: list[Dataset]) -> None:
    sr = _read(_build(sources, _not_assessed()))
    study = _groups(sr)[-1]
    (comment,) = [i for i in study.ContentSequence if _concept(i) == _key(codes.COMMENT)]
    comment.TextValue = "something else"
    with pytest.raises(ValueError, match="no Ossa study-level group"):
        study_finding(sr)


def test_taxonomy_of_the_bundle_gives_the_finding_site(sources: list[Dataset]) -> None:
    sr = _read(_build(sources, _custom(), CUSTOM_TAXONOMY))
    for group in _groups(sr):
        assert _code(group, codes.FINDING_SITE) == (ANKLE.value, ANKLE.scheme)
    sites = [
        item.ConceptCodeSequence[0]
        for item in _walk(sr.ContentSequence)
        if _concept(item) == _key(codes.FINDING_SITE)
    ]
    assert {site.CodeMeaning for site in sites} == {ANKLE.meaning}
    assert study_finding(sr) is True


def _dsrdump(path: Path) -> str:
    """DCMTK ``dsrdump`` of a file (long values in full); fails the test unless it exits 0."""
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.fail("dsrdump (Debian package dcmtk) is not installed; run `make test`")
    proc = subprocess.run(
        [exe, "+Pl", str(path)], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", errors="replace")
    # Without +U8, dsrdump prints values in the file's character set (here ASCII or UTF-8).
    return proc.stdout.decode("utf-8")


VARIANTS: dict[str, tuple[Callable[[], StudyPrediction], Taxonomy]] = {
    "assessed": (_prediction, MURA_TAXONOMY),
    "normal": (lambda: _prediction(0.7), MURA_TAXONOMY),
    "mixed": (_mixed, MURA_TAXONOMY),
    "not-assessed": (_not_assessed, MURA_TAXONOMY),
    "custom-taxonomy": (_custom, CUSTOM_TAXONOMY),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_is_valid_and_readable_by_dcmtk(
    sources: list[Dataset], tmp_path: Path, variant: str
) -> None:
    make, taxonomy = VARIANTS[variant]
    prediction = make()
    path = _write(_build(sources, prediction, taxonomy), tmp_path / f"{variant}.dcm")
    assert dciodvfy_errors(path) == []
    dump = _dsrdump(path)
    assert DISCLAIMER in dump
    assert "research use, not for diagnosis" in dump
    skipped = [p for p in prediction.images if not p.assessed]
    assert dump.count('"Not assessed: ') == len(skipped)
    for image in skipped:
        assert f'"Not assessed: {image.reason}"' in dump
    assert ("NOT ASSESSED" in dump) is (not prediction.assessed)
    if prediction.assessed:
        assert f'"{prediction.verdict.title()}"' in dump  # Finding (SCT): "Abnormal"/"Normal"
    else:
        assert f'"NOT ASSESSED: {prediction.reason}"' in dump
        assert '"Abnormal"' not in dump and '"Normal"' not in dump
    parsed = hd.sr.srread(path)
    assert isinstance(parsed.content, hd.sr.MeasurementReport)
    assert len(parsed.content.get_image_measurement_groups()) == len(sources) + 1
    assert _ossa_equipment(pydicom.dcmread(path)).SoftwareVersions == ALGORITHM.version


# --- located findings (TID 1410) -------------------------------------------------------------

#: Two findings on the first 48 x 64 source image, most probable first; the second touches the
#: right and bottom edges (x1 == Columns, y1 == Rows), which PS3.3 C.18.6.1.2 allows.
FINDINGS = (
    Finding(10.3, 20.7, 30.1, 41.9, 0.8731),
    Finding(40.25, 50.5, 48.0, 64.0, 0.6125),
)

PlanarROIGroup = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def _with_findings(
    findings: tuple[Finding, ...] = FINDINGS, algorithm: AlgorithmInfo = ALGORITHM
) -> StudyPrediction:
    """Image 1 (WRIST) has ``findings``; image 2 (HAND) is assessed without any; image 3 is
    not assessed."""
    return StudyPrediction(
        images=(
            ImagePrediction("WRIST", 0.93, True, 0.87, findings=findings),
            _assessed("HAND", 0.61, 0.72),
            _skipped("OTHER", 0.8, OUT_OF_SCOPE),
        ),
        thresholds=_thresholds(0.5),
        algorithm=algorithm,
    )


def _report(sr: Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 content of an SR, parsed by highdicom from its Part 10 bytes."""
    content = hd.sr.srread(io.BytesIO(encode_file(sr))).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def _coded(concept: hd.sr.CodedConcept | None) -> tuple[str, str]:
    assert concept is not None
    return (concept.value, concept.scheme_designator)


def _box(finding: Finding) -> list[list[float]]:
    """The closed POLYLINE of a box: top-left, clockwise, back to top-left (column, row)."""
    x0, y0, x1, y1 = finding.x0, finding.y0, finding.x1, finding.y1
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _region(group: PlanarROIGroup) -> hd.sr.ImageRegion:
    region = group.roi
    assert isinstance(region, hd.sr.ImageRegion)
    return region


def test_findings_are_planar_roi_groups_read_back_by_highdicom(sources: list[Dataset]) -> None:
    assert (sources[0].Columns, sources[0].Rows) == (48, 64)
    sr = _build(sources, _with_findings())
    report = _report(sr)
    rois = report.get_planar_roi_measurement_groups()
    assert len(rois) == len(FINDINGS)
    wrist = MURA_TAXONOMY.get("WRIST").code
    for rank, (roi, finding) in enumerate(zip(rois, FINDINGS, strict=True), 1):
        assert roi[0].ContentTemplateSequence[0].TemplateIdentifier == "1410"
        assert _coded(roi.finding_type) == _key(codes.FRACTURE) == ("125605004", "SCT")
        assert [_coded(site.value) for site in roi.finding_sites] == [(wrist.value, wrist.scheme)]
        region = _region(roi)
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        # Graphic Data is FL: the corners come back as their float32 values, no other change.
        np.testing.assert_array_equal(region.value, np.array(_box(finding), dtype=np.float32))
        (reference,) = region.ContentSequence
        (sop,) = reference.ReferencedSOPSequence
        assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (
            sources[0].SOPClassUID,
            sources[0].SOPInstanceUID,
        )
        (measurement,) = roi.get_measurements()
        assert _coded(measurement.name) == _key(codes.FRACTURE_PROBABILITY)
        assert measurement.value == pytest.approx(finding.probability)
        assert _coded(measurement.unit) == _key(codes.PROBABILITY_UNIT)
        assert roi.tracking_identifier == f"Ossa image 1 finding {rank} of {len(FINDINGS)}"
        texts = {_concept(i): i.TextValue for i in roi[0].ContentSequence if i.ValueType == "TEXT"}
        assert texts[("111001", "DCM")] == ALGORITHM.name  # TID 4019 Algorithm Name
        assert texts[("111003", "DCM")] == ALGORITHM.version  # and Version
    assert len({roi.tracking_uid for roi in rois}) == len(rois)
    # The image groups and the study group are there as before, after the TID 1410 groups.
    assert len(report.get_image_measurement_groups()) == len(sources) + 1
    assert [_tracking_identifier(g) for g in _groups(_read(sr))[len(rois) :]] == [
        "Ossa image 1 of 3",
        "Ossa image 2 of 3",
        "Ossa image 3 of 3",
        STUDY_TRACKING_IDENTIFIER,
    ]
    assert study_finding(_read(sr)) is True


def test_images_without_findings_or_not_assessed_have_no_planar_roi_group(
    sources: list[Dataset],
) -> None:
    report = _report(_build(sources, _with_findings()))
    on_first = report.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=sources[0].SOPInstanceUID
    )
    assert len(on_first) == len(FINDINGS)
    for source in sources[1:]:  # assessed without findings; not assessed
        uid = source.SOPInstanceUID
        assert report.get_planar_roi_measurement_groups(referenced_sop_instance_uid=uid) == []
    # Without any finding, the report has no TID 1410 group at all.
    plain = _build(sources, _with_findings(()))
    assert _report(plain).get_planar_roi_measurement_groups() == []
    assert len(_groups(_read(plain))) == len(sources) + 1
    assert not any(item.ValueType == "SCOORD" for item in _walk(plain.ContentSequence))


def test_sr_with_findings_passes_dciodvfy_and_dsrdump(
    sources: list[Dataset], tmp_path: Path
) -> None:
    """Includes the box that touches the right and bottom edges (x1 == Columns)."""
    sr = _build(sources, _with_findings())
    path = _write(sr, tmp_path / "findings.dcm")
    assert dciodvfy_errors(path) == []
    dump = _dsrdump(path)
    assert dump.count('(125605004,SCT,"Fracture of bone")') == len(FINDINGS)
    assert dump.count("SCOORD:") == len(FINDINGS)
    edge = _region(_report(sr).get_planar_roi_measurement_groups()[1])
    assert edge.value.max(axis=0).tolist() == [sources[0].Columns, sources[0].Rows]


def test_finding_groups_are_the_same_when_the_sr_is_built_again(sources: list[Dataset]) -> None:
    """A re-run (same study, sources, model) writes the same content, tracking UIDs included;
    another model version tracks its findings under other UIDs."""
    series, sop = report_uids(
        sources[0].StudyInstanceUID, [ds.SOPInstanceUID for ds in sources], ALGORITHM.version
    )

    def build(prediction: StudyPrediction) -> Dataset:
        return _read(
            build_sr(
                sources,
                prediction,
                taxonomy=MURA_TAXONOMY,
                series_instance_uid=series,
                sop_instance_uid=sop,
            )
        )

    def tracking_uids(sr: Dataset) -> list[str]:
        return [str(g.tracking_uid) for g in _report(sr).get_planar_roi_measurement_groups()]

    first, second = build(_with_findings()), build(_with_findings())
    assert first.ContentSequence == second.ContentSequence
    assert len(set(tracking_uids(first))) == len(FINDINGS)
    other = build(_with_findings(algorithm=AlgorithmInfo(ALGORITHM.name, "mura-v2 0000000")))
    assert set(tracking_uids(other)).isdisjoint(tracking_uids(first))


def test_finding_boxes_must_lie_on_their_image(sources: list[Dataset]) -> None:
    """A box past the edge is refused; one past it by float rounding only is clipped."""
    outside = _with_findings((Finding(10.0, 10.0, 48.5, 20.0, 0.9),))
    with pytest.raises(ValueError, match=r"prediction.images\[0\].findings\[0\].*48 x 64"):
        _build(sources, outside)
    rounding = Finding(10.0, 10.0, 48.0005, 64.0005, 0.9)
    report = _report(_build(sources, _with_findings((rounding,))))
    (roi,) = report.get_planar_roi_measurement_groups()
    assert _region(roi).value.max(axis=0).tolist() == [48.0, 64.0]


# --- validation -------------------------------------------------------------------------------


def test_rejects_mismatched_lengths(sources: list[Dataset]) -> None:
    with pytest.raises(ValueError, match=r"sources.*2 source\(s\) for 3 prediction"):
        _build(sources[:2], _prediction())


def test_rejects_mixed_studies(make_radiograph: MakeRadiograph) -> None:
    first = make_radiograph(_identity())
    other = make_radiograph(_identity(patient_id="PID-OTHER"), instance_number=2)
    third = make_radiograph(_identity(), instance_number=3)
    with pytest.raises(ValueError, match=r"one study: sources\[1\]"):
        _build([first, other, third], _prediction())


def test_rejects_repeated_source(sources: list[Dataset]) -> None:
    with pytest.raises(ValueError, match=r"sources\[2\] repeats .* sources\[0\]"):
        _build([sources[0], sources[1], sources[0]], _prediction())


def test_rejects_source_without_uid(sources: list[Dataset]) -> None:
    del sources[1].SOPInstanceUID
    with pytest.raises(ValueError, match=r"sources\[1\] lacks SOPInstanceUID"):
        _build(sources, _prediction())


def test_rejects_non_image(sources: list[Dataset]) -> None:
    del sources[2].Rows
    with pytest.raises(ValueError, match=r"sources\[2\] is not an image"):
        _build(sources, _prediction())


def test_rejects_wrong_types(sources: list[Dataset]) -> None:
    with pytest.raises(TypeError, match="prediction"):
        _build(sources, _prediction().images)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sources"):
        build_sr(sources[0], _single(), taxonomy=MURA_TAXONOMY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="taxonomy"):
        build_sr(sources, _prediction(), taxonomy=MURA_TAXONOMY.to_dict())  # type: ignore[arg-type]


def test_rejects_assessed_body_part_outside_the_taxonomy(sources: list[Dataset]) -> None:
    """A WRIST prediction reported with a taxonomy that has no WRIST class is a mismatch."""
    with pytest.raises(ValueError, match=r"body parts \['HAND', 'WRIST'\].*not classes"):
        _build(sources, _prediction(), CUSTOM_TAXONOMY)


# --- real-world sources and privacy -----------------------------------------------------------


def _single(body_part: str = "HUMERUS") -> StudyPrediction:
    return StudyPrediction(
        images=(_assessed(body_part, 0.7, 0.2),),
        thresholds=_thresholds(0.5),
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
    out = _write(_build([source], _single()), tmp_path / "sr.dcm")
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
    path = _write(_build([source], _single("WRIST")), tmp_path / "sr.dcm")
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
        sr = _build([source], _single("WRIST"))
    assert sr.PatientName == "SECRETNAME"
    messages = [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught]
    assert any("built SR" in message for message in messages)
    assert not [m for m in messages if "SECRETNAME" in m or "SECRETID" in m]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_prediction, "study ABNORMAL (p=0.640, threshold=0.500)"),
        (_not_assessed, "0 assessed, study NOT ASSESSED"),
    ],
)
def test_log_states_the_verdict(
    sources: list[Dataset],
    caplog: pytest.LogCaptureFixture,
    make: Callable[[], StudyPrediction],
    expected: str,
) -> None:
    caplog.set_level(logging.INFO, logger="dicom_io.sr")
    _build(sources, make())
    (message,) = [r.getMessage() for r in caplog.records if "built SR" in r.getMessage()]
    assert expected in message
    assert message.endswith(expected)


def test_long_algorithm_identity_is_clipped_in_header_only(
    make_radiograph: MakeRadiograph, tmp_path: Path
) -> None:
    """Manufacturer's Model Name and Software Versions are LO (64); TID 4019 keeps it all."""
    algorithm = AlgorithmInfo(name="N" * 80, version="bundle-" + "0123456789" * 7)
    prediction = StudyPrediction(
        images=_single().images, thresholds=_thresholds(0.5), algorithm=algorithm
    )
    path = _write(_build([make_radiograph()], prediction), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    sr = pydicom.dcmread(path)
    assert sr.ManufacturerModelName == algorithm.name[:64]
    assert sr.SoftwareVersions == algorithm.version[:64]
    item = _ossa_equipment(sr)
    assert (item.ManufacturerModelName, item.SoftwareVersions) == (
        algorithm.name[:64], algorithm.version[:64])
    texts = {item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"}
    assert {algorithm.name, algorithm.version} <= texts


def test_report_uids_are_derived_from_study_sources_and_version() -> None:
    series, sop = report_uids("1.2.3", ["1.2.3.1", "1.2.3.2"], "demo@abc")
    assert (series, sop) == report_uids("1.2.3", ["1.2.3.2", "1.2.3.1", "1.2.3.1"], "demo@abc")
    assert series != sop and len(sop) <= 64 and pydicom.uid.UID(sop).is_valid
    assert report_uids("1.2.3", ["1.2.3.1"], "demo@abc")[1] != sop  # a different set
    assert report_uids("1.2.3", ["1.2.3.1", "1.2.3.2"], "demo@def")[1] != sop  # another model
    assert report_uids("1.2.4", ["1.2.3.1", "1.2.3.2"], "demo@abc")[1] != sop
    with pytest.raises(ValueError, match="source_sop_instance_uids"):
        report_uids("1.2.3", [], "demo@abc")


def _prediction_of(n: int) -> StudyPrediction:
    """The first ``n`` images of :func:`_prediction`."""
    full = _prediction()
    return StudyPrediction(images=full.images[:n], thresholds=full.thresholds,
                           algorithm=full.algorithm)


def test_superseding_sr_references_its_predecessor(sources: list[Dataset], tmp_path: Path) -> None:
    first = _build(sources[:2], _prediction_of(2))
    series, sop = report_uids(sources[0].StudyInstanceUID,
                              [ds.SOPInstanceUID for ds in sources], "v1")
    second = _read(build_sr(sources, _prediction_of(3), taxonomy=MURA_TAXONOMY,
                            series_instance_uid=series, sop_instance_uid=sop, instance_number=2,
                            previous_versions=[first]))
    assert (second.SeriesInstanceUID, second.SOPInstanceUID, second.InstanceNumber) == (
        series, sop, 2)
    (study,) = second.PredecessorDocumentsSequence
    (series_item,) = study.ReferencedSeriesSequence
    (ref,) = series_item.ReferencedSOPSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    assert series_item.SeriesInstanceUID == first.SeriesInstanceUID
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        first.SOPClassUID, first.SOPInstanceUID)
    assert dciodvfy_errors(_write(second, tmp_path / "second.dcm")) == []
    dump = _dsrdump(tmp_path / "second.dcm")
    assert "Predecessor Docs    : 1" in dump
    assert '"Abnormal"' in dump


# --- Contributing Equipment (IHE AI Results) --------------------------------------------------


def _ossa_equipment(sr: Dataset) -> Dataset:
    """The one Contributing Equipment Sequence item whose Manufacturer is Ossa."""
    (item,) = [i for i in sr.ContributingEquipmentSequence if i.Manufacturer == "Ossa"]
    return item


def test_contributing_equipment_names_the_algorithm_and_its_version(
    sources: list[Dataset],
) -> None:
    before = datetime.datetime.now()
    sr = _read(_build(sources, _prediction()))
    after = datetime.datetime.now()
    item = _ossa_equipment(sr)
    assert item.ManufacturerModelName == "Ossa two-stage MobileNetV2"
    assert item.SoftwareVersions == "mura-v1 3f2a9c1"
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109102", "DCM", "Processing Equipment")
    assert item.ContributionDescription == SR_CONTRIBUTION
    assert "not for diagnosis" in item.ContributionDescription
    when = pydicom.valuerep.DT(item.ContributionDateTime)
    assert before - datetime.timedelta(seconds=1) <= when <= after
    # Beside it: the source's acquisition equipment and highdicom, as highdicom adds them.
    manufacturers = [i.Manufacturer for i in sr.ContributingEquipmentSequence]
    assert manufacturers == ["Ossa phantom", "Ossa", "Highdicom open-source contributors"]
    acquisition = sr.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
    assert acquisition.CodeValue == "109101"


def test_algorithm_equipment_clips_long_identities_and_takes_a_time() -> None:
    algorithm = AlgorithmInfo(name="N" * 80, version="v" * 70)
    when = datetime.datetime(2024, 5, 6, 7, 8, 9)
    item = algorithm_equipment(algorithm, "made it", when=when)
    assert (item.ManufacturerModelName, item.SoftwareVersions) == ("N" * 64, "v" * 64)
    assert str(item.ContributionDateTime) == "20240506070809"
    assert item.ContributionDescription == "made it"
    with pytest.raises(TypeError, match="algorithm must be an AlgorithmInfo"):
        algorithm_equipment("Ossa", "made it")  # type: ignore[arg-type]


# --- Specific Character Set -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "name", "raw"),
    [
        ("ISO_IR 192", "Müller^Zoë", b"M\xc3\xbcller^Zo\xc3\xab"),
        ("ISO_IR 192", "山田^太郎", b"\xe5\xb1\xb1\xe7\x94\xb0^\xe5\xa4\xaa\xe9\x83\x8e "),
        (
            "ISO_IR 192",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            "Yamada^Tarou=山田^太郎=やまだ^たろう".encode(),
        ),
        ("ISO_IR 192", "Müller Zoë", b"M\xc3\xbcller Zo\xc3\xab"),  # caret-less
        ("ISO_IR 100", "Müller^Zoë", b"M\xfcller^Zo\xeb"),
    ],
)
def test_patient_name_survives_byte_for_byte(
    make_radiograph: MakeRadiograph, tmp_path: Path, charset: str, name: str, raw: bytes
) -> None:
    """The SR keeps the source's Specific Character Set and Patient's Name bytes, is valid
    and reads back with DCMTK, which prints the name."""
    source = make_radiograph(_identity())
    source.SpecificCharacterSet = charset
    source.PatientName = name
    source_path = tmp_path / "source.dcm"
    source_path.write_bytes(_part10(source))
    received = pydicom.dcmread(source_path)  # as the worker reads it from its spool
    path = _write(build_sr([received], _single("WRIST"), taxonomy=MURA_TAXONOMY),
                  tmp_path / "sr.dcm")
    sr, original = pydicom.dcmread(path), pydicom.dcmread(source_path)
    # The undecoded bytes of Patient's Name, as they lie in the files.
    assert sr.get_item("PatientName").value == original.get_item("PatientName").value == raw
    assert sr.SpecificCharacterSet == original.SpecificCharacterSet == charset
    assert sr.PatientName == name
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([dcmtk("dsrdump"), "+U8", str(path)],
                          capture_output=True, timeout=60, check=True).stdout.decode("utf-8")
    assert f"Patient             : {name} (#PID-REPORT-7)" in dump
    assert '"Normal"' in dump  # p=0.2 below the threshold 0.5


# --- imperfect source headers -------------------------------------------------------------

#: An invalid value of each VR kind in attributes the SR and the capture copy: the expected
#: fate of each (Type 2: written empty; Type 3: left out).
INVALID_VALUES: dict[str, tuple[str, str]] = {
    "PatientAge": ("81", "left out"),  # AS needs 081Y
    "StudyDate": ("2024-01-01", "empty"),  # DA has no dashes
    "StudyTime": ("25:00", "empty"),  # TM
    "PatientBirthDate": ("19800231", "empty"),  # no 31 February
    "StudyDescription": ("x" * 80, "left out"),  # LO is at most 64
    "ReferringPhysicianName": ("R" * 80, "empty"),  # a PN component is at most 64
    "PatientSex": ("f", "empty"),  # a lowercase CS
    "BodyPartExamined": ("wrist", "left out"),  # a lowercase CS
    "AcquisitionDateTime": ("2024-13-45T", "left out"),  # DT
}
#: Invalid identifiers: copied byte for byte, so that the PACS files the result with its study.
INVALID_IDENTIFIERS = {"PatientID": "P" * 70, "AccessionNumber": "A-123456789012345678"}


#: dciodvfy's closing line after any complaint about a value's VR.
DCIODVFY_SUMMARY = "Error - Dicom dataset contains invalid data values for Value Representations"


def identifier_errors(errors: list[str]) -> list[str]:
    """dciodvfy's complaints about the invalid identifiers the source holds (and nothing
    else): the one exception to "every SR and SC passes dciodvfy"."""
    return [e for e in errors if "Patient ID" in e or "Accession Number" in e]


def _imperfect(sources: list[Dataset]) -> list[Dataset]:
    """The sources with the invalid values, set as a file read without validation holds
    them (new elements, made under the current writing validation mode)."""
    values = {k: v for k, (v, _) in INVALID_VALUES.items()} | INVALID_IDENTIFIERS
    for ds in sources:
        for keyword, value in values.items():
            if keyword in ds:
                del ds[keyword]
            setattr(ds, keyword, value)
    return sources


def test_invalid_header_values_are_left_out_or_written_empty_and_identifiers_kept(
    sources: list[Dataset], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One rule, whatever the VR: an invalid value is left out (Type 3) or written empty
    (Type 2), an invalid identifier reaches the SR byte for byte; dciodvfy then complains
    of the identifiers only. With pydicom configured as the service configures it, no log
    line quotes a value: the warnings name attributes."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode",
                        pydicom.config.IGNORE)
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode",
                        pydicom.config.IGNORE)
    sources = _imperfect(sources)
    with caplog.at_level(logging.DEBUG):
        sr = _build(sources, _prediction())
    read = pydicom.dcmread(_write(sr, tmp_path / "sr.dcm"))
    for keyword, (_, fate) in INVALID_VALUES.items():
        if fate == "empty":
            assert read[keyword].value in ("", None), keyword
        elif keyword in ("PatientAge", "StudyDescription"):  # copied by highdicom if valid
            assert keyword not in read, keyword
    for keyword, value in INVALID_IDENTIFIERS.items():
        assert read[keyword].value == value  # byte for byte
    errors = dciodvfy_errors(tmp_path / "sr.dcm")
    assert errors == [*identifier_errors(errors), DCIODVFY_SUMMARY], errors
    assert len(identifier_errors(errors)) == 2
    text = caplog.text
    for keyword, (value, _) in INVALID_VALUES.items():
        if keyword != "AcquisitionDateTime":
            assert f"source {keyword} is not a valid" in text
        assert all(quoted not in text for quoted in (f"'{value}'", f'"{value}"', f"<{value}>"))
        assert len(value) < 8 or value not in text
    assert "source PatientID is not a valid LO value; copied as it is" in text
    assert "P" * 70 not in text and "A-123456789012345678" not in text


def test_valid_header_values_are_copied_as_they_are(sources: list[Dataset]) -> None:
    for ds in sources:
        ds.PatientAge, ds.StudyDescription = "081Y", "XR WRIST 3 VIEWS"
    read = _read(_build(sources, _prediction()))
    assert (read.PatientAge, read.StudyDescription) == ("081Y", "XR WRIST 3 VIEWS")
    assert read.StudyDate == sources[0].StudyDate
