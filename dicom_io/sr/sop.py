"""The Ossa SR of one study: a Comprehensive 3D SR document (PS3.3 A.35.13), built with highdicom.

:func:`build_sr` checks its arguments, copies each source's header
(:func:`dicom_io.derived.source_header`), puts the TID 1500 content tree together from
:mod:`dicom_io.sr.content` and fills the SR Document General Module (PS3.3 C.17.2: COMPLETE,
UNVERIFIED, PRELIMINARY, predecessors) and the SOP Common Module (C.12.1: Content
Qualification RESEARCH, Contributing Equipment, Coding Scheme Identification). Its UIDs
(:func:`report_uids`) and Series Description (:func:`series_description`) are derived from
the study and its result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_io import codes
from dicom_io.derived import (
    MANUFACTURER,
    REQUIRED_UIDS,
    RESEARCH_USE,
    algorithm_equipment,
    clip_lo,
    source_header,
)
from dicom_io.sr.content import (
    disclaimer_container,
    finding_groups,
    image_group,
    insert_image_library,
    observation_context,
    study_group,
)
from models.serving.results import StudyPrediction
from models.serving.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

#: Default Series Number of the SR series; high, so that PACS list it after the images.
DEFAULT_SERIES_NUMBER = 9001
#: Contribution Description (0018,A003) of Ossa's Contributing Equipment item in an SR.
SR_CONTRIBUTION = (
    f"Ossa classified the study's radiographs and wrote this report ({RESEARCH_USE})"
)
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
        The SR, with file meta information; see :func:`dicom_io.derived.encode_file`.

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
        image_group(
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
    groups.append(study_group(headers, prediction, taxonomy=taxonomy))
    regions = [
        region
        for i, (header, image) in enumerate(zip(headers, prediction.images, strict=True), 1)
        for region in finding_groups(
            header,
            image,
            taxonomy=taxonomy,
            number=i,
            algorithm=algorithm,
            algorithm_id=algorithm_id,
        )
    ]

    report = hd.sr.MeasurementReport(
        observation_context=observation_context(algorithm),
        procedure_reported=codes.PROCEDURE_REPORTED,
        # TID 1500 row order: the TID 1410 groups come before the TID 1501 groups.
        imaging_measurements=[*regions, *groups],
    )
    root = report[0]
    insert_image_library(root, headers)
    root.ContentSequence.append(disclaimer_container())

    original_name = _caretless_name_workaround(headers[0])
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers,
        content=root,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=clip_lo(algorithm.name),
        software_versions=clip_lo(algorithm.version),
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
    return f"Ossa: {result} - {RESEARCH_USE}"



def _validate(
    sources: Sequence[Dataset],
    prediction: StudyPrediction,
    taxonomy: Taxonomy,
    *,
    series_number: int,
    instance_number: int,
) -> None:
    """Check the arguments of :func:`build_sr` (see its Raises section)."""
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
        for keyword in REQUIRED_UIDS:
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

