"""The Ossa Secondary Capture Image (PS3.3 A.8.1) of one assessed radiograph, built with highdicom.

:func:`build_secondary_capture` checks its arguments, has :func:`dicom_io.capture.draw.render`
draw the pixels, and wraps them in an SC that joins the source study: patient and study
attributes and Specific Character Set copied from the source
(:func:`dicom_io.derived.source_header`), a series of its own (:func:`secondary_capture_uids`),
and what marks it as derived research output: Image Type DERIVED\\SECONDARY and Burned In
Annotation YES (General Image Module, C.7.6.1), Conversion Type WSD (SC Equipment Module,
C.8.6.1), Content Qualification RESEARCH, a Derivation Description
(:func:`derivation_description`) and a Source Image Sequence (General Reference Module,
C.12.4), and the algorithm in the Contributing Equipment Sequence (SOP Common Module, C.12.1)
beside the source's acquisition equipment. The burned-in label is :func:`sc_label`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import DataElement, Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from dicom_io import codes
from dicom_io.capture.draw import render
from dicom_io.derived import (
    MANUFACTURER,
    REQUIRED_UIDS,
    RESEARCH_USE,
    algorithm_equipment,
    clip_lo,
    source_header,
)
from models.serving.findings import Finding
from models.serving.results import AlgorithmInfo, ImagePrediction

logger = logging.getLogger(__name__)

#: Default Series Number of the SC series (the SR's is 9001).
DEFAULT_SERIES_NUMBER = 9002
#: Series Description (0008,103E) of every SC Ossa writes. One value for the whole series
#: (a series attribute): the number of findings of each capture is in its Derivation
#: Description.
SERIES_DESCRIPTION = f"Ossa findings - {RESEARCH_USE}"
#: Start of every burned-in label; :func:`build_secondary_capture` refuses a label without it.
RESEARCH_NOTICE = "Ossa research use - not for diagnosis"
#: Contribution Description (0018,A003) of Ossa's Contributing Equipment item in an SC.
SC_CONTRIBUTION = (
    f"Ossa outlined its findings and drew the label over the source radiograph ({RESEARCH_USE})"
)
#: Conversion Type (0008,0064, SC Equipment Module): WSD = workstation. Not DI (digital
#: interface, highdicom's default, a copy of an acquired image) nor SYN (synthetic, an image
#: not derived from an acquisition): this one is derived from the radiograph by software.
CONVERSION_TYPE = "WSD"


def secondary_capture_uids(
    study_instance_uid: str, source_sop_instance_uid: str, algorithm_version: str
) -> tuple[str, str]:
    """Series and SOP Instance UIDs of the SC of one source image, derived from its inputs.

    One series holds every SC Ossa writes in a study with one model version (its UID depends
    on the study and the version only); each source image has its own SC instance. The same
    inputs always give the same UIDs, so an SC built again after a crash replaces its earlier
    copy at the PACS instead of joining it (see :func:`dicom_io.sr.report_uids`).

    Parameters
    ----------
    study_instance_uid : str
        The study.
    source_sop_instance_uid : str
        The radiograph the SC shows.
    algorithm_version : str
        The model bundle's version.

    Returns
    -------
    tuple of str
        ``(series_instance_uid, sop_instance_uid)``.

    Raises
    ------
    ValueError
        If an argument is empty.
    """
    for name, value in (
        ("study_instance_uid", study_instance_uid),
        ("source_sop_instance_uid", source_sop_instance_uid),
        ("algorithm_version", algorithm_version),
    ):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return (
        generate_uid(entropy_srcs=["ossa-sc-series", study_instance_uid, algorithm_version]),
        generate_uid(
            entropy_srcs=[
                "ossa-sc",
                study_instance_uid,
                algorithm_version,
                source_sop_instance_uid,
            ]
        ),
    )


def sc_label(prediction: ImagePrediction, threshold: float) -> str:
    """Burned-in label of an assessed image, e.g.
    ``"Ossa research use - not for diagnosis - ABNORMAL p=0.87 - WRIST"``.

    Parameters
    ----------
    prediction : ImagePrediction
        The image's prediction; it must be assessed.
    threshold : float
        Operating threshold of the image's body part (``StudyPrediction.thresholds``): the
        image is ABNORMAL when its probability reaches it, as in the SR.

    Returns
    -------
    str
        :data:`RESEARCH_NOTICE`, the verdict with the probability (two decimals) and the
        body part.

    Raises
    ------
    TypeError
        If ``prediction`` is not an ImagePrediction.
    ValueError
        If the image was not assessed or ``threshold`` is not a probability.
    """
    if not isinstance(prediction, ImagePrediction):
        raise TypeError(f"prediction must be an ImagePrediction, got {type(prediction)}")
    probability = prediction.abnormal_probability
    if not prediction.assessed or probability is None:
        raise ValueError("prediction must be of an assessed image: an SC shows a verdict")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0.0 <= threshold <= 1.0
    ):
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    verdict = "ABNORMAL" if probability >= threshold else "NORMAL"
    return f"{RESEARCH_NOTICE} - {verdict} p={probability:.2f} - {prediction.body_part}"


def derivation_description(n_findings: int) -> str:
    """Derivation Description (0008,2111, PS3.3 C.7.6.1) of a capture with ``n_findings``
    findings outlined; it states that the capture is research output, not an original image."""
    if n_findings == 0:
        drawn = "and a burned-in label; no finding"
    else:
        outlined = "1 finding" if n_findings == 1 else f"{n_findings} findings"
        drawn = (
            f"with {outlined} outlined (suspected fractures, each with its rank and "
            "probability) and a burned-in label"
        )
    return (
        "Ossa research output, not for diagnosis and not an original image: the source "
        f"radiograph (VOI LUT applied, resampled, 8 bit) {drawn}. Not for measurement."
    )


def build_secondary_capture(
    source: Dataset,
    image: NDArray[np.floating],
    findings: Sequence[Finding],
    *,
    label: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    algorithm: AlgorithmInfo,
    series_number: int = DEFAULT_SERIES_NUMBER,
    institution_name: str | None = None,
) -> hd.sc.SCImage:
    """Build the Ossa Secondary Capture Image (PS3.3 A.8.1) of one assessed radiograph.

    The capture's pixels are those of :func:`dicom_io.capture.draw.render`: the film
    (``image`` resized to :func:`~dicom_io.capture.draw.display_size`, 8 bit), an outline with
    its rank and probability around each finding, and the label band below. With findings it
    is RGB; without (a normal image: the film and the label band only, no outline)
    MONOCHROME2 (PS3.3 C.7.6.3.1.2). The worker builds one for every assessed image; an image
    that was not assessed gets none (the SR says why).

    Parameters
    ----------
    source : pydicom.Dataset
        The radiograph (its header is enough; pixel data is neither needed nor read). Not
        modified.
    image : numpy.ndarray
        The radiograph as :func:`dicom_io.pixels.normalize_radiograph` gives it: 2-D float in
        [0, 1], 1 = bright; it may be rendered smaller than the source's Rows x Columns (a
        working size), but covers the whole of it.
    findings : sequence of Finding
        The image's findings (``ImagePrediction.findings``), boxes in the pixels of
        ``source`` (x = column in [0, Columns], y = row in [0, Rows]), the most probable
        first: the rank written beside each outline is its position here. Empty: no outline.
    label : str
        Text burned in below the image, e.g. from :func:`sc_label`; it must contain
        :data:`RESEARCH_NOTICE`.
    series_instance_uid, sop_instance_uid : str
        UIDs of the SC series and instance (see :func:`secondary_capture_uids`).
    instance_number : int
        Instance Number (0020,0013), >= 1.
    algorithm : AlgorithmInfo
        The model; named in Manufacturer's Model Name, Software Versions and the Contributing
        Equipment Sequence.
    series_number : int, optional
        Series Number (0020,0011) of the SC series, >= 1.
    institution_name : str or None, optional
        Institution Name (0008,0080) of the equipment that creates the SC.

    Returns
    -------
    highdicom.sc.SCImage
        An 8-bit SC, RGB with findings and MONOCHROME2 without, explicit VR little endian,
        with file meta information; :func:`dicom_io.derived.encode_file` encodes it. Its
        Derivation Description says how many findings are outlined
        (:func:`derivation_description`).

    Raises
    ------
    TypeError
        If ``source`` is not a Dataset, ``image`` not a float array, ``findings`` not a
        sequence of Finding, or ``algorithm`` not an AlgorithmInfo.
    ValueError
        If ``source`` lacks a UID or is not an image, ``image`` is not a 2-D array in [0, 1],
        a finding starts outside the source's Columns x Rows, ``label`` lacks the
        research-use notice, or a number is out of range.
    """
    findings = _validate(
        source,
        findings,
        label=label,
        instance_number=instance_number,
        series_number=series_number,
        algorithm=algorithm,
    )
    pixels = render(image, findings, label, source_size=(int(source.Rows), int(source.Columns)))
    photometric = "RGB" if pixels.ndim == 3 else "MONOCHROME2"

    header = source_header(source)
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # highdicom requires an orientation for a PATIENT image; the source's (or an empty,
        # Type 2C, one) replaces this placeholder below.
        patient_orientation=("A", "F"),
        laterality=_laterality(header),
        contributing_equipment=[
            *_acquisition(header),
            algorithm_equipment(algorithm, SC_CONTRIBUTION),
        ],
        specific_character_set=header.get("SpecificCharacterSet"),
        manufacturer_model_name=clip_lo(algorithm.name),
        software_versions=clip_lo(algorithm.version),
        series_description=SERIES_DESCRIPTION,
        institution_name=institution_name,
    )
    # Patient and study attributes as the SR copies them (highdicom never sees the name, so
    # it neither logs it nor re-checks it); the elements keep the source's character set.
    sc.copy_patient_and_study_information(header)
    sc["PatientOrientation"] = (
        header["PatientOrientation"]
        if "PatientOrientation" in header
        else DataElement("PatientOrientation", "CS", "")
    )
    if header.get("BodyPartExamined"):
        sc.BodyPartExamined = header.BodyPartExamined
    sc.ConversionType = CONVERSION_TYPE
    sc.BurnedInAnnotation = "YES"
    sc.ContentQualification = "RESEARCH"
    sc.DerivationDescription = derivation_description(len(findings))
    sc.SourceImageSequence = [_source_reference(header)]
    if header.get("LossyImageCompression") == "01":
        # PS3.3 C.7.6.1.1.5: an image derived from a lossy one stays marked lossy.
        sc.LossyImageCompression = "01"
    logger.info(
        "built secondary capture: %d x %d %s, %d finding(s) outlined",
        sc.Columns,
        sc.Rows,
        photometric,
        len(findings),
    )
    return sc



def _validate(
    source: Dataset,
    findings: Sequence[Finding],
    *,
    label: str,
    instance_number: int,
    series_number: int,
    algorithm: AlgorithmInfo,
) -> tuple[Finding, ...]:
    """Check the arguments of :func:`build_secondary_capture`; return ``findings`` as a tuple."""
    # Messages name attributes, never their values: they may end up in logs.
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source)}")
    for keyword in REQUIRED_UIDS:
        if not source.get(keyword):
            raise ValueError(f"source lacks {keyword}")
    if not source.get("Rows") or not source.get("Columns"):
        raise ValueError("source is not an image: it lacks Rows or Columns")
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, got {type(algorithm)}")
    if not isinstance(findings, Sequence) or isinstance(findings, str):
        raise TypeError(f"findings must be a sequence of Finding, got {type(findings)}")
    for i, finding in enumerate(findings):
        if not isinstance(finding, Finding):
            raise TypeError(f"findings[{i}] must be a Finding, got {type(finding)}")
        if finding.x0 >= int(source.Columns) or finding.y0 >= int(source.Rows):
            raise ValueError(
                f"findings[{i}] starts outside the source image (Columns x Rows): its box "
                "must be in the source's pixels"
            )
    if not isinstance(label, str) or RESEARCH_NOTICE not in label:
        raise ValueError(f"label must contain {RESEARCH_NOTICE!r}, got {label!r}")
    if instance_number < 1:
        raise ValueError(f"instance_number must be >= 1, got {instance_number}")
    if series_number < 1:
        raise ValueError(f"series_number must be >= 1, got {series_number}")
    return tuple(findings)


def _laterality(header: Dataset) -> str | None:
    """Series Laterality of the SC: the source's Laterality or Image Laterality, if R or L."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = header.get(keyword)
        if value in ("R", "L"):
            return str(value)
    return None


def _acquisition(header: Dataset) -> list[hd.ContributingEquipment]:
    """The source's acquisition equipment as a Contributing Equipment item (PS3.3 C.7.5.2),
    if the source names its Manufacturer.

    The item highdicom's ``ContributingEquipment.for_image_acquisition`` builds, without its
    check that the source's SOP Class is an image IOD (which searches the standard's tables:
    a third of the time to build a capture): the source is an image, since its pixel data
    were rendered.
    """
    manufacturer = header.get("Manufacturer")
    if not manufacturer:
        return []
    try:
        return [hd.ContributingEquipment(
            manufacturer=manufacturer,
            purpose_of_reference=codes.ACQUISITION_EQUIPMENT,
            manufacturer_model_name=header.get("ManufacturerModelName"),
            software_versions=header.get("SoftwareVersions"),
            device_serial_number=header.get("DeviceSerialNumber"),
            institution_name=header.get("InstitutionName"),
            institutional_department_name=header.get("InstitutionalDepartmentName"),
            institution_address=header.get("InstitutionAddress"),
            station_name=header.get("StationName"),
            contribution_datetime=_acquired(header),
            contribution_description="Acquisition equipment of the source image(s)",
        )]
    except (TypeError, ValueError) as exc:  # a value highdicom refuses: left out, logged
        logger.warning("source acquisition equipment left out of the capture: %s", exc)
        return []


def _acquired(header: Dataset) -> DT | None:
    """The source's Acquisition DateTime, which highdicom copies into the item; left out
    when it is not a valid DT value (a warning names the attribute)."""
    moment = header.get("AcquisitionDateTime")
    if not moment:
        return None
    try:
        return DT(moment)
    except ValueError:
        logger.warning("source AcquisitionDateTime is not a valid DT; left out of the capture")
        return None


def _source_reference(header: Dataset) -> Dataset:
    """Source Image Sequence item (PS3.3 C.12.4) of the radiograph the SC shows."""
    purpose = Dataset()
    purpose.CodeValue = codes.SOURCE_IMAGE_FOR_PROCESSING.value
    purpose.CodingSchemeDesignator = codes.SOURCE_IMAGE_FOR_PROCESSING.scheme_designator
    purpose.CodeMeaning = codes.SOURCE_IMAGE_FOR_PROCESSING.meaning
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item
