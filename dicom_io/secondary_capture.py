"""Turn a radiograph and its findings into a DICOM Secondary Capture image.

The SC is the result a viewer that shows no SR still displays: the radiograph as the film
(grey, VOI LUT applied), with an outline around each finding of the model
(:class:`models.serving.findings.Finding`, a suspected fracture) and its rank and probability
written
beside it (``"1: 0.74"``), above a burned-in label band such as ``"Ossa research use - not for
diagnosis - ABNORMAL p=0.87 - WRIST"``. Nothing is washed over the film: outside the outlines
and their text its pixels are those of the radiograph. It is a Secondary Capture Image (SOP
Class 1.2.840.10008.5.1.4.1.1.7, PS3.3 A.8.1), built with highdicom, that joins the source
study (same Study Instance UID, patient and study attributes and Specific Character Set copied
from the source) in a series of its own.

Which images get one. The worker (:meth:`worker.pipeline.ReportStage._write_captures`) builds
one per *assessed* image. An image the model flags abnormal has findings (the most probable
first, see :mod:`models.serving.findings`) and gets an RGB capture (PS3.3 C.7.6.3.1.2), its findings
outlined in :data:`OUTLINE_COLOR`. An image without findings (a normal one, or an abnormal one
from a model without a fracture map) gets the film and the label band only, MONOCHROME2: no
outline, and a third of the bytes. An image that was not assessed (out of scope, undecodable)
gets no capture; the SR says why.

Nothing in it passes for an original image: Image Type DERIVED\\SECONDARY, Modality OT,
Conversion Type WSD (workstation), Burned In Annotation YES, Content Qualification RESEARCH,
a Derivation Description (how many findings are outlined) and Source Image Sequence naming
the radiograph, Manufacturer "Ossa", the algorithm in the Contributing Equipment Sequence, no
Pixel Spacing (nothing to measure on it), and the research-use notice in the Series
Description and the pixels. The listener recognises it when a PACS forwards it back
(:meth:`worker.intake.Intake.is_own_object`).

Geometry. A finding is a box in the pixels of the source instance (Columns x Rows); the image
given here is the radiograph rendered at a working size
(:func:`dicom_io.pixels.normalize_radiograph` with ``max_side``), possibly smaller. The image
is resized once to the displayed size (area averaging when shrinking, bilinear when
enlarging, of the 8-bit values: :func:`display_film`), whose longest side is clamped to
[:data:`MIN_SIDE`, :data:`MAX_SIDE`]: small enough to keep the object small, large enough for
the text to be legible. Each box is scaled by image / source, then by display / image
(:func:`display_boxes`). The drawing itself is a pure image function (:func:`draw_findings`),
apart from the DICOM object building.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom import DataElement, Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from dicom_io import codes
from dicom_io.report import MANUFACTURER, algorithm_equipment, source_header
from models.serving.enhance import check_image
from models.serving.findings import Finding
from models.serving.results import AlgorithmInfo, ImagePrediction

logger = logging.getLogger(__name__)

#: Default Series Number of the SC series (the SR's is 9001).
DEFAULT_SERIES_NUMBER = 9002
#: Series Description (0008,103E) of every SC Ossa writes. One value for the whole series
#: (a series attribute): the number of findings of each capture is in its Derivation
#: Description.
SERIES_DESCRIPTION = "Ossa findings - research use, not for diagnosis"
#: Start of every burned-in label; :func:`build_secondary_capture` refuses a label without it.
RESEARCH_NOTICE = "Ossa research use - not for diagnosis"
#: Contribution Description (0018,A003) of Ossa's Contributing Equipment item in an SC.
SC_CONTRIBUTION = (
    "Ossa outlined its findings and drew the label over the source radiograph "
    "(research use, not for diagnosis)"
)
#: Conversion Type (0008,0064, SC Equipment Module): WSD = workstation. Not DI (digital
#: interface, highdicom's default, a copy of an acquired image) nor SYN (synthetic, an image
#: not derived from an acquisition): this one is derived from the radiograph by software.
CONVERSION_TYPE = "WSD"
#: Longest side, in pixels, of the displayed radiograph (the label band comes below it).
MAX_SIDE = 1024
MIN_SIDE = 512
#: Longest side a radiograph needs to be rendered at for its capture (the classify stage's
#: ``max_side``): a 3000 px film is then reduced by 3 to 1000 px and shown as it is, instead
#: of being rendered at 1500 px and resized (:func:`dicom_io.pixels.normalize_radiograph`
#: reduces by whole factors).
RENDER_SIDE = 768
#: Colour of the outlines and of their text: pure yellow, which stands out on grey film and
#: which no film pixel has (R = G = B there).
OUTLINE_COLOR = (255, 255, 0)
#: Width, in capture pixels, of an outline. It is drawn just outside its box, so that it
#: covers none of the region it points at (where the box reaches the image's edge, along it).
OUTLINE_WIDTH = 3
#: Colour of the 1-pixel edge around the outlines' text, legible on bright bone too.
_TEXT_EDGE = (0, 0, 0)

_LO_MAX = 64
_TEXT = 255
_BAND = 0


def secondary_capture_uids(
    study_instance_uid: str, source_sop_instance_uid: str, algorithm_version: str
) -> tuple[str, str]:
    """Series and SOP Instance UIDs of the SC of one source image, derived from its inputs.

    One series holds every SC Ossa writes in a study with one model version (its UID depends
    on the study and the version only); each source image has its own SC instance. The same
    inputs always give the same UIDs, so an SC built again after a crash replaces its earlier
    copy at the PACS instead of joining it (see :func:`dicom_io.report.report_uids`).

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

    The capture shows the film (``image`` resized to :func:`display_size`, 8 bit), an outline
    with its rank and probability around each finding (:func:`draw_findings`), and the label
    band below. With findings it is RGB; without (a normal image: the film and the label band
    only, no outline) MONOCHROME2. The worker builds one for every assessed image; an image
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
        with file meta information; :func:`dicom_io.report.encode_file` encodes it. Its
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
    radiograph = check_image(image)
    height, width = display_size(radiograph.shape)
    pixels = display_film(radiograph, (height, width))
    if findings:
        boxes = display_boxes(
            findings, (int(source.Rows), int(source.Columns)), radiograph.shape, (height, width)
        )
        pixels = draw_findings(pixels, boxes, [f.probability for f in findings])
        photometric = "RGB"
    else:
        photometric = "MONOCHROME2"
    pixels = _with_label(pixels, label)

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
        manufacturer_model_name=algorithm.name[:_LO_MAX],
        software_versions=algorithm.version[:_LO_MAX],
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


# --- geometry ---------------------------------------------------------------------------------


def display_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, columns)`` of the displayed radiograph for an image of ``shape``.

    The aspect ratio is kept and the longest side clamped to [:data:`MIN_SIDE`,
    :data:`MAX_SIDE`].
    """
    h, w = int(shape[0]), int(shape[1])
    longest = max(h, w)
    scale = min(max(longest, MIN_SIDE), MAX_SIDE) / longest
    return max(1, round(h * scale)), max(1, round(w * scale))


def display_boxes(
    findings: Sequence[Finding],
    source_size: tuple[int, int],
    image_shape: tuple[int, ...],
    display_shape: tuple[int, int],
) -> list[tuple[float, float, float, float]]:
    """The boxes of ``findings`` in the pixels of the displayed image.

    A finding is in the pixels of the source instance (``source_size`` = ``(Rows,
    Columns)``). It is scaled by ``image_shape / source_size`` onto the rendered image (the
    inverse of the scaling :class:`worker.pipeline.ClassifyStage` applies to the findings of a
    reduced rendering), then by ``display_shape / image_shape`` onto the displayed one.

    Returns
    -------
    list of tuple of float
        ``(x0, y0, x1, y1)`` per finding, continuous pixel coordinates (x = column).
    """
    rows, columns = source_size
    image_rows, image_columns = int(image_shape[0]), int(image_shape[1])
    sx = (image_columns / columns) * (display_shape[1] / image_columns)
    sy = (image_rows / rows) * (display_shape[0] / image_rows)
    return [(f.x0 * sx, f.y0 * sy, f.x1 * sx, f.y1 * sy) for f in findings]


def display_film(image: NDArray[np.float32], shape: tuple[int, int]) -> NDArray[np.uint8]:
    """The film as the capture shows it: ``image`` (in [0, 1]) quantised to 8 bits, then
    resized to ``(rows, columns)``, once.

    Area averaging when shrinking (the reduction :func:`dicom_io.pixels.normalize_radiograph`
    makes too, as free of aliasing as an antialiased bilinear filter and cheaper), bilinear
    when enlarging. Resampling the 8-bit values (Pillow's integer path) costs about two thirds
    of resampling the floats and differs from it by at most one grey level (brighter by under
    half a level on average).
    """
    gray = _to_uint8(image)
    if gray.shape == shape:
        return gray
    shrinking = shape[0] <= gray.shape[0] and shape[1] <= gray.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(gray, mode="L").resize((shape[1], shape[0]), resample)
    return np.asarray(resized, dtype=np.uint8)


# --- pixels -----------------------------------------------------------------------------------


def _to_uint8(array: NDArray[np.floating]) -> NDArray[np.uint8]:
    """[0, 1] floats to 0-255, rounded to nearest (values outside [0, 1] clipped)."""
    scaled = np.multiply(np.asarray(array, dtype=np.float32), np.float32(255.0))
    scaled += np.float32(0.5)
    np.clip(scaled, 0.5, 255.5, out=scaled)  # as clipping to [0, 1] first
    return scaled.astype(np.uint8)


def draw_findings(
    image: NDArray[np.uint8] | NDArray[np.floating],
    boxes: Sequence[tuple[float, float, float, float]],
    probabilities: Sequence[float],
) -> NDArray[np.uint8]:
    """The film with an outline, its rank and its probability around each box.

    A pure image function (no DICOM). Each box is outlined in :data:`OUTLINE_COLOR`,
    :data:`OUTLINE_WIDTH` pixels wide, just outside it: the outline's inner edge follows the
    box's edge (box corners rounded to whole pixels) and leaves the boxed region as it is;
    where the box reaches the image's edge the outline runs along that edge instead. Beside it
    (above its top-left corner; below the box when there is no room above; always within the
    image) the text ``"<rank>: <probability>"``, e.g. ``"1: 0.74"``, in the same colour with
    a 1-pixel black edge. Every outline is drawn before any text, so that no outline crosses
    a text. Everything else keeps its grey value.

    Parameters
    ----------
    image : numpy.ndarray
        The film: 2-D, uint8 (0-255) or float in [0, 1] (1 = white).
    boxes : sequence of tuple of float
        ``(x0, y0, x1, y1)`` per finding in the pixels of ``image`` (x = column; pixel
        ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``), ranked: the first is ``"1"``. A box
        wholly outside the image is not drawn.
    probabilities : sequence of float
        The probability of each box, written with two decimals.

    Returns
    -------
    numpy.ndarray
        ``rows x columns x 3`` uint8 RGB image (grey where nothing is drawn).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, a box is not ``x0 < x1``, ``y0 < y1`` or
        ``probabilities`` has not one value per box.
    """
    gray = np.asarray(image)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {gray.shape}")
    if gray.dtype != np.uint8:
        gray = _to_uint8(gray)
    if len(boxes) != len(probabilities):
        raise ValueError(
            f"probabilities must have one value per box: {len(probabilities)} for {len(boxes)}"
        )
    canvas = Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")
    draw = ImageDraw.Draw(canvas)
    rows, columns = gray.shape
    outlines = []
    for rank, (box, probability) in enumerate(zip(boxes, probabilities, strict=True), start=1):
        outline = _outline(box, rows, columns)
        if outline is None:
            continue
        draw.rectangle(outline, outline=OUTLINE_COLOR, width=OUTLINE_WIDTH)
        outlines.append((rank, probability, outline))
    font = _font(columns)
    for rank, probability, outline in outlines:
        text = f"{rank}: {probability:.2f}"
        left, top, right, bottom = font.getbbox(text, stroke_width=1)
        size = (math.ceil(right - left), math.ceil(bottom - top))
        x, y = _text_position(outline, size, rows, columns)
        draw.text(
            (x - left, y - top),
            text,
            fill=OUTLINE_COLOR,
            font=font,
            stroke_width=1,
            stroke_fill=_TEXT_EDGE,
        )
    return np.asarray(canvas, dtype=np.uint8)


def _outline(
    box: tuple[float, float, float, float], rows: int, columns: int
) -> tuple[int, int, int, int] | None:
    """Inclusive ``(left, top, right, bottom)`` of the outline around ``box`` (its outer edge,
    :data:`OUTLINE_WIDTH` pixels outside the box's pixels, clipped to the image), or None when
    the box lies wholly outside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (math.isfinite(x0 + y0 + x1 + y1) and x1 > x0 and y1 > y0):
        raise ValueError(f"a box must be finite with x0 < x1 and y0 < y1, got {box}")
    left, top = round(x0), round(y0)
    right, bottom = max(left, round(x1) - 1), max(top, round(y1) - 1)
    if left >= columns or top >= rows or right < 0 or bottom < 0:
        return None
    return (
        max(0, left - OUTLINE_WIDTH),
        max(0, top - OUTLINE_WIDTH),
        min(columns - 1, right + OUTLINE_WIDTH),
        min(rows - 1, bottom + OUTLINE_WIDTH),
    )


def _text_position(
    outline: tuple[int, int, int, int], size: tuple[int, int], rows: int, columns: int
) -> tuple[int, int]:
    """Top-left corner of a text of ``size`` (width, height) beside ``outline``: above it, or
    below it when there is no room above, or inside its top edge; always within the image."""
    left, top, _right, bottom = outline
    width, height = size
    gap = 2
    if top - gap - height >= 0:
        y = top - gap - height
    elif bottom + 1 + gap + height <= rows:
        y = bottom + 1 + gap
    else:
        y = top + OUTLINE_WIDTH + gap
    x = min(max(0, left), max(0, columns - width))
    return x, min(max(0, y), max(0, rows - height))


def _font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font, sized for an image ``width`` pixels wide (no font files)."""
    size = min(max(round(width / 40), 12), 28)
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words kept)."""
    words = text.split()
    if not words:
        return []
    one_line = " ".join(words)
    if font.getlength(one_line) <= width:  # the usual case: one measurement, not one per word
        return [one_line]
    lines: list[str] = []
    for word in words:
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def label_band(label: str, width: int, channels: int) -> NDArray[np.uint8]:
    """The label band: white text of ``label`` on black, ``width`` pixels wide.

    Returns a ``rows x width`` (``channels`` = 1) or ``rows x width x 3`` uint8 array whose
    height fits the wrapped text with a margin.
    """
    font = _font(width)
    text_height = math.ceil(font.getbbox("Ag")[3])
    margin = max(4, text_height // 2)
    lines = _wrap(label, font, width - 2 * margin)
    line_height = text_height + margin // 2
    band = Image.new("L", (width, len(lines) * line_height + 2 * margin - margin // 2), _BAND)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height), line, fill=_TEXT, font=font)
    array = np.asarray(band, dtype=np.uint8)
    return array if channels == 1 else np.repeat(array[..., None], channels, axis=2)


def _with_label(pixels: NDArray[np.uint8], label: str) -> NDArray[np.uint8]:
    """``pixels`` with the label band appended below (the image itself is not covered)."""
    band = label_band(label, pixels.shape[1], 1)
    rows = pixels.shape[0]
    out = np.empty((rows + band.shape[0], *pixels.shape[1:]), dtype=np.uint8)
    out[:rows] = pixels
    out[rows:] = band if pixels.ndim == 2 else band[..., None]  # grey band on every channel
    return out


# --- header -----------------------------------------------------------------------------------


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
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
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
