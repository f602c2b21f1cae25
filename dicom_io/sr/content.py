"""The content tree of Ossa's SR: the items and groups of PS3.16 TID 1500 "Measurement Report".

Each function builds one part of the tree with highdicom's content item classes (PS3.3
C.17.3, SR Document Content Module), and :func:`dicom_io.sr.sop.build_sr` puts them together:

- :func:`observation_context`: TID 1001 with the Ossa device as observer (TID 1002, TID 1004);
- :func:`insert_image_library`: the TID 1600 Image Library, a TID 1601 entry with the TID
  1602/1603 descriptors each source has;
- :func:`image_group`, :func:`study_group`: the TID 1501 "Measurement and Qualitative
  Evaluation Group" of each image and of the study, with TID 4019 Algorithm Identification,
  a TID 4108 tracking identifier, and a TEXT Comment (DCM 121106, TID 1501 row 12) when an
  image or the study was not assessed;
- :func:`finding_groups`: the TID 1410 "Planar ROI Measurements and Qualitative Evaluations"
  group of each located finding, its Image Region a SCOORD POLYLINE (PS3.3 C.18.6);
- :func:`disclaimer_container`: the TID 1500 "Qualitative Evaluations" container that holds
  the research-use TEXT comment :data:`DISCLAIMER`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io import codes
from dicom_io.derived import MANUFACTURER
from models.serving.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from models.serving.taxonomy import Taxonomy

#: Written as a TEXT content item into every SR (the Series Description says so, shorter).
DISCLAIMER = (
    "Research software output (Ossa), not a diagnosis and not for clinical use. "
    "Produced automatically and not verified by a physician; the images must be read by a "
    "qualified radiologist."
)
#: Tracking Identifier (TID 4108) of the study-level TID 1501 group;
#: :func:`dicom_io.sr.read.study_finding` finds the study result by it.
STUDY_TRACKING_IDENTIFIER = "Ossa study result"
#: Start of the Comment of an image group that has no Finding, followed by the reason.
IMAGE_NOT_ASSESSED = "Not assessed"
#: Start of the Comment of a study group that has no Finding (and of the Series Description's
#: result), followed by the reason; also :attr:`StudyPrediction.verdict` of such a study.
STUDY_NOT_ASSESSED = "NOT ASSESSED"


def observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """TID 1001 "Observation Context" with the Ossa device as observer (TID 1002, TID 1004).

    Parameters
    ----------
    algorithm : AlgorithmInfo
        The model; its name is the device's model name, and its name and version give the
        Device Observer UID, the same for every SR of one version.

    Returns
    -------
    highdicom.sr.ObservationContext
        The observer device context (observer type DCM 121007 "Device", PS3.16 CID 270).
    """
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


def image_group(
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
    ``"Not assessed: <reason>"`` (TID 1501 row 12). Its tracking identifier (TID 4108) is
    derived from the source's SOP Instance UID.

    Parameters
    ----------
    header : pydicom.Dataset
        The image's source header (:func:`dicom_io.derived.source_header`).
    image : ImagePrediction
        The image's prediction.
    taxonomy : Taxonomy
        The model's classes; the Finding Site is the code of the image's body part, if a class.
    threshold : float or None
        Operating threshold of the image's body part; None when it has none.
    number, total : int
        The image's position (1-based) in the study and the study's image count, for the
        human-readable tracking identifier.
    algorithm_id : highdicom.sr.AlgorithmIdentification
        TID 4019 Algorithm Identification.

    Returns
    -------
    highdicom.sr.MeasurementsAndQualitativeEvaluations
        The group.
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


def finding_groups(
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
    pixel coordinates (C.18.6.1.2), clipped to its Columns x Rows
    (:func:`dicom_io.sr.sop.build_sr` has checked that a box passes the edge by rounding
    only). Each group's tracking identifier (TID 4108) is derived from the model version, the
    source's SOP Instance UID and the finding's rank.

    Parameters
    ----------
    header : pydicom.Dataset
        The image's source header (:func:`dicom_io.derived.source_header`).
    image : ImagePrediction
        The image's prediction, its findings most probable first.
    taxonomy : Taxonomy
        The model's classes; the Finding Site is the code of the image's body part, if a class.
    number : int
        The image's position (1-based) in the study, for the human-readable identifier.
    algorithm : AlgorithmInfo
        The model, whose version goes into the tracking UIDs.
    algorithm_id : highdicom.sr.AlgorithmIdentification
        TID 4019 Algorithm Identification.

    Returns
    -------
    list of highdicom.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        One group per finding, in the order of ``image.findings``.
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


def study_group(
    headers: Sequence[Dataset], prediction: StudyPrediction, *, taxonomy: Taxonomy
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of the study.

    An assessed study: Finding, mean probability of the assessed images and threshold, with
    the assessed images as sources (and a Comment naming the images left out, if any). A
    study not assessed: no Finding and no probabilities, all images as sources, and a
    Comment ``"NOT ASSESSED: <reason>"``. Its tracking identifier (TID 4108) is
    :data:`STUDY_TRACKING_IDENTIFIER`, its UID derived from the Study Instance UID.

    Parameters
    ----------
    headers : sequence of pydicom.Dataset
        The source headers (:func:`dicom_io.derived.source_header`), in the order of
        ``prediction.images``.
    prediction : StudyPrediction
        The study result.
    taxonomy : Taxonomy
        The model's classes; the Finding Site is the code of the study's body part, if a class.

    Returns
    -------
    highdicom.sr.MeasurementsAndQualitativeEvaluations
        The group.
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


def insert_image_library(root: Dataset, headers: Sequence[Dataset]) -> None:
    """Insert a TID 1600 Image Library before the "Imaging Measurements" container.

    highdicom's own ``ImageLibrary`` requires Patient Orientation and Imager Pixel Spacing of
    every projection radiograph, which real CR images often lack (PS3.3 C.8.1 makes them
    optional there), so the library is built here with each TID 1602/1603 descriptor written
    only when the source has it.

    Parameters
    ----------
    root : pydicom.Dataset
        The TID 1500 root container, which holds the "Imaging Measurements" container;
        modified in place.
    headers : sequence of pydicom.Dataset
        The source headers, one TID 1601 entry each.
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


def disclaimer_container() -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container holding the research-use TEXT comment.

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The container, its one Comment (DCM 121106) :data:`DISCLAIMER`.
    """
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
