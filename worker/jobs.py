"""Process one complete study: pixels → two-stage classifier → SR → destinations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import Dataset

from dicom_io.pixels import PixelDataError, normalize_radiograph
from dicom_io.report import build_sr
from dicom_io.send import SendResult
from models.results import StudyPrediction
from worker.dispatch import Dispatcher
from worker.spool import Job

logger = logging.getLogger(__name__)


class StudyClassifier(Protocol):
    """What the worker needs of a classifier (``models.predict.TwoStageClassifier``)."""

    def predict_study(self, images: Sequence[NDArray[np.float32]]) -> StudyPrediction:
        """Predict one study from its normalized images."""
        ...


class JobError(RuntimeError):
    """A study that cannot be turned into an SR."""


@dataclass(frozen=True)
class JobResult:
    """What processing a study produced.

    Parameters
    ----------
    study_instance_uid : str
        The study.
    sr_path : pathlib.Path
        Where the SR was written.
    prediction : StudyPrediction
        The classifier's result.
    deliveries : dict
        Destination name to the result of sending the SR there.
    skipped : tuple of str
        SOP Instance UIDs of instances that could not be used.
    """

    study_instance_uid: str
    sr_path: Path
    prediction: StudyPrediction
    deliveries: dict[str, SendResult]
    skipped: tuple[str, ...]

    @property
    def delivered(self) -> bool:
        """Whether every destination has the SR."""
        return all(result.ok for result in self.deliveries.values())


class StudyProcessor:
    """Turn a claimed study into an SR and deliver it.

    Parameters
    ----------
    classifier : StudyClassifier
        The loaded model.
    dispatcher : Dispatcher
        Sends the SR to the destinations.
    """

    def __init__(self, classifier: StudyClassifier, dispatcher: Dispatcher) -> None:
        self.classifier = classifier
        self.dispatcher = dispatcher

    def process(self, job: Job) -> JobResult:
        """Classify the job's images, write the SR under ``job.path / "sr"`` and send it.

        Raises
        ------
        JobError
            If no instance of the study has usable pixel data.
        """
        sources: list[Dataset] = []
        images: list[NDArray[np.float32]] = []
        skipped: list[str] = []
        for path in job.instances():
            uid = path.stem
            try:
                ds = pydicom.dcmread(path)
                image = normalize_radiograph(ds)
            except (PixelDataError, pydicom.errors.InvalidDicomError, ValueError, OSError) as exc:
                logger.warning("Skipping SOP Instance %s: %s", uid, exc)
                skipped.append(uid)
                continue
            sources.append(ds)
            images.append(image)
        if not sources:
            raise JobError(f"no usable image in study {job.study_uid}")

        study_uid = str(sources[0].StudyInstanceUID)
        prediction = self.classifier.predict_study(images)
        sr = build_sr(sources, prediction)
        sr_dir = job.path / "sr"
        sr_dir.mkdir(exist_ok=True)
        sr_path = sr_dir / f"{sr.SOPInstanceUID}.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        logger.info(
            "Study %s: %s (p=%.3f, %d images, %d skipped), SR %s",
            study_uid,
            "ABNORMAL" if prediction.abnormal else "NORMAL",
            prediction.abnormal_probability,
            len(sources),
            len(skipped),
            sr.SOPInstanceUID,
        )
        deliveries = self.dispatcher.dispatch(sr)
        return JobResult(study_uid, sr_path, prediction, deliveries, tuple(skipped))
