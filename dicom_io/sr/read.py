"""Read an Ossa SR back: the study result of its TID 1500 content tree.

An SR written by :func:`dicom_io.sr.sop.build_sr`, or one retrieved from a PACS and read with
:func:`pydicom.dcmread`, is searched as plain data sets: the SR Document Content Module's
Content Sequence (PS3.3 C.17.3), by Concept Name, for the study-level TID 1501 group.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.sr.content import STUDY_NOT_ASSESSED, STUDY_TRACKING_IDENTIFIER


def study_finding(sr: Dataset) -> bool | None:
    """Read the study result back from an Ossa SR: ``True`` if Abnormal, ``False`` if Normal,
    ``None`` if the study was not assessed.

    Looks for the TID 1501 group tracked as :data:`~dicom_io.sr.content.STUDY_TRACKING_IDENTIFIER`
    under the TID 1500 "Imaging Measurements" container and returns its Finding (DCM 121071),
    or ``None`` when it has no Finding and a Comment that starts with
    :data:`~dicom_io.sr.content.STUDY_NOT_ASSESSED`. Works on any dataset, e.g. an SR
    retrieved from the PACS and read with :func:`pydicom.dcmread`.

    Parameters
    ----------
    sr : pydicom.Dataset
        An SR written by :func:`dicom_io.sr.sop.build_sr`.

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

