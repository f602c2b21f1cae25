"""The processing stages between the listener and the outbox.

``schedule`` (complete studies become jobs, in the state store) → ``classify`` (claim jobs,
read and normalize their instances, run the two-stage classifier over every study ready
together in shared batches) → a bounded queue → ``report`` (build the SR, write it durably,
record it and one pending delivery per destination in one transaction). Delivery is
:mod:`worker.delivery`'s, one worker per destination.

Each stage is a plain object with a ``run_once`` step; :class:`worker.service.Service` runs
them in threads. The queue between classify and report is bounded, and the scheduler keeps
at most ``max_queued`` jobs waiting, so a classifier that falls behind makes studies wait on
disk, not in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import Dataset

from dicom_io.pixels import PixelDataError, normalize_radiograph
from dicom_io.report import build_sr, report_uids, sr_to_bytes
from models.results import AlgorithmInfo, StudyPrediction
from models.taxonomy import Taxonomy
from worker.spool import Spool
from worker.store import ClaimedJob, NewObject, ObjectRef, StateStore

logger = logging.getLogger(__name__)


class StudyClassifier(Protocol):
    """What the worker needs of a classifier (``models.predict.TwoStageClassifier``)."""

    @property
    def taxonomy(self) -> Taxonomy:
        """The classes the classifier names; the SR codes each image's Finding Site from it."""
        ...

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Name and version of the model; the version enters the SR's UIDs."""
        ...

    def predict_studies(self, studies: Sequence[Sequence[NDArray[np.float32]]]
                        ) -> list[StudyPrediction]:
        """Predict several studies from their normalized images, in shared batches."""
        ...


@dataclass
class LoadedStudy:
    """A claimed job's readable instances and their normalized images."""

    job: ClaimedJob
    sources: list[Dataset] = field(default_factory=list)
    images: list[NDArray[np.float32]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Classified:
    """What the classify stage hands to the report stage for one job."""

    study: LoadedStudy
    prediction: StudyPrediction | None
    error: str | None = None


class Scheduler:
    """Turns studies that have been quiet for the completion timeout into queued jobs.

    Parameters
    ----------
    store : StateStore
        Holds each study's last-received time, so the quiet time survives a restart.
    completion_timeout_s : float
        ``[study] completion_timeout_s``.
    max_queued : int
        Most jobs waiting for the classifier at a time (back-pressure).
    """

    def __init__(self, store: StateStore, completion_timeout_s: float, *, max_queued: int) -> None:
        if completion_timeout_s <= 0:
            raise ValueError(f"completion_timeout_s must be > 0, got {completion_timeout_s!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued!r}")
        self.store = store
        self.completion_timeout_s = completion_timeout_s
        self.max_queued = max_queued

    def run_once(self) -> int:
        """Queue the due studies; return how many jobs were created."""
        created = self.store.schedule_due(self.completion_timeout_s, max_queued=self.max_queued)
        if created:
            logger.info("%d complete stud%s queued", created, "y" if created == 1 else "ies")
        return created


class ClassifyStage:
    """Claims queued jobs, reads their instances and classifies them together.

    Parameters
    ----------
    store, spool
        State and files.
    classifier : StudyClassifier
        The loaded model.
    out : queue.Queue
        Bounded queue to the report stage; a full queue blocks this stage.
    stop : threading.Event
        Ends a blocked hand-over (the jobs stay ``running`` and are re-queued at the next
        start).
    max_batch_studies : int
        Most studies classified in one shared batch.
    """

    def __init__(
        self,
        store: StateStore,
        spool: Spool,
        classifier: StudyClassifier,
        out: queue.Queue[Classified | None],
        stop: threading.Event,
        *,
        max_batch_studies: int = 16,
    ) -> None:
        if max_batch_studies < 1:
            raise ValueError(f"max_batch_studies must be >= 1, got {max_batch_studies!r}")
        self.store = store
        self.spool = spool
        self.classifier = classifier
        self.out = out
        self.stop = stop
        self.max_batch_studies = max_batch_studies

    def run_once(self) -> int:
        """Classify every job that is ready now (up to ``max_batch_studies``); return how many."""
        jobs = self.store.claim_jobs(self.max_batch_studies)
        if not jobs:
            return 0
        loaded = [self._load(job) for job in jobs]
        ready = [s for s in loaded if s.sources]
        try:
            images = [s.images for s in ready]
            predictions = self.classifier.predict_studies(images) if ready else []
            by_job = {s.job.job_id: p for s, p in zip(ready, predictions, strict=True)}
            error = None
        except Exception as exc:  # one bad batch must not stop the stage
            logger.exception("Classifying studies %s failed", [j.study_uid for j in jobs])
            by_job, error = {}, f"classifier failed: {type(exc).__name__}: {exc}"
        for study in loaded:
            prediction = by_job.get(study.job.job_id)
            if prediction is not None:
                item = Classified(study, prediction)
            elif study.sources:
                item = Classified(study, None, error)
            else:
                item = Classified(study, None, f"no usable image in study {study.job.study_uid}")
            if not self._hand_over(item):
                break
        return len(jobs)

    def _hand_over(self, item: Classified) -> bool:
        """Queue ``item`` for the report stage, waiting while the queue is full; give up
        (the job stays ``running``, re-queued at the next start) if stopping meanwhile."""
        while True:
            try:
                self.out.put(item, timeout=0.2)
                return True
            except queue.Full:
                if self.stop.is_set():
                    return False

    def _load(self, job: ClaimedJob) -> LoadedStudy:
        """Read and normalize a job's instances; unusable ones are logged and skipped."""
        loaded = LoadedStudy(job)
        for instance in job.instances:
            try:
                ds = pydicom.dcmread(self.spool.path(instance.path))
                image = normalize_radiograph(ds)
            except (PixelDataError, pydicom.errors.InvalidDicomError, ValueError, OSError) as exc:
                logger.warning("Skipping SOP Instance %s: %s", instance.sop_uid, exc)
                loaded.skipped.append(instance.sop_uid)
                continue
            except Exception as exc:  # a decoder's own error type must not strand the job
                logger.warning(
                    "Skipping SOP Instance %s: %s: %s", instance.sop_uid, type(exc).__name__, exc
                )
                loaded.skipped.append(instance.sop_uid)
                continue
            loaded.sources.append(ds)
            loaded.images.append(image)
        return loaded


class ReportStage:
    """Builds, writes and records the SR of each classified study.

    Parameters
    ----------
    store, spool
        State and files.
    taxonomy : Taxonomy
        The classifier's classes (the SR's Finding Sites).
    algorithm : AlgorithmInfo
        The model's name and version (the SR's UIDs derive from the version).
    destinations : sequence of str
        Names of the destinations; each SR gets one pending delivery to each.
    """

    def __init__(
        self,
        store: StateStore,
        spool: Spool,
        taxonomy: Taxonomy,
        algorithm: AlgorithmInfo,
        destinations: Sequence[str],
    ) -> None:
        self.store = store
        self.spool = spool
        self.taxonomy = taxonomy
        self.algorithm = algorithm
        self.destinations = tuple(destinations)

    def handle(self, item: Classified) -> NewObject | None:
        """Report one study; return the SR recorded, or None when the job failed."""
        job = item.study.job
        if item.prediction is None:
            logger.error("Study %s failed: %s", job.study_uid, item.error)
            self.store.finish_job(job.job_id, error=item.error or "failed")
            return None
        try:
            obj = self._write_sr(item.study, item.prediction)
        except Exception as exc:  # a study that cannot be reported must not stop the stage
            logger.exception("Could not build the SR of study %s", job.study_uid)
            self.store.finish_job(job.job_id, error=f"SR not built: {type(exc).__name__}: {exc}")
            return None
        self.store.finish_job(job.job_id, objects=[obj], destinations=self.destinations)
        return obj

    def _write_sr(self, study: LoadedStudy, prediction: StudyPrediction) -> NewObject:
        job = study.job
        series_uid, sop_uid = report_uids(
            job.study_uid, [i.sop_uid for i in job.instances], self.algorithm.version
        )
        sr = build_sr(
            study.sources,
            prediction,
            taxonomy=self.taxonomy,
            instance_number=job.revision,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            previous_versions=[] if job.predecessor is None else [_reference(job.predecessor)],
        )
        path = self.spool.object_path(job.study_uid, sop_uid)
        self.spool.write(path, sr_to_bytes(sr))
        probability = prediction.abnormal_probability
        logger.info(
            "Study %s: %s%s (%d images, %d assessed, %d skipped), SR %s revision %d%s",
            job.study_uid,
            prediction.verdict,
            "" if probability is None else f" p={probability:.3f}",
            len(study.sources),
            len(prediction.assessed_images),
            len(study.skipped),
            sop_uid,
            job.revision,
            "" if job.predecessor is None else f" superseding {job.predecessor.sop_uid}",
        )
        return NewObject(
            kind="sr",
            sop_uid=sop_uid,
            sop_class_uid=str(sr.SOPClassUID),
            series_uid=series_uid,
            path=path,
        )


def _reference(ref: ObjectRef) -> Dataset:
    """The attributes of an earlier SR that a Predecessor Documents Sequence item needs."""
    ds = Dataset()
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = ref.series_uid
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_uid
    return ds
