"""The Ossa Structured Report: source radiographs and a StudyPrediction in, a DICOM SR out.

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
Results (AIR) profile asks of every result object
(:func:`dicom_io.derived.algorithm_equipment`, shared with the secondary capture).

The SR joins the source study (same Study Instance UID, patient and study attributes copied
from the sources by :func:`dicom_io.derived.source_header`) in a new series (Modality SR). It
is COMPLETE, UNVERIFIED and PRELIMINARY (no person has verified it), and its Content
Qualification (0018,9004, SOP Common Module, PS3.3 C.12.1) is RESEARCH.

Modules: :mod:`dicom_io.sr.sop` builds the SR document (:func:`build_sr`, its UIDs and
Series Description), :mod:`dicom_io.sr.content` the items and groups of its content tree,
:mod:`dicom_io.sr.read` reads the study result back (:func:`study_finding`).
"""

from dicom_io.sr.content import (
    DISCLAIMER,
    IMAGE_NOT_ASSESSED,
    STUDY_NOT_ASSESSED,
    STUDY_TRACKING_IDENTIFIER,
)
from dicom_io.sr.read import study_finding
from dicom_io.sr.sop import (
    DEFAULT_SERIES_NUMBER,
    SR_CONTRIBUTION,
    build_sr,
    report_uids,
    series_description,
)

__all__ = [
    "DEFAULT_SERIES_NUMBER",
    "DISCLAIMER",
    "IMAGE_NOT_ASSESSED",
    "SR_CONTRIBUTION",
    "STUDY_NOT_ASSESSED",
    "STUDY_TRACKING_IDENTIFIER",
    "build_sr",
    "report_uids",
    "series_description",
    "study_finding",
]
