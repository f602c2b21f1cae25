"""Turn source radiographs and a :class:`~models.serving.results.StudyPrediction` into a DICOM SR.

The report is a Comprehensive 3D SR document (PS3.3 A.35.13) whose content tree follows
PS3.16 TID 1500 "Measurement Report", built with highdicom:

- observation context (TID 1001/1002/1004): the Ossa device as observer;
- procedure reported (CID 100) and an Image Library (TID 1600/1601/1602/1603) that lists
  every source image;
- "Imaging Measurements": one Measurement and Qualitative Evaluation Group (TID 1501) per
  image (source image, finding site = predicted body part, coded by the model's taxonomy,
  Finding = Abnormal/Normal, probability of abnormality and of the predicted body part, TID
  4019 algorithm identification, TID 4108 tracking identifier) and one study-level group
  (Finding, mean probability of the assessed images, threshold);
- before those groups, one Planar ROI Measurements and Qualitative Evaluations group (TID
  1410) per located finding of an assessed image (:attr:`ImagePrediction.findings`), in image
  order then most probable first: an Image Region (SCOORD, PS3.3 C.18.6) that outlines the
  finding's box on its source image as a closed POLYLINE, Finding = "Fracture of bone" (SCT
  125605004), finding site, the region's fracture probability, TID 4019 and TID 4108;
- an image the model did not assess (out-of-scope body part, low confidence, unreadable...)
  keeps its group, with its source image and, when known, its finding site, but has no
  Finding and no probability of abnormality: a TEXT "Comment" (DCM 121106, TID 1501 row 12)
  says "Not assessed: <reason>". A study with no assessed image has a study group without
  Finding or probabilities whose Comment says "NOT ASSESSED: <reason>", and its Series
  Description says NOT ASSESSED;
- "Qualitative Evaluations" (TID 1500 row 12): a TEXT comment saying that this is research
  software output and not a diagnosis. The Series Description says so too.

The Contributing Equipment Sequence (0018,A001, SOP Common Module, PS3.3 C.12.1) names the
algorithm and its version as Processing Equipment (DCM 109102, PS3.16 CID 7005), as the IHE AI
Results (AIR) profile asks of every result object; :func:`algorithm_equipment` builds that item
for the secondary capture too (:mod:`dicom_io.secondary_capture`).

The SR joins the source study (same Study Instance UID, patient and study attributes copied
from the sources) in a new series (Modality SR). It is COMPLETE, UNVERIFIED and PRELIMINARY
(no person has verified it), and its Content Qualification (0018,9004, SOP Common Module,
PS3.3 C.12.1) is RESEARCH.
"""

from __future__ import annotations

import copy
import datetime
import io
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.valuerep import _check_specific_character_set  # what its constructors apply
from pydicom import Dataset, config
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, validate_value

from dicom_io import codes
from models.serving.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from models.serving.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

#: Default Series Number of the SR series; high, so that PACS list it after the images.
DEFAULT_SERIES_NUMBER = 9001
#: Manufacturer (0008,0070) of every SR Ossa writes.
MANUFACTURER = "Ossa"
#: Written as a TEXT content item into every SR (the Series Description says so, shorter).
DISCLAIMER = (
    "Research software output (Ossa), not a diagnosis and not for clinical use. "
    "Produced automatically and not verified by a physician; the images must be read by a "
    "qualified radiologist."
)

#: Tracking Identifier (TID 4108) of the study-level TID 1501 group; :func:`study_finding`
#: finds the study result by it.
STUDY_TRACKING_IDENTIFIER = "Ossa study result"
#: Start of the Comment of an image group that has no Finding, followed by the reason.
IMAGE_NOT_ASSESSED = "Not assessed"
#: Start of the Comment of a study group that has no Finding (and of the Series Description's
#: result), followed by the reason; also :attr:`StudyPrediction.verdict` of such a study.
STUDY_NOT_ASSESSED = "NOT ASSESSED"
#: Contribution Description (0018,A003) of Ossa's Contributing Equipment item in an SR.
SR_CONTRIBUTION = (
    "Ossa classified the study's radiographs and wrote this report "
    "(research use, not for diagnosis)"
)

_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Patient/study attributes highdicom reads from the first source; Type 2 in the SR IOD.
_TYPE2_HEADER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_LO_MAX = 64
#: How far (pixels) a finding's box may pass the image's edge and be clipped back to it: the
#: float rounding of scaling a box to Columns x Rows, not a box that is really outside.
_BOX_TOLERANCE = 1e-3


def build_sr(
    sources: Sequence[Dataset],
    prediction: StudyPrediction,
    *,
    taxonomy: Taxonomy,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
    institution_name: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the Ossa Structured Report of one study.

    Implements a Comprehensive 3D SR IOD (PS3.3 A.35.13) with a PS3.16 TID 1500 "Measurement
    Report" content tree: a TID 1600 Image Library entry per source image, one TID 1501 group
    per image and one for the study (each with TID 4019 Algorithm Identification and a TID 4108
    tracking identifier), and a research-use disclaimer. Images and studies that were not
    assessed are reported without a Finding, with a Comment that says why.

    Each located finding of an assessed image is a PS3.16 TID 1410 "Planar ROI Measurements
    and Qualitative Evaluations" group, written before the TID 1501 groups (TID 1500 lists
    TID 1410 first), in the order of ``prediction.images`` and then of each image's findings
    (most probable first). Its Image Region is a SCOORD (PS3.3 C.18.6) of Graphic Type
    POLYLINE (C.18.6.1.1) that closes the finding's box, five (column, row) points from the
    top-left corner clockwise back to it, in the image-relative pixel coordinates of
    C.18.6.1.2 (the top-left corner of the top-left pixel is 0\\0, the bottom-right corner of
    the bottom-right pixel Columns\\Rows), which are those of
    :class:`models.serving.findings.Finding`
    unchanged; Graphic Data is FL, so the corners are stored as float32. The group also holds
    Finding = "Fracture of bone" (SCT 125605004), the image's Finding Site, the region's
    fracture probability (99OSSA FRACPROB, TID 300), TID 4019 Algorithm Identification and a
    TID 4108 tracking identifier whose UID is derived from the model version, the source's
    SOP Instance UID and the finding's rank, so that a re-run writes the same UIDs.

    Parameters
    ----------
    sources : sequence of pydicom.Dataset
        The study's source images (CR, DX…); ``sources[i]`` is the image that
        ``prediction.images[i]`` was predicted from. Pixel data is neither needed nor read.
        The datasets are not modified.
    prediction : StudyPrediction
        Per-image predictions and the study result.
    taxonomy : Taxonomy
        The classes of the model that made ``prediction``; each image group's Finding Site is
        the code of its body part's class. Every assessed image's body part must be a class;
        a not-assessed image whose body part is not one (e.g. ``"UNKNOWN"``) gets no Finding
        Site.
    series_number : int, optional
        Series Number (0020,0011) of the new SR series, >= 1.
    instance_number : int, optional
        Instance Number (0020,0013) of the SR, >= 1.
    institution_name : str or None, optional
        Institution Name (0008,0080) of the equipment that creates the SR.
    series_instance_uid, sop_instance_uid : str or None, optional
        UIDs of the new series and SR instance; fresh ones when not given (see
        :func:`report_uids` for UIDs that a re-run reproduces).
    previous_versions : sequence of pydicom.Dataset, optional
        Earlier SRs of the study that this one supersedes (each needs Study, Series and
        SOP Instance UIDs and SOP Class UID); referenced in the Predecessor Documents
        Sequence (0040,A360), PS3.3 C.17.2.1. The earlier SRs stay valid objects.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The SR, with file meta information; see :func:`encode_file`.

    Raises
    ------
    TypeError
        If ``sources`` is not a sequence of datasets, ``prediction`` not a StudyPrediction or
        ``taxonomy`` not a Taxonomy.
    ValueError
        If ``sources`` and ``prediction.images`` differ in length, the sources are not all of
        one study, a source lacks a required UID or is not an image, a source repeats, an
        assessed image's body part is not a class of ``taxonomy``, or a finding's box reaches
        beyond its source's Columns x Rows.
    """
    _validate(
        sources,
        prediction,
        taxonomy,
        series_number=series_number,
        instance_number=instance_number,
    )
    headers = [source_header(ds) for ds in sources]
    algorithm = prediction.algorithm
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, manufacturer=MANUFACTURER
    )
    thresholds = dict(prediction.thresholds)

    groups = [
        _image_group(
            header,
            image,
            taxonomy=taxonomy,
            threshold=thresholds.get(image.body_part),
            number=i,
            total=len(headers),
            algorithm_id=algorithm_id,
        )
        for i, (header, image) in enumerate(zip(headers, prediction.images, strict=True), 1)
    ]
    groups.append(_study_group(headers, prediction, taxonomy=taxonomy))
    regions = [
        region
        for i, (header, image) in enumerate(zip(headers, prediction.images, strict=True), 1)
        for region in _finding_groups(
            header,
            image,
            taxonomy=taxonomy,
            number=i,
            algorithm=algorithm,
            algorithm_id=algorithm_id,
        )
    ]

    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=codes.PROCEDURE_REPORTED,
        # TID 1500 row order: the TID 1410 groups come before the TID 1501 groups.
        imaging_measurements=[*regions, *groups],
    )
    root = report[0]
    _insert_image_library(root, headers)
    root.ContentSequence.append(_disclaimer_container())

    original_name = _caretless_name_workaround(headers[0])
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers,
        content=root,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_truncate(algorithm.name),
        software_versions=_truncate(algorithm.version),
        series_description=series_description(prediction),
        institution_name=institution_name,
        previous_versions=list(previous_versions) or None,
        contributing_equipment=[algorithm_equipment(algorithm, SR_CONTRIBUTION)],
        is_complete=True,
        is_final=False,
        is_verified=False,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=codes.OSSA_SCHEME, name=codes.OSSA_SCHEME_NAME
            )
        ],
    )
    if original_name is not None:
        sr.PatientName = original_name
    logger.info(
        "built SR: %d image(s), %d located finding(s), %d assessed, study %s%s",
        len(headers),
        len(regions),
        len(prediction.assessed_images),
        prediction.verdict,
        _probability_note(prediction),
    )
    return sr


def algorithm_equipment(
    algorithm: AlgorithmInfo, description: str, *, when: datetime.datetime | None = None
) -> hd.ContributingEquipment:
    """Contributing Equipment Sequence item that names the algorithm (IHE AI Results profile).

    Manufacturer "Ossa", Manufacturer's Model Name = algorithm name, Software Versions =
    algorithm version (each clipped to the 64 characters of VR LO), Purpose of Reference =
    (109102, DCM, "Processing Equipment"), the PS3.16 CID 7005 term for equipment that
    processed composite instances to create new ones.

    Parameters
    ----------
    algorithm : AlgorithmInfo
        The model that produced the result.
    description : str
        Contribution Description (0018,A003), VR ST: what Ossa did to make the object.
    when : datetime.datetime or None, optional
        Contribution DateTime (0018,A002); now when not given.

    Returns
    -------
    highdicom.ContributingEquipment
        One item for the ``contributing_equipment`` argument of a highdicom SOP class (which
        adds the source's acquisition equipment and highdicom itself beside it).
    """
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, got {type(algorithm)}")
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=_truncate(algorithm.name),
        software_versions=_truncate(algorithm.version),
        contribution_datetime=when or datetime.datetime.now(),
        contribution_description=description,
    )


def report_uids(
    study_instance_uid: str, source_sop_instance_uids: Sequence[str], algorithm_version: str
) -> tuple[str, str]:
    """Series and SOP Instance UIDs of the SR of a study, derived from its inputs.

    The same study, set of source instances and model version always give the same UIDs,
    so an SR built again after a crash is the same object to a PACS (which keeps one copy),
    while a report over a different set of instances (a late instance) or by another model
    is a new object. UIDs are hashes of those inputs under pydicom's root (PS3.5 9.1,
    :func:`pydicom.uid.generate_uid` with ``entropy_srcs``).

    Parameters
    ----------
    study_instance_uid : str
        The study.
    source_sop_instance_uids : sequence of str
        The instances the report covers (order does not matter).
    algorithm_version : str
        The model bundle's version.

    Returns
    -------
    tuple of str
        ``(series_instance_uid, sop_instance_uid)``.
    """
    if not source_sop_instance_uids:
        raise ValueError("source_sop_instance_uids must not be empty")
    key = [study_instance_uid, algorithm_version, *sorted(set(source_sop_instance_uids))]
    return (
        generate_uid(entropy_srcs=["ossa-sr-series", *key]),
        generate_uid(entropy_srcs=["ossa-sr", *key]),
    )


def _probability_note(prediction: StudyPrediction) -> str:
    """`` (p=0.870, threshold=0.500)`` for an assessed study, empty otherwise."""
    probability, threshold = prediction.abnormal_probability, prediction.threshold
    if probability is None or threshold is None:
        return ""
    return f" (p={probability:.3f}, threshold={threshold:.3f})"


def series_description(prediction: StudyPrediction) -> str:
    """Series Description (0008,103E) of the SR: the study result and a research-use notice.

    Parameters
    ----------
    prediction : StudyPrediction
        The study result to summarise.

    Returns
    -------
    str
        E.g. ``"Ossa: ABNORMAL (p=0.87) - research use, not for diagnosis"``, or
        ``"Ossa: NOT ASSESSED - research use, not for diagnosis"`` when no image was assessed
        (at most 64 characters, VR LO).
    """
    result = prediction.verdict
    if prediction.abnormal_probability is not None:
        result += f" (p={prediction.abnormal_probability:.2f})"
    return f"Ossa: {result} - research use, not for diagnosis"


def encode_file(dataset: Dataset) -> bytes:
    """Encode a dataset as a DICOM Part 10 file (PS3.10 Section 7: preamble, "DICM", file
    meta): the SR and the secondary captures Ossa writes, or any instance.

    Parameters
    ----------
    dataset : pydicom.Dataset
        A dataset with file meta information, such as the result of :func:`build_sr`.

    Returns
    -------
    bytes
        The file's bytes, in the transfer syntax of ``dataset.file_meta``.
    """
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_finding(sr: Dataset) -> bool | None:
    """Read the study result back from an Ossa SR: ``True`` if Abnormal, ``False`` if Normal,
    ``None`` if the study was not assessed.

    Looks for the TID 1501 group tracked as :data:`STUDY_TRACKING_IDENTIFIER` under the TID
    1500 "Imaging Measurements" container and returns its Finding (DCM 121071), or ``None``
    when it has no Finding and a Comment that starts with :data:`STUDY_NOT_ASSESSED`. Works on
    any dataset, e.g. an SR retrieved from the PACS and read with :func:`pydicom.dcmread`.

    Parameters
    ----------
    sr : pydicom.Dataset
        An SR written by :func:`build_sr`.

    Returns
    -------
    bool or None
        Whether the study-level Finding is Abnormal (SCT 263654008); ``None`` for a study
        that was not assessed.

    Raises
    ------
    ValueError
        If ``sr`` holds no Ossa study-level group with a Normal or Abnormal Finding or a
        not-assessed Comment.
    """
    for container in _named(sr.get("ContentSequence", []), codes.IMAGING_MEASUREMENTS):
        for group in _named(container.get("ContentSequence", []), codes.MEASUREMENT_GROUP):
            content = group.get("ContentSequence", [])
            tracking = [
                item.get("TextValue") for item in _named(content, codes.TRACKING_IDENTIFIER)
            ]
            if tracking != [STUDY_TRACKING_IDENTIFIER]:
                continue
            for item in _named(content, codes.FINDING):
                values = item.get("ConceptCodeSequence") or [Dataset()]
                found = (values[0].get("CodeValue"), values[0].get("CodingSchemeDesignator"))
                if found == (codes.ABNORMAL.value, codes.ABNORMAL.scheme_designator):
                    return True
                if found == (codes.NORMAL.value, codes.NORMAL.scheme_designator):
                    return False
            comments = [str(item.get("TextValue", "")) for item in _named(content, codes.COMMENT)]
            if not _named(content, codes.FINDING) and any(
                c.startswith(STUDY_NOT_ASSESSED) for c in comments
            ):
                return None
    raise ValueError(
        "sr holds no Ossa study-level group with a Normal or Abnormal Finding "
        "or a not-assessed Comment"
    )


def _named(items: Sequence[Dataset], concept: Code) -> list[Dataset]:
    """The content items of ``items`` whose Concept Name is ``concept``."""
    matches = []
    for item in items:
        names = item.get("ConceptNameCodeSequence") or [Dataset()]
        name = (names[0].get("CodeValue"), names[0].get("CodingSchemeDesignator"))
        if name == (concept.value, concept.scheme_designator):
            matches.append(item)
    return matches


# --- validation and source headers ------------------------------------------------------------


def _validate(
    sources: Sequence[Dataset],
    prediction: StudyPrediction,
    taxonomy: Taxonomy,
    *,
    series_number: int,
    instance_number: int,
) -> None:
    if isinstance(sources, Dataset) or not isinstance(sources, Sequence):
        raise TypeError(f"sources must be a sequence of pydicom Datasets, got {type(sources)}")
    if not isinstance(prediction, StudyPrediction):
        raise TypeError(f"prediction must be a StudyPrediction, got {type(prediction)}")
    if not isinstance(taxonomy, Taxonomy):
        raise TypeError(f"taxonomy must be a models.serving.taxonomy.Taxonomy, "
                        f"got {type(taxonomy)}")
    unknown = sorted({p.body_part for p in prediction.assessed_images} - set(taxonomy.names))
    if unknown:
        raise ValueError(
            f"prediction has assessed images of body parts {unknown} that are not classes of "
            f"taxonomy {list(taxonomy.names)}"
        )
    if len(sources) != len(prediction.images):
        raise ValueError(
            f"sources must hold one dataset per entry of prediction.images: got {len(sources)} "
            f"source(s) for {len(prediction.images)} prediction(s)"
        )
    if series_number < 1:
        raise ValueError(f"series_number must be >= 1, got {series_number}")
    if instance_number < 1:
        raise ValueError(f"instance_number must be >= 1, got {instance_number}")
    seen: dict[str, int] = {}
    # Messages name positions, never UIDs or patient attributes: they may end up in logs.
    for i, ds in enumerate(sources):
        if not isinstance(ds, Dataset):
            raise TypeError(f"sources[{i}] must be a pydicom Dataset, got {type(ds)}")
        for keyword in _REQUIRED_UIDS:
            if not ds.get(keyword):
                raise ValueError(f"sources[{i}] lacks {keyword}")
        if "Rows" not in ds or "Columns" not in ds:
            raise ValueError(f"sources[{i}] is not an image: it lacks Rows or Columns")
        if ds.StudyInstanceUID != sources[0].StudyInstanceUID:
            raise ValueError(
                f"sources must all belong to one study: sources[{i}] has a different "
                "Study Instance UID from sources[0]"
            )
        first = seen.setdefault(str(ds.SOPInstanceUID), i)
        if first != i:
            raise ValueError(f"sources[{i}] repeats the SOP Instance UID of sources[{first}]")
        columns, rows = int(ds.Columns), int(ds.Rows)
        for rank, f in enumerate(prediction.images[i].findings):
            if f.x1 > columns + _BOX_TOLERANCE or f.y1 > rows + _BOX_TOLERANCE:
                raise ValueError(
                    f"prediction.images[{i}].findings[{rank}] reaches beyond its source's "
                    f"{columns} x {rows} pixels: x1={f.x1:g}, y1={f.y1:g}"
                )


def source_header(source: Dataset) -> Dataset:
    """A pixel-free deep copy of a source, its patient and study attributes made safe to copy.

    The SR and the secondary capture copy their patient and study attributes from it, so
    both say the same. Real-world headers hold invalid values (a Patient's Age of ``81``, a
    date with dashes, a lowercase code string, an over-long description). One rule
    (:func:`_checked_values`): the attributes by which a PACS files a result under its
    patient and study (:data:`IDENTIFIERS`, and every UID) are copied exactly as the source
    has them, valid or not, with a warning; any other attribute whose value pydicom's
    validation refuses for its VR is written empty when the SR or capture needs it (Type 2,
    :data:`_TYPE2_HEADER`) and left out otherwise (Type 3), with a warning naming the
    attribute, never the value. Missing Type 2 attributes become empty; Specific Character
    Set is copied as it is (or replaced, :func:`_defined_character_set`), and with it the
    encoding of every name.
    """
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:  # Pixel Data and its float variants
            header.add(copy.deepcopy(element))
    _defined_character_set(header)
    _checked_values(header)
    for keyword in _TYPE2_HEADER:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    if header.PatientSex not in ("", "M", "F", "O"):  # an enumerated value (PS3.3 C.7.1.1)
        logger.warning("source PatientSex is not M, F or O; written empty")
        header.PatientSex = ""
    return header


#: The attributes by which a PACS files a result under its patient and study: copied exactly
#: as the source has them, valid or not. Blanking or trimming one would file the result under
#: another patient or study.
IDENTIFIERS = ("PatientID", "IssuerOfPatientID", "PatientName", "StudyInstanceUID",
               "AccessionNumber", "StudyID")
#: Value representations :func:`_checked_values` does not judge: sequences (their items are
#: not copied as such), and binary or unknown values (any bytes are a valid binary number).
_UNCHECKED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "US", "SS", "UL",
                            "SL", "UV", "SV", "FL", "FD", "AT"})


#: Dates and times are also parsed: pydicom's validation checks their form, not the calendar.
_DATES_AND_TIMES: dict[str, type] = {"DA": DA, "TM": TM, "DT": DT}


def _checked_values(header: Dataset) -> None:
    """Apply :func:`source_header`'s rule to every attribute of ``header`` (in place)."""
    for element in list(header):
        keyword = element.keyword
        if not keyword or element.VR in _UNCHECKED_VRS or element.value in (None, ""):
            continue  # private, binary, sequence, or empty
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        try:
            for value in values:
                validate_value(element.VR, _as_text(value), config.RAISE)
                if element.VR in _DATES_AND_TIMES:  # a real date: not 31 February
                    _DATES_AND_TIMES[element.VR](_as_text(value))
        except (ValueError, TypeError):
            pass  # its message holds the value: never logged
        else:
            continue
        if keyword in IDENTIFIERS or element.VR == "UI":
            logger.warning("source %s is not a valid %s value; copied as it is, so that the "
                           "result is filed with its patient and study", keyword, element.VR)
        elif keyword in _TYPE2_HEADER:
            logger.warning("source %s is not a valid %s value; written empty", keyword,
                           element.VR)
            setattr(header, keyword, "")
        else:
            logger.warning("source %s is not a valid %s value; left out", keyword, element.VR)
            del header[keyword]


def _as_text(value: object) -> str | bytes:
    """A value as pydicom validates it: the text it was read as (a number pydicom converted,
    DS or IS, keeps its original string), or its text form."""
    if isinstance(value, str | bytes):
        return value
    original = getattr(value, "original_string", None)
    return original if isinstance(original, str) else str(value)


def _defined_character_set(header: Dataset) -> None:
    """Make the header's Specific Character Set one highdicom accepts (defined terms only).

    An empty value means the default repertoire, as a missing one does, and is removed. Any
    value that is not a DICOM defined term (``ISO-8859-1``, ``UTF8``, garbage) would stop the
    SR from being built, and the radiologist would get no report: the header's text, which
    pydicom has already decoded as well as it could (a close match such as ``ISO-8859-1`` as
    Latin-1, anything else as its default), is then written in ``ISO_IR 192`` (UTF-8), which
    encodes every character. A warning names the value replaced (a character set name, not
    patient data).
    """
    element = header.get("SpecificCharacterSet")
    if element is None:
        return
    values = [str(v).strip() for v in (element if isinstance(element, MultiValue) else [element])]
    if not any(values):
        del header.SpecificCharacterSet
        return
    try:
        _check_specific_character_set(element)
    except (ValueError, TypeError):
        logger.warning(
            "source Specific Character Set %s is not a DICOM defined term; the SR's text is"
            " written as ISO_IR 192 (UTF-8)",
            ascii("\\".join(values))[:80],
        )
        header.SpecificCharacterSet = "ISO_IR 192"


def _caretless_name_workaround(header: Dataset) -> str | None:
    """Give highdicom a Patient's Name it will not echo into a warning; return the original.

    highdicom 0.28 emits a ``UserWarning`` that quotes the whole Patient's Name when it has no
    ``^`` (common in real data, e.g. ``"DOE JOHN"``), and warnings end up in logs. A trailing
    ``^`` denotes the same name (PS3.5 6.2.1.1), so the header gets one and the caller puts
    the original value back on the SR. Mutating the warnings filters instead would not be
    thread-safe.
    """
    name = str(header.PatientName)
    if name and "^" not in name:
        header.PatientName = f"{name}^"
        return name
    return None


def _truncate(value: str) -> str:
    """Clip a value to the 64 characters of VR LO; the full value is in TID 4019."""
    return value if len(value) <= _LO_MAX else value[:_LO_MAX]


# --- content tree -----------------------------------------------------------------------------


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """TID 1001 with the Ossa device as observer (TID 1002, TID 1004)."""
    # A stable Device Observer UID per algorithm version.
    device_uid = generate_uid(
        entropy_srcs=["Ossa device observer", algorithm.name, algorithm.version]
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name="Ossa",
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE_OBSERVER),
            observer_identifying_attributes=device,
        )
    )


def _finding(abnormal: bool) -> Code:
    return codes.ABNORMAL if abnormal else codes.NORMAL


def _probability(name: Code, value: float, *, derivation: Code | None = None) -> hd.sr.Measurement:
    """TID 300 measurement of a probability in [0, 1]."""
    return hd.sr.Measurement(
        name=name, value=float(value), unit=codes.PROBABILITY_UNIT, derivation=derivation
    )


def _finding_sites(body_part: str, taxonomy: Taxonomy) -> list[hd.sr.FindingSite] | None:
    """The Finding Site of a body part that is a class of ``taxonomy``; ``None`` otherwise."""
    if body_part not in taxonomy:
        return None
    return [hd.sr.FindingSite(anatomic_location=codes.to_code(taxonomy.get(body_part).code))]


def _source_images(
    headers: Sequence[Dataset],
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
        )
        for header in headers
    ]


def _add_comment(group: hd.sr.MeasurementsAndQualitativeEvaluations, text: str) -> None:
    """Append a TEXT qualitative evaluation (TID 1501 row 12) "Comment" to a TID 1501 group.

    highdicom's constructor takes coded qualitative evaluations only; the template also allows
    a text answer, which is how the reason an image or study was not assessed is written.
    """
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=text,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )


def _image_group(
    header: Dataset,
    image: ImagePrediction,
    *,
    taxonomy: Taxonomy,
    threshold: float | None,
    number: int,
    total: int,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of one image.

    An assessed image gets a Finding (its probability against ``threshold``, that of its body
    part) and its probability of abnormality; one not assessed gets neither, but a Comment
    ``"Not assessed: <reason>"``.
    """
    tracking = hd.sr.TrackingIdentifier(
        uid=generate_uid(entropy_srcs=["Ossa image finding", str(header.SOPInstanceUID)]),
        identifier=f"Ossa image {number} of {total}",
    )
    measurements = []
    finding: Code | None = None
    # An assessed image has a probability (ImagePrediction) and its body part a threshold
    # (StudyPrediction); one not assessed has neither probability nor Finding.
    if image.abnormal_probability is not None and threshold is not None:
        finding = _finding(image.abnormal_probability >= threshold)
        measurements.append(_probability(codes.ABNORMALITY_PROBABILITY, image.abnormal_probability))
    sites = _finding_sites(image.body_part, taxonomy)
    if sites is not None:
        measurements.append(_probability(codes.BODY_PART_PROBABILITY, image.body_part_probability))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        finding_sites=sites,
        algorithm_id=algorithm_id,
        measurements=measurements or None,
        source_images=_source_images([header]),
    )
    if not image.assessed:
        _add_comment(group, f"{IMAGE_NOT_ASSESSED}: {image.reason}")
    return group


def _finding_groups(
    header: Dataset,
    image: ImagePrediction,
    *,
    taxonomy: Taxonomy,
    number: int,
    algorithm: AlgorithmInfo,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410 group of each finding of one image, most probable first (none if it has none).

    The Image Region is a closed POLYLINE around the box (PS3.3 C.18.6.1.1), in the source's
    pixel coordinates (C.18.6.1.2), clipped to its Columns x Rows (:func:`_validate` has
    checked that a box passes the edge by rounding only).
    """
    columns, rows = float(header.Columns), float(header.Rows)
    sop_instance_uid = str(header.SOPInstanceUID)
    sites = _finding_sites(image.body_part, taxonomy)
    groups = []
    for rank, finding in enumerate(image.findings, 1):
        x0, x1 = min(finding.x0, columns), min(finding.x1, columns)
        y0, y1 = min(finding.y0, rows), min(finding.y1, rows)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(
                [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64
            ),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=header.SOPClassUID,
                referenced_sop_instance_uid=sop_instance_uid,
            ),
        )
        tracking = hd.sr.TrackingIdentifier(
            uid=generate_uid(
                entropy_srcs=[
                    "Ossa located finding",
                    algorithm.version,
                    sop_instance_uid,
                    str(rank),
                ]
            ),
            identifier=f"Ossa image {number} finding {rank} of {len(image.findings)}",
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                finding_type=codes.FRACTURE,
                algorithm_id=algorithm_id,
                finding_sites=sites,
                measurements=[_probability(codes.FRACTURE_PROBABILITY, finding.probability)],
            )
        )
    return groups


def _study_group(
    headers: Sequence[Dataset], prediction: StudyPrediction, *, taxonomy: Taxonomy
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of the study.

    An assessed study: Finding, mean probability of the assessed images and threshold, with
    the assessed images as sources (and a Comment naming the images left out, if any). A
    study not assessed: no Finding and no probabilities, all images as sources, and a
    Comment ``"NOT ASSESSED: <reason>"``.
    """
    tracking = hd.sr.TrackingIdentifier(
        uid=generate_uid(entropy_srcs=["Ossa study finding", str(headers[0].StudyInstanceUID)]),
        identifier=STUDY_TRACKING_IDENTIFIER,
    )
    probability, threshold = prediction.abnormal_probability, prediction.threshold
    parameters = ["study probability = mean of the assessed images' probabilities"]
    if threshold is not None:
        parameters.append(f"abnormal if study probability >= {threshold:g}")
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=prediction.algorithm.name,
        version=prediction.algorithm.version,
        manufacturer=MANUFACTURER,
        parameters=parameters,
    )
    sites = _finding_sites(prediction.body_part, taxonomy)
    if probability is None or threshold is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_sites=sites,
            algorithm_id=algorithm_id,
            source_images=_source_images(headers),
        )
        _add_comment(group, f"{STUDY_NOT_ASSESSED}: {prediction.reason}")
        return group

    assessed = [h for h, p in zip(headers, prediction.images, strict=True) if p.assessed]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=_finding(probability >= threshold),
        finding_sites=sites,
        algorithm_id=algorithm_id,
        measurements=[
            _probability(codes.ABNORMALITY_PROBABILITY, probability, derivation=codes.MEAN),
            _probability(codes.ABNORMALITY_THRESHOLD, threshold),
        ],
        source_images=_source_images(assessed),
    )
    left_out = [
        f"image {i} of {len(headers)} ({p.reason})"
        for i, p in enumerate(prediction.images, 1)
        if not p.assessed
    ]
    if left_out:
        _add_comment(
            group,
            f"Study result from {len(assessed)} of {len(headers)} images; "
            f"{IMAGE_NOT_ASSESSED.lower()}: " + "; ".join(left_out),
        )
    return group


def _insert_image_library(root: Dataset, headers: Sequence[Dataset]) -> None:
    """Insert a TID 1600 Image Library before the "Imaging Measurements" container.

    highdicom's own ``ImageLibrary`` requires Patient Orientation and Imager Pixel Spacing of
    every projection radiograph, which real CR images often lack (PS3.3 C.8.1 makes them
    optional there), so the library is built here with each TID 1602/1603 descriptor written
    only when the source has it.
    """
    group = hd.sr.ContainerContentItem(
        name=codes.IMAGE_LIBRARY_GROUP, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = hd.sr.ContentSequence([_library_entry(h) for h in headers])
    library = hd.sr.ContainerContentItem(
        name=codes.IMAGE_LIBRARY, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    # TID 1500 order: ..., Procedure Reported, Image Library, Imaging Measurements, ...
    items = root.ContentSequence
    position = next(i for i, item in enumerate(items) if item.name == codes.IMAGING_MEASUREMENTS)
    items.insert(position, library)


def _library_entry(header: Dataset) -> hd.sr.ImageContentItem:
    """TID 1601 entry of one image with the TID 1602/1603 descriptors the source has."""
    context = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    descriptors: list[hd.sr.ContentItem] = []
    modality = codes.MODALITY.get(str(header.get("Modality", "")))
    if modality is not None:
        descriptors.append(
            hd.sr.CodeContentItem(
                name=codes.MODALITY_DESCRIPTOR, value=modality, relationship_type=context
            )
        )
    for name, keyword in ((codes.PIXEL_DATA_ROWS, "Rows"), (codes.PIXEL_DATA_COLUMNS, "Columns")):
        descriptors.append(
            hd.sr.NumContentItem(
                name=name,
                value=int(header[keyword].value),
                unit=codes.PIXELS_UNIT,
                relationship_type=context,
            )
        )
    orientation = header.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2 and all(orientation):
        for name, value in zip(
            (codes.PATIENT_ORIENTATION_ROW, codes.PATIENT_ORIENTATION_COLUMN),
            orientation,
            strict=True,
        ):
            descriptors.append(
                hd.sr.TextContentItem(name=name, value=str(value), relationship_type=context)
            )
    spacing = header.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
        # ImagerPixelSpacing is (row spacing, column spacing) = (vertical, horizontal).
        for name, value in (
            (codes.HORIZONTAL_PIXEL_SPACING, spacing[1]),
            (codes.VERTICAL_PIXEL_SPACING, spacing[0]),
        ):
            descriptors.append(
                hd.sr.NumContentItem(
                    name=name,
                    value=float(value),
                    unit=codes.MILLIMETER,
                    relationship_type=context,
                )
            )
    entry = hd.sr.ImageContentItem(
        name=codes.IMAGE_LIBRARY_SOURCE,
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    entry.ContentSequence = hd.sr.ContentSequence(descriptors)
    return entry


def _disclaimer_container() -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container holding the research-use TEXT comment."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=DISCLAIMER,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container
