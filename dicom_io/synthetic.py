"""Wrap phantom radiographs (8-bit grayscale arrays) as DICOM CR or DX instances.

Testers and the end-to-end tests use this to turn the procedural MURA-layout phantom into files
that DCMTK ``storescu`` can send. The images are written as real radiographs are: 12-bit
MONOCHROME1 (high stored value = dark) with a VOI window, so the receiving pipeline must apply
the VOI LUT and invert MONOCHROME1 to recover the phantom's appearance (DICOM PS3.3 C.7.6.3,
C.8.9.1 and C.11.2).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicom_io.codes import to_code
from models.serving.taxonomy import MURA_TAXONOMY

#: Bone type (MURA category) to DICOM Body Part Examined (PS3.16 Annex L defined terms).
BODY_PART_EXAMINED: dict[str, str] = {
    "ELBOW": "ELBOW",
    "FINGER": "FINGER",
    "FOREARM": "ARM",
    "HAND": "HAND",
    "HUMERUS": "ARM",
    "SHOULDER": "SHOULDER",
    "WRIST": "WRIST",
    "OTHER": "",  # out-of-scope anatomy of the phantom: Body Part Examined left empty
}


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes shared by every instance of a synthetic study.

    Parameters
    ----------
    patient_id : str
        Patient ID (0010,0020).
    patient_name : str
        Patient's Name (0010,0010), DICOM PN form such as ``"Phantom^Wrist"``.
    accession_number : str
        Accession Number (0008,0050).
    study_instance_uid : str
        Study Instance UID (0020,000D); a fresh one when not given.
    body_part : str
        A class of :data:`models.serving.taxonomy.MURA_TAXONOMY`, written as Body Part Examined
        (0018,0015) and, for DX, Anatomic Region Sequence.
    """

    patient_id: str
    patient_name: str
    accession_number: str
    body_part: str
    study_instance_uid: str = ""

    def __post_init__(self) -> None:
        if self.body_part not in BODY_PART_EXAMINED:
            raise ValueError(
                f"body_part must be one of {sorted(BODY_PART_EXAMINED)}, got {self.body_part!r}"
            )
        if not self.study_instance_uid:
            object.__setattr__(self, "study_instance_uid", generate_uid())


def radiograph_dataset(
    image: NDArray[np.uint8],
    identity: StudyIdentity,
    *,
    series_instance_uid: str,
    instance_number: int,
    modality: str = "CR",
) -> Dataset:
    """Build one CR or DX image instance from an 8-bit grayscale image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``uint8`` array, 255 = brightest (bone), as in MURA's PNGs.
    identity : StudyIdentity
        Patient and study attributes.
    series_instance_uid : str
        Series Instance UID shared by the study's images.
    instance_number : int
        Instance Number, 1-based.
    modality : {"CR", "DX"}
        CR Image IOD (PS3.3 A.2) or DX Image IOD, for presentation (PS3.3 A.26).

    Returns
    -------
    pydicom.Dataset
        A dataset with file meta information, ready for ``save_as(..., enforce_file_format=True)``.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be a 2-D uint8 array, got {image.dtype} {image.shape}")
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be 'CR' or 'DX', got {modality!r}")
    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    now = datetime.datetime.now()
    sop_instance_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = identity.accession_number
    ds.StudyDescription = f"XR {identity.body_part.title()}"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "Ossa phantom"
    ds.InstanceNumber = instance_number
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.BodyPartExamined = BODY_PART_EXAMINED[identity.body_part]
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.BurnedInAnnotation = "NO"
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.ImageLaterality = "R"
        region = to_code(MURA_TAXONOMY.get(identity.body_part).code)
        item = Dataset()
        item.CodeValue = region.value
        item.CodingSchemeDesignator = region.scheme_designator
        item.CodeMeaning = region.meaning
        ds.AnatomicRegionSequence = [item]
        ds.LossyImageCompression = "00"
        ds.AcquisitionContextSequence = []
        ds.PresentationLUTShape = "INVERSE"
        ds.PatientOrientation = ["A", "F"]
    else:
        ds.Laterality = "R"
        ds.ViewPosition = ""

    # 12-bit MONOCHROME1: bright bone (255) is stored as a low value.
    stored = (255 - image.astype(np.uint16)) * 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = (int(n) for n in image.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def write_study(
    images: Sequence[NDArray[np.uint8]],
    identity: StudyIdentity,
    out_dir: Path,
    *,
    modality: str = "CR",
) -> list[Path]:
    """Write a study's images as DICOM Part 10 files named ``IMG0001.dcm``, ``IMG0002.dcm``…

    Parameters
    ----------
    images : sequence of numpy.ndarray
        The study's 8-bit images.
    identity : StudyIdentity
        Patient and study attributes.
    out_dir : pathlib.Path
        Directory to write into; created if missing.
    modality : {"CR", "DX"}
        Modality of every instance.

    Returns
    -------
    list of pathlib.Path
        The written files, in instance order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for number, image in enumerate(images, start=1):
        ds = radiograph_dataset(
            image,
            identity,
            series_instance_uid=series_uid,
            instance_number=number,
            modality=modality,
        )
        path = out_dir / f"IMG{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
