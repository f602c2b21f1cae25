"""Process complete studies: pixels → two-stage classifier → SR → destinations.

The studies that are ready together are classified together: their images go through the
networks in shared batches (:meth:`StudyProcessor.process_batch`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from models.taxonomy import Taxonomy
from worker.dispatch import Dispatcher
from worker.spool import Job

logger = logging.getLogger(__name__)


class StudyClassifier(Protocol):
    """What the worker needs of a classifier (``models.predict.TwoStageClassifier``)."""

    @property
    def taxonomy(self) -> Taxonomy:
        """The classes the classifier names; the SR codes each image's Finding Site from it."""
        ...

    def predict_studies(self, studies: Sequence[Sequence[NDArray[np.float32]]]
                        ) -> list[StudyPrediction]:
        """Predict several studies from their normalized images, in shared batches."""
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

    def _load(self, job: Job) -> _LoadedStudy:
        """Read and normalize a job's instances; unusable ones are logged and skipped."""
        loaded = _LoadedStudy(job)
        for path in job.instances():
            uid = path.stem
            try:
                ds = pydicom.dcmread(path)
                image = normalize_radiograph(ds)
            except (PixelDataError, pydicom.errors.InvalidDicomError, ValueError, OSError) as exc:
                logger.warning("Skipping SOP Instance %s: %s", uid, exc)
                loaded.skipped.append(uid)
                continue
            loaded.sources.append(ds)
            loaded.images.append(image)
        if not loaded.sources:
            raise JobError(f"no usable image in study {job.study_uid}")
        return loaded

    def _report(self, loaded: _LoadedStudy, prediction: StudyPrediction) -> JobResult:
        """Write the SR under ``job.path / "sr"`` and send it."""
        sources = loaded.sources
        study_uid = str(sources[0].StudyInstanceUID)
        sr = build_sr(sources, prediction, taxonomy=self.classifier.taxonomy)
        sr_dir = loaded.job.path / "sr"
        sr_dir.mkdir(exist_ok=True)
        sr_path = sr_dir / f"{sr.SOPInstanceUID}.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        probability = prediction.abnormal_probability
        logger.info(
            "Study %s: %s%s (%d images, %d assessed, %d skipped), SR %s",
            study_uid,
            prediction.verdict,
            "" if probability is None else f" p={probability:.3f}",
            len(sources),
            len(prediction.assessed_images),
            len(loaded.skipped),
            sr.SOPInstanceUID,
        )
        deliveries = self.dispatcher.dispatch(sr)
        return JobResult(study_uid, sr_path, prediction, deliveries, tuple(loaded.skipped))

    def process_batch(self, jobs: Sequence[Job]) -> list[JobResult | JobError]:
        """Classify several studies in shared batches, then report and send each.

        Returns, per job in order, its :class:`JobResult` or the :class:`JobError` that
        stopped it (no usable image); one study's failure does not stop the others.
        """
        loaded: list[_LoadedStudy | JobError] = []
        for job in jobs:
            try:
                loaded.append(self._load(job))
            except JobError as exc:
                loaded.append(exc)
        ready = [s for s in loaded if isinstance(s, _LoadedStudy)]
        predictions = iter(self.classifier.predict_studies([s.images for s in ready])
                           if ready else [])
        return [s if isinstance(s, JobError) else self._report(s, next(predictions))
                for s in loaded]

    def process(self, job: Job) -> JobResult:
        """Classify one study, write its SR and send it.

        Raises
        ------
        JobError
            If no instance of the study has usable pixel data.
        """
        outcome = self.process_batch([job])[0]
        if isinstance(outcome, JobError):
            raise outcome
        return outcome


@dataclass
class _LoadedStudy:
    """A job's readable instances and their normalized images (internal to the processor)."""

    job: Job
    sources: list[Dataset] = field(default_factory=list)
    images: list[NDArray[np.float32]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
