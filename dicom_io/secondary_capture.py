"""Turn a radiograph and its class-activation map into a DICOM Secondary Capture image.

The SC is the result a viewer that shows no SR still displays: the radiograph, with the
class-activation map (CAM) of the abnormality network blended over it as a heatmap, above a
burned-in label band such as ``"Ossa research use - not for diagnosis - ABNORMAL p=0.87 -
WRIST"``. It is a Secondary Capture Image (SOP Class 1.2.840.10008.5.1.4.1.1.7, PS3.3 A.8.1),
built with highdicom, that joins the source study (same Study Instance UID, patient and study
attributes and Specific Character Set copied from the source) in a series of its own.

Nothing in it passes for an original image: Image Type DERIVED\\SECONDARY, Modality OT,
Conversion Type WSD (workstation), Burned In Annotation YES, Content Qualification RESEARCH,
a Derivation Description and Source Image Sequence naming the radiograph, Manufacturer
"Ossa", the algorithm in the Contributing Equipment Sequence, no Pixel Spacing (nothing to
measure on it), and the research-use notice in the Series Description and the pixels.
The listener recognises it when a PACS forwards it back
(:meth:`worker.intake.Intake.is_own_object`).

Geometry. :func:`models.enhance.preprocess` resizes the image so that its longest side is the
network's input size and pads it to a centred square; the CAM (``h x w``, usually smaller)
covers that square. Here the CAM is upsampled bilinearly to the square, the square's image
region is cropped out (undoing the padding) and resized bilinearly to the displayed image
(undoing the resize). The displayed radiograph's longest side is clamped to
[:data:`MIN_SIDE`, :data:`MAX_SIDE`]: small enough to keep the object small, large enough for
the label to be legible.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom import DataElement, Dataset
from pydicom.uid import generate_uid

from dicom_io import codes
from dicom_io.report import MANUFACTURER, algorithm_equipment, source_header
from models.enhance import check_image
from models.results import AlgorithmInfo, ImagePrediction

if TYPE_CHECKING:
    from matplotlib.colors import Colormap

logger = logging.getLogger(__name__)

#: Default Series Number of the SC series (the SR's is 9001).
DEFAULT_SERIES_NUMBER = 9002
#: Series Description (0008,103E) of every SC Ossa writes.
SERIES_DESCRIPTION = "Ossa heatmap - research use, not for diagnosis"
#: Start of every burned-in label; :func:`build_secondary_capture` refuses a label without it.
RESEARCH_NOTICE = "Ossa research use - not for diagnosis"
#: Derivation Description (0008,2111) of every SC.
DERIVATION_DESCRIPTION = (
    "Ossa research output, not for diagnosis and not an original image: the source "
    "radiograph (VOI LUT applied, resampled, 8 bit) with the class-activation map of the "
    "abnormality network as a heatmap and a burned-in label. Not for measurement."
)
#: Contribution Description (0018,A003) of Ossa's Contributing Equipment item in an SC.
SC_CONTRIBUTION = (
    "Ossa drew the class-activation heatmap and the label over the source radiograph "
    "(research use, not for diagnosis)"
)
#: Conversion Type (0008,0064, SC Equipment Module): WSD = workstation. Not DI (digital
#: interface, highdicom's default, a copy of an acquired image) nor SYN (synthetic, an image
#: not derived from an acquisition): this one is derived from the radiograph by software.
CONVERSION_TYPE = "WSD"
#: Longest side, in pixels, of the displayed radiograph (the label band comes below it).
MAX_SIDE = 1024
MIN_SIDE = 512
#: matplotlib colormap of the heatmap: blue to red, red = where the network's evidence is
#: strongest, the convention of published CAM figures.
COLORMAP = "jet"
#: Point of :data:`COLORMAP` that the CAM's maximum maps to: jet is pure red at 0.89 and
#: darkens to maroon above it, a colour that vanishes into grey bone.
COLORMAP_TOP = 0.89
#: Opacity of the heatmap where the CAM is highest; it falls linearly to 0 where it is lowest,
#: so that the radiograph stays readable where the network did not look.
HEAT_OPACITY = 0.5

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


def build_secondary_capture(
    source: Dataset,
    image: NDArray[np.floating],
    cam: NDArray[np.floating] | None,
    *,
    input_size: int,
    label: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    algorithm: AlgorithmInfo,
    series_number: int = DEFAULT_SERIES_NUMBER,
    institution_name: str | None = None,
) -> hd.sc.SCImage:
    """Build the Ossa Secondary Capture of one radiograph.

    Parameters
    ----------
    source : pydicom.Dataset
        The radiograph (its header is enough; pixel data is neither needed nor read). Not
        modified.
    image : numpy.ndarray
        The radiograph as :mod:`dicom_io.pixels` gives it: 2-D float in [0, 1], 1 = bright;
        the array that was preprocessed for the network.
    cam : numpy.ndarray or None
        Class-activation map of the abnormality network for this image (``EngineOutput.cams[i]``):
        2-D, finite, on the network's square input of side ``input_size``. ``None`` gives a
        grayscale SC with the label only.
    input_size : int
        Side of the network's square input (the bundle's ``Preprocessing.input_size``).
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
        An RGB SC (MONOCHROME2 without ``cam``), 8 bit, explicit VR little endian, with file
        meta information; :func:`dicom_io.report.encode_file` encodes it.

    Raises
    ------
    TypeError
        If ``source`` is not a Dataset, ``image`` or ``cam`` not a float array, or
        ``algorithm`` not an AlgorithmInfo.
    ValueError
        If ``source`` lacks a UID or is not an image, ``image`` is not a 2-D array in [0, 1],
        ``cam`` is not a finite 2-D array, ``label`` lacks the research-use notice, or a
        number is out of range.
    """
    _validate(
        source,
        cam,
        input_size=input_size,
        label=label,
        instance_number=instance_number,
        series_number=series_number,
        algorithm=algorithm,
    )
    radiograph = check_image(image)
    height, width = display_size(radiograph.shape)
    shown = _resize(radiograph, (height, width))
    if cam is None:
        pixels = _to_uint8(shown)
        photometric = "MONOCHROME2"
    else:
        heat = cam_on_image(cam, radiograph.shape, input_size, (height, width))
        pixels = _blend(shown, heat)
        photometric = "RGB"
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
    sc.DerivationDescription = DERIVATION_DESCRIPTION
    sc.SourceImageSequence = [_source_reference(header)]
    if header.get("LossyImageCompression") == "01":
        # PS3.3 C.7.6.1.1.5: an image derived from a lossy one stays marked lossy.
        sc.LossyImageCompression = "01"
    logger.info(
        "built secondary capture: %d x %d %s, %s",
        sc.Columns,
        sc.Rows,
        photometric,
        "with heatmap" if cam is not None else "without heatmap",
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


def input_region(shape: tuple[int, ...], input_size: int) -> tuple[int, int, int, int]:
    """``(top, left, rows, columns)`` of an image of ``shape`` in the network's square input.

    The same arithmetic as :func:`models.enhance.resize_longest` and
    :func:`models.enhance.preprocess`: longest side resized to ``input_size``, centred.
    """
    h, w = int(shape[0]), int(shape[1])
    scale = input_size / max(h, w)
    rows, columns = max(1, round(h * scale)), max(1, round(w * scale))
    return (input_size - rows) // 2, (input_size - columns) // 2, rows, columns


def cam_on_image(
    cam: NDArray[np.floating],
    image_shape: tuple[int, ...],
    input_size: int,
    out_shape: tuple[int, int],
) -> NDArray[np.float32]:
    """Map a CAM on the network's square input back onto the image, scaled to [0, 1].

    The CAM is upsampled bilinearly to ``input_size x input_size``, the region the image
    occupies there (:func:`input_region`) is cropped out and resized bilinearly to
    ``out_shape``; its values are then min-max scaled to [0, 1] over the image (the heatmap
    is relative: where the network's evidence is strongest, not how strong it is). A CAM
    that is flat over the image gives zeros.

    Parameters
    ----------
    cam : numpy.ndarray
        2-D finite class-activation map covering the square input.
    image_shape : tuple of int
        Shape of the image that was preprocessed.
    input_size : int
        Side of the square input.
    out_shape : tuple of int
        ``(rows, columns)`` of the result.

    Returns
    -------
    numpy.ndarray
        float32 array of ``out_shape`` in [0, 1].
    """
    square = _resize(np.asarray(cam, dtype=np.float32), (input_size, input_size))
    top, left, rows, columns = input_region(image_shape, input_size)
    region = _resize(square[top : top + rows, left : left + columns], out_shape)
    low, high = float(region.min()), float(region.max())
    if not high - low > 1e-6 * max(1.0, abs(high)):
        return np.zeros(out_shape, dtype=np.float32)
    return np.clip((region - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _resize(array: NDArray[np.float32], shape: tuple[int, int]) -> NDArray[np.float32]:
    """Bilinear resize of a 2-D float array to ``(rows, columns)`` (antialiased when shrinking)."""
    if array.shape == shape:
        return np.asarray(array, dtype=np.float32)
    resized = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


# --- pixels -----------------------------------------------------------------------------------


def _to_uint8(array: NDArray[np.float32]) -> NDArray[np.uint8]:
    return np.asarray(np.round(np.clip(array, 0.0, 1.0) * 255.0), dtype=np.uint8)


def _colormap() -> Colormap:
    # Imported here: matplotlib is only needed when a heatmap is drawn.
    from matplotlib import colormaps

    return colormaps[COLORMAP]


def _blend(gray: NDArray[np.float32], heat: NDArray[np.float32]) -> NDArray[np.uint8]:
    """RGB radiograph with ``heat`` (in [0, 1]) blended in, opacity proportional to heat."""
    colors = np.asarray(_colormap()(COLORMAP_TOP * heat)[..., :3], dtype=np.float32)
    alpha = (HEAT_OPACITY * heat)[..., None]
    rgb = np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2) * (1.0 - alpha)
    return _to_uint8(rgb + colors * alpha)


def _font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font, sized for an image ``width`` pixels wide (no font files)."""
    size = min(max(round(width / 40), 12), 28)
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words kept)."""
    lines: list[str] = []
    for word in text.split():
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
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    band = label_band(label, pixels.shape[1], channels)
    return np.ascontiguousarray(np.concatenate([pixels, band], axis=0))


# --- header -----------------------------------------------------------------------------------


def _validate(
    source: Dataset,
    cam: NDArray[np.floating] | None,
    *,
    input_size: int,
    label: str,
    instance_number: int,
    series_number: int,
    algorithm: AlgorithmInfo,
) -> None:
    # Messages name attributes, never their values: they may end up in logs.
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source)}")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"source lacks {keyword}")
    if "Rows" not in source or "Columns" not in source:
        raise ValueError("source is not an image: it lacks Rows or Columns")
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, got {type(algorithm)}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    if cam is not None:
        if not isinstance(cam, np.ndarray) or not np.issubdtype(cam.dtype, np.floating):
            raise TypeError("cam must be a floating-point numpy array or None")
        if cam.ndim != 2 or min(cam.shape) < 1:
            raise ValueError(f"cam must be a non-empty 2-D array, got shape {cam.shape}")
        if not np.isfinite(cam).all():
            raise ValueError("cam holds non-finite values (was the image assessed?)")
    if not isinstance(label, str) or RESEARCH_NOTICE not in label:
        raise ValueError(f"label must contain {RESEARCH_NOTICE!r}, got {label!r}")
    if instance_number < 1:
        raise ValueError(f"instance_number must be >= 1, got {instance_number}")
    if series_number < 1:
        raise ValueError(f"series_number must be >= 1, got {series_number}")


def _laterality(header: Dataset) -> str | None:
    """Series Laterality of the SC: the source's Laterality or Image Laterality, if R or L."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = header.get(keyword)
        if value in ("R", "L"):
            return str(value)
    return None


def _acquisition(header: Dataset) -> list[hd.ContributingEquipment]:
    """The source's acquisition equipment as a Contributing Equipment item, if it names one."""
    try:
        return [hd.ContributingEquipment.for_image_acquisition(header)]
    except (AttributeError, ValueError):  # no Manufacturer, or not an image SOP class
        return []


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
