"""Every coded concept Ossa writes, in one place (DICOM PS3.16).

Findings use SNOMED CT "Normal" / "Abnormal" and DCM "Finding" (PS3.16 TID 1501 qualitative
evaluations). Body-part (finding site) codes are not listed here: each model bundle carries its
own in its taxonomy (:mod:`models.serving.taxonomy`), and :func:`to_code` turns them into pydicom
codes.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from models.serving.taxonomy import CodedConcept


def to_code(concept: CodedConcept) -> Code:
    """The pydicom :class:`~pydicom.sr.coding.Code` of a taxonomy's :class:`CodedConcept`."""
    if not isinstance(concept, CodedConcept):
        raise TypeError(f"concept must be a models.serving.taxonomy.CodedConcept, "
                        f"got {type(concept)}")
    return Code(value=concept.value, scheme_designator=concept.scheme, meaning=concept.meaning)


#: Concept name of a qualitative evaluation (DCM 121071 "Finding").
FINDING: Code = codes.DCM.Finding
#: Concept name of the anatomic location of a TID 1501 group (SCT 363698007).
FINDING_SITE: Code = codes.SCT.FindingSite
#: Qualitative values of :data:`FINDING`.
ABNORMAL: Code = codes.SCT.Abnormal
NORMAL: Code = codes.SCT.Normal

# --- Every derived object (dicom_io.derived) ------------------------------------------------------

#: Purpose of Reference of Ossa's Contributing Equipment item (PS3.16 CID 7005): equipment
#: "that has processed composite instances to create new composite instances" (DCM 109102).
#: Not 109103 "Modifying Equipment" (changes an instance in place) nor 109104 (de-identifying).
PROCESSING_EQUIPMENT: Code = codes.cid7005.ProcessingEquipment

# --- Structured Report (dicom_io.sr) --------------------------------------------------------------

#: Private coding scheme for concepts no standard terminology covers (PS3.16 Section 8.2:
#: "99" prefix). Declared in the SR's Coding Scheme Identification Sequence (PS3.3 C.12.1).
OSSA_SCHEME: str = "99OSSA"
#: Human-readable name of :data:`OSSA_SCHEME`, for the Coding Scheme Identification Sequence.
OSSA_SCHEME_NAME: str = "Ossa research concepts"

#: Probability in [0, 1] that an image (or, as a mean, a study) is abnormal. A private concept:
#: DCM 111012 "Certainty of Finding" would change meaning with the reported Finding, and
#: DCM 111047 "Probability of cancer" is too specific.
ABNORMALITY_PROBABILITY: Code = Code("ABNPROB", OSSA_SCHEME, "Probability of abnormality")
#: Softmax probability of the predicted body part (stage-1 classifier). The code value keeps
#: its first name so that SRs written before body parts replaced bone types still match.
BODY_PART_PROBABILITY: Code = Code("BONEPROB", OSSA_SCHEME, "Probability of predicted body part")
#: Study probability at or above which the study is called abnormal.
ABNORMALITY_THRESHOLD: Code = Code("ABNTHRESH", OSSA_SCHEME, "Abnormality probability threshold")
#: Highest fracture probability of the cells of a located finding's region (the fracture map of
#: :mod:`models.serving.findings`, not the image classifier): the measurement of each TID 1410
#: group.
#: Not :data:`ABNORMALITY_PROBABILITY`, which is the image's and the study's probability, so
#: that a reader collecting that concept does not mix the two quantities.
FRACTURE_PROBABILITY: Code = Code("FRACPROB", OSSA_SCHEME, "Probability of fracture in region")
#: UCUM unit of a probability in [0, 1]: unity with an annotation (UCUM Section 2.2.3).
PROBABILITY_UNIT: Code = Code("{probability}", "UCUM", "probability")
#: Derivation of the study probability from the images' probabilities (PS3.16 CID 7464).
MEAN: Code = codes.SCT.Mean

#: Procedure Reported of the TID 1500 report (PS3.16 CID 100).
PROCEDURE_REPORTED: Code = codes.cid100.XRUnspecifiedBodyRegion
#: TID 1500 row "Qualitative Evaluations" container (UMLS C0034375).
QUALITATIVE_EVALUATIONS: Code = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Concept name of free-text remarks (DCM 121106): the research-use disclaimer, and in a TID
#: 1501 group (row 12, a qualitative evaluation with a text answer) why an image or a study
#: was not assessed.
COMMENT: Code = codes.DCM.Comment
#: Observer type of the device observer context (PS3.16 CID 270).
DEVICE_OBSERVER: Code = codes.cid270.Device

#: Modality (0008,0060) to its coded concept for Image Library descriptors (PS3.16 CID 29).
MODALITY: dict[str, Code] = {
    "CR": codes.cid29.ComputedRadiography,
    "DX": codes.cid29.DigitalRadiography,
    "RG": codes.cid29.RadiographicImaging,
}

# Image Library (PS3.16 TID 1600-1603): structural concepts of the library and its descriptors.
IMAGE_LIBRARY: Code = codes.DCM.ImageLibrary
IMAGE_LIBRARY_GROUP: Code = codes.DCM.ImageLibraryGroup
#: Concept name of an Image Library entry, as highdicom writes it (SCT 260753009 "Source").
IMAGE_LIBRARY_SOURCE: Code = Code("260753009", "SCT", "Source")
MODALITY_DESCRIPTOR: Code = codes.DCM.Modality
PIXEL_DATA_ROWS: Code = codes.DCM.PixelDataRows
PIXEL_DATA_COLUMNS: Code = codes.DCM.PixelDataColumns
PATIENT_ORIENTATION_ROW: Code = codes.DCM.PatientOrientationRow
PATIENT_ORIENTATION_COLUMN: Code = codes.DCM.PatientOrientationColumn
HORIZONTAL_PIXEL_SPACING: Code = codes.DCM.HorizontalPixelSpacing
VERTICAL_PIXEL_SPACING: Code = codes.DCM.VerticalPixelSpacing
PIXELS_UNIT: Code = Code("{pixels}", "UCUM", "Pixels")
MILLIMETER: Code = codes.UCUM.Millimeter
#: TID 1500 container of the TID 1501 groups; the Image Library goes right before it.
IMAGING_MEASUREMENTS: Code = codes.DCM.ImagingMeasurements
#: TID 1501 container and its TID 4108 human-readable identifier, used to find Ossa's groups.
MEASUREMENT_GROUP: Code = codes.DCM.MeasurementGroup
TRACKING_IDENTIFIER: Code = codes.DCM.TrackingIdentifier
#: Finding (Finding Type) of a located suspected fracture, a TID 1410 planar ROI group: SNOMED
#: CT 125605004 "Fracture of bone" (not in pydicom's concept dictionary).
FRACTURE: Code = Code("125605004", "SCT", "Fracture of bone")

# --- Secondary Capture (dicom_io.capture) ---------------------------------------------------------

#: Purpose of Reference of the source's acquisition equipment, as highdicom's
#: ``ContributingEquipment.for_image_acquisition`` writes it (PS3.16 CID 7005).
ACQUISITION_EQUIPMENT: Code = codes.cid7005.AcquisitionEquipment
#: Purpose of Reference of the SC's Source Image Sequence item (PS3.16 CID 7202).
SOURCE_IMAGE_FOR_PROCESSING: Code = codes.cid7202.SourceImageForImageProcessingOperation
