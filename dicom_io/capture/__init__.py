"""The Ossa Secondary Capture: a radiograph and its findings in, a DICOM image out.

The SC is the result a viewer that shows no SR still displays: the radiograph as the film
(grey, VOI LUT applied), with an outline around each finding of the model
(:class:`models.serving.findings.Finding`, a suspected fracture) and its rank and probability
written beside it (``"1: 0.74"``), above a burned-in label band such as ``"Ossa research use -
not for diagnosis - ABNORMAL p=0.87 - WRIST"``. Nothing is washed over the film: outside the
outlines and their text its pixels are those of the radiograph. It is a Secondary Capture
Image (SOP Class 1.2.840.10008.5.1.4.1.1.7, PS3.3 A.8.1), built with highdicom, that joins the
source study (same Study Instance UID, patient and study attributes and Specific Character
Set copied from the source) in a series of its own.

Which images get one. The worker (:meth:`worker.pipeline.ReportStage._write_captures`) builds
one per *assessed* image. An image the model flags abnormal has findings (the most probable
first, see :mod:`models.serving.findings`) and gets an RGB capture (PS3.3 C.7.6.3.1.2), its
findings outlined in :data:`OUTLINE_COLOR`. An image without findings (a normal one, or an
abnormal one from a model without a fracture map) gets the film and the label band only,
MONOCHROME2: no outline, and a third of the bytes. An image that was not assessed (out of
scope, undecodable) gets no capture; the SR says why.

Nothing in it passes for an original image: Image Type DERIVED\\SECONDARY, Modality OT,
Conversion Type WSD (workstation), Burned In Annotation YES, Content Qualification RESEARCH,
a Derivation Description (how many findings are outlined) and Source Image Sequence naming
the radiograph, Manufacturer "Ossa", the algorithm in the Contributing Equipment Sequence, no
Pixel Spacing (nothing to measure on it), and the research-use notice in the Series
Description and the pixels. The listener recognises it when a PACS forwards it back
(:meth:`worker.intake.Intake.is_own_object`).

Modules: :mod:`dicom_io.capture.draw` draws the pixels, a pure image function
(:func:`render`: a film in, pixels out, no DICOM); :mod:`dicom_io.capture.sop` builds the
DICOM object around them (:func:`build_secondary_capture`, its UIDs and label).
"""

from dicom_io.capture.draw import (
    MAX_SIDE,
    MIN_SIDE,
    OUTLINE_COLOR,
    OUTLINE_WIDTH,
    RENDER_SIDE,
    render,
)
from dicom_io.capture.sop import (
    CONVERSION_TYPE,
    DEFAULT_SERIES_NUMBER,
    RESEARCH_NOTICE,
    SC_CONTRIBUTION,
    SERIES_DESCRIPTION,
    build_secondary_capture,
    derivation_description,
    sc_label,
    secondary_capture_uids,
)

__all__ = [
    "CONVERSION_TYPE",
    "DEFAULT_SERIES_NUMBER",
    "MAX_SIDE",
    "MIN_SIDE",
    "OUTLINE_COLOR",
    "OUTLINE_WIDTH",
    "RENDER_SIDE",
    "RESEARCH_NOTICE",
    "SC_CONTRIBUTION",
    "SERIES_DESCRIPTION",
    "build_secondary_capture",
    "derivation_description",
    "render",
    "sc_label",
    "secondary_capture_uids",
]
