"""What every object Ossa derives from a source study shares: its header and its maker.

Ossa writes two kinds of object into a source's study, a Structured Report
(:mod:`dicom_io.sr`) and a Secondary Capture of each assessed image (:mod:`dicom_io.capture`).
Both join the source study and say the same about who made them:

- the patient and study attributes, copied from a source by :func:`source_header`: those of
  the Patient Module (PS3.3 C.7.1.1), of the General Study Module (C.7.2.1) and the Specific
  Character Set (0008,0005, SOP Common Module, C.12.1), under one rule for values that are
  not valid for their VR (PS3.5 6.2): the attributes by which a PACS files a result
  (:data:`IDENTIFIERS`, and every UID) are copied exactly, any other invalid one is written
  empty or left out;
- Manufacturer (0008,0070, General Equipment Module, C.7.5.1) :data:`MANUFACTURER`, and the
  algorithm as Processing Equipment (DCM 109102, PS3.16 CID 7005) in the Contributing
  Equipment Sequence (0018,A001, SOP Common Module, C.12.1), as the IHE AI Results (AIR)
  profile asks of every result object (:func:`algorithm_equipment`);
- the research-use wording of their descriptions (:data:`RESEARCH_USE`);
- the encoding as a DICOM Part 10 file (PS3.10 Section 7, :func:`encode_file`).
"""

from __future__ import annotations

import copy
import datetime
import io
import logging

import highdicom as hd
from highdicom.valuerep import _check_specific_character_set  # what its constructors apply
from pydicom import DataElement, Dataset, config
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM, PersonName, validate_value

from dicom_io import codes
from models.serving.results import AlgorithmInfo

logger = logging.getLogger(__name__)

#: Manufacturer (0008,0070) of every object Ossa writes (the SR and the secondary captures);
#: the listener recognises Ossa's own objects by it (:meth:`worker.intake.Intake.is_own_object`).
MANUFACTURER = "Ossa"
#: The research-use notice of the Series Descriptions and Contribution Descriptions of the SR
#: and of the secondary captures.
RESEARCH_USE = "research use, not for diagnosis"
#: The UIDs a source must have to be referenced by a derived object (PS3.3 C.12.1, C.7.2.1,
#: C.7.3.1).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Maximum length of a VR LO value (PS3.5 6.2), such as Manufacturer's Model Name.
LO_MAX = 64

#: Patient and study attributes of Type 2 in the Patient (PS3.3 C.7.1.1) and General Study
#: (C.7.2.1) Modules, which both objects include: present, empty when unknown.
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
#: The attributes by which a PACS files a result under its patient and study: copied exactly
#: as the source has them, valid or not. Blanking or trimming one would file the result under
#: another patient or study.
IDENTIFIERS = ("PatientID", "IssuerOfPatientID", "PatientName", "StudyInstanceUID",
               "AccessionNumber", "StudyID")
#: Value representations :func:`_checked_values` does not judge: sequences (their items are
#: not copied as such), and binary or unknown values (any bytes are a valid binary number).
_UNCHECKED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "US", "SS", "UL",
                            "SL", "UV", "SV", "FL", "FD", "AT"})
#: Values no one can change in place (``str`` covers UIDs; ``int`` and ``float`` IS and DS).
_IMMUTABLE_VALUES = (str, int, float, bytes, PersonName, type(None))
#: Dates and times are also parsed: pydicom's validation checks their form, not the calendar.
_DATES_AND_TIMES: dict[str, type] = {"DA": DA, "TM": TM, "DT": DT}


def clip_lo(value: str) -> str:
    """Clip a value to the :data:`LO_MAX` characters of VR LO (PS3.5 6.2).

    Used for the algorithm's name and version in Manufacturer's Model Name (0008,1090) and
    Software Versions (0018,1020); the SR keeps them whole in TID 4019.
    """
    return value if len(value) <= LO_MAX else value[:LO_MAX]


def algorithm_equipment(
    algorithm: AlgorithmInfo, description: str, *, when: datetime.datetime | None = None
) -> hd.ContributingEquipment:
    """Contributing Equipment Sequence item that names the algorithm (IHE AI Results profile).

    Manufacturer "Ossa", Manufacturer's Model Name = algorithm name, Software Versions =
    algorithm version (each clipped to the 64 characters of VR LO), Purpose of Reference =
    (109102, DCM, "Processing Equipment"), the PS3.16 CID 7005 term for equipment that
    processed composite instances to create new ones. The Contributing Equipment Sequence
    (0018,A001) is part of the SOP Common Module (PS3.3 C.12.1).

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

    Raises
    ------
    TypeError
        If ``algorithm`` is not an AlgorithmInfo.
    """
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, got {type(algorithm)}")
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=clip_lo(algorithm.name),
        software_versions=clip_lo(algorithm.version),
        contribution_datetime=when or datetime.datetime.now(),
        contribution_description=description,
    )


def encode_file(dataset: Dataset) -> bytes:
    """Encode a dataset as a DICOM Part 10 file (PS3.10 Section 7: preamble, "DICM", file
    meta): the SR and the secondary captures Ossa writes, or any instance.

    Parameters
    ----------
    dataset : pydicom.Dataset
        A dataset with file meta information, such as the result of
        :func:`dicom_io.sr.build_sr` or :func:`dicom_io.capture.build_secondary_capture`.

    Returns
    -------
    bytes
        The file's bytes, in the transfer syntax of ``dataset.file_meta``.
    """
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def source_header(source: Dataset) -> Dataset:
    """A pixel-free deep copy of a source, its patient and study attributes made safe to copy.

    The SR and the secondary capture copy their patient and study attributes (Patient Module,
    PS3.3 C.7.1.1; General Study Module, C.7.2.1) from it, so both say the same. Real-world
    headers hold invalid values (a Patient's Age of ``81``, a date with dashes, a lowercase
    code string, an over-long description). One rule (:func:`_checked_values`): the
    attributes by which a PACS files a result under its patient and study
    (:data:`IDENTIFIERS`, and every UID) are copied exactly as the source has them, valid or
    not, with a warning; any other attribute whose value pydicom's validation refuses for its
    VR (PS3.5 6.2) is written empty when the SR or capture needs it (Type 2,
    :data:`_TYPE2_HEADER`) and left out otherwise (Type 3), with a warning naming the
    attribute, never the value. Missing Type 2 attributes become empty; Specific Character
    Set (0008,0005, SOP Common Module, C.12.1) is copied as it is (or replaced,
    :func:`_defined_character_set`), and with it the encoding of every name.

    Parameters
    ----------
    source : pydicom.Dataset
        A source image. Not modified.

    Returns
    -------
    pydicom.Dataset
        The copy, without Pixel Data (group 7FE0).
    """
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:  # Pixel Data and its float variants
            header.add(_copied(element))
    _defined_character_set(header)
    _checked_values(header)
    for keyword in _TYPE2_HEADER:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    if header.PatientSex not in ("", "M", "F", "O"):  # an enumerated value (PS3.3 C.7.1.1)
        logger.warning("source PatientSex is not M, F or O; written empty")
        header.PatientSex = ""
    return header


def _copied(element: DataElement) -> DataElement:
    """A copy of ``element`` that shares nothing mutable with it: a deep copy where its value
    can change in place (a sequence, a multi-valued list), a new element around the same value
    where it cannot (text, a number, bytes, a person's name), which costs a tenth of
    ``copy.deepcopy``."""
    if not isinstance(element.value, _IMMUTABLE_VALUES):
        return copy.deepcopy(element)
    twin = DataElement.__new__(DataElement)
    twin.__dict__.update(element.__dict__)
    return twin


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
    value that is not a DICOM defined term (``ISO-8859-1``, ``UTF8``, garbage; PS3.3
    C.12.1.1.2) would stop the SR from being built, and the radiologist would get no report:
    the header's text, which pydicom has already decoded as well as it could (a close match
    such as ``ISO-8859-1`` as Latin-1, anything else as its default), is then written in
    ``ISO_IR 192`` (UTF-8), which encodes every character. A warning names the value replaced
    (a character set name, not patient data).
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
