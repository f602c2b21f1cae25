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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import Dataset

from dicom_io.capture import (
    RENDER_SIDE,
    build_secondary_capture,
    sc_label,
    secondary_capture_uids,
)
from dicom_io.derived import encode_file
from dicom_io.pixels import PixelDataError, normalize_radiograph
from dicom_io.scope import ScopeTable
from dicom_io.sr import build_sr, report_uids
from models.serving.engine import EngineOutput
from models.serving.enhance import InputGeometry, Preprocessing
from models.serving.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from models.serving.taxonomy import Taxonomy
from worker.spool import Spool
from worker.store import ClaimedJob, LeaseLostError, NewObject, ObjectRef, StateStore

logger = logging.getLogger(__name__)


class InferenceMetrics(Protocol):
    """Where the classify stage reports how long inference took (``worker.http.metrics``)."""

    def observe_inference(self, seconds: float, images: int) -> None:
        """One shared batch of ``images`` images preprocessed and classified in ``seconds``."""
        ...


class StudyClassifier(Protocol):
    """What the worker needs of a classifier (``models.serving.predict.TwoStageClassifier``)."""

    @property
    def taxonomy(self) -> Taxonomy:
        """The classes the classifier names; the SR codes each image's Finding Site from it."""
        ...

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Name and version of the model; the version enters the SR's UIDs."""
        ...

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become network inputs (the working size the images are rendered at)."""
        ...

    def preprocess(self, images: Sequence[NDArray[np.floating]]
                   ) -> tuple[NDArray[np.float32], list[InputGeometry]]:
        """Network inputs of normalized images, and where their pixels come from."""
        ...

    def predict_arrays(self, inputs: NDArray[np.float32],
                       geometries: Sequence[InputGeometry] | None = None, *,
                       maps: bool = False) -> tuple[EngineOutput, list[ImagePrediction]]:
        """Raw output and one prediction per input (with its findings, given geometries)."""
        ...

    def study(self, images: Sequence[ImagePrediction]) -> StudyPrediction:
        """The study result of its images' predictions."""
        ...


@dataclass
class LoadedStudy:
    """A claimed job's readable instances, and what the classifier gets of them.

    ``sources[i]`` is the i-th readable instance (every one is referenced by the SR), its
    header only: the pixel data, no longer needed once normalized, is dropped so that a
    batch of studies does not hold every radiograph's full-size pixels; ``images[i]`` its
    normalized image (reduced to the working size the model and its capture need), or None
    when it is not given to the model, in which case ``verdicts[i]`` says why it was not
    assessed (out of scope, undecodable pixels).
    """

    job: ClaimedJob
    sources: list[Dataset] = field(default_factory=list)
    images: list[NDArray[np.float32] | None] = field(default_factory=list)
    verdicts: list[ImagePrediction | None] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, ds: Dataset, image: NDArray[np.float32] | None,
            verdict: ImagePrediction | None = None) -> None:
        """Add a source with its image, or with the verdict that replaces the model's."""
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                del ds[keyword]
        self.sources.append(ds)
        self.images.append(image)
        self.verdicts.append(verdict)


@dataclass(frozen=True)
class Classified:
    """What the classify stage hands to the report stage for one job.

    The findings of ``prediction.images[i]`` are in the pixels of ``study.sources[i]``
    (Columns x Rows), whatever size the image was rendered at.
    """

    study: LoadedStudy
    prediction: StudyPrediction | None
    error: str | None = None


class Scheduler:
    """Turns studies that have been quiet for the completion timeout into queued jobs.

    Parameters
    ----------
    store : StateStore
        Holds each study's last-received time, so a study survives a restart.
    completion_timeout_s : float
        ``[study] completion_timeout_s``.
    max_queued : int
        Most jobs waiting for the classifier at a time (back-pressure).
    quiet_since : float, optional
        Store time from which quiet time counts at the earliest: the service's start, so
        that a study interrupted by a stop or crash waits a whole quiet time afterwards for
        its senders to re-send (:meth:`worker.store.StateStore.schedule_due`).
    """

    def __init__(self, store: StateStore, completion_timeout_s: float, *, max_queued: int,
                 quiet_since: float = 0.0) -> None:
        if completion_timeout_s <= 0:
            raise ValueError(f"completion_timeout_s must be > 0, got {completion_timeout_s!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued!r}")
        self.store = store
        self.completion_timeout_s = completion_timeout_s
        self.max_queued = max_queued
        self.quiet_since = quiet_since

    def run_once(self) -> int:
        """Queue the due studies; return how many jobs were created."""
        created = self.store.schedule_due(self.completion_timeout_s, max_queued=self.max_queued,
                                          quiet_since=self.quiet_since)
        if created:
            logger.info("%d complete stud%s queued", created, "y" if created == 1 else "ies")
        return created

    def seconds_until_due(self) -> float | None:
        """Seconds until the next receiving study is due (<= 0: due, but the queue is
        full), or None when no study is receiving."""
        due = self.store.next_due(self.completion_timeout_s, quiet_since=self.quiet_since)
        return None if due is None else due - self.store.now()


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
    metrics : InferenceMetrics, optional
        Told the duration of each classifier call.
    """

    def __init__(
        self,
        store: StateStore,
        spool: Spool,
        classifier: StudyClassifier,
        out: queue.Queue[Classified | None],
        stop: threading.Event,
        *,
        scope: ScopeTable | None = None,
        captures: bool = False,
        max_batch_studies: int = 16,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        if max_batch_studies < 1:
            raise ValueError(f"max_batch_studies must be >= 1, got {max_batch_studies!r}")
        self.store = store
        self.spool = spool
        self.classifier = classifier
        self.out = out
        self.stop = stop
        self.scope = scope or ScopeTable()
        self.captures = captures
        self.max_batch_studies = max_batch_studies
        self.metrics = metrics

    def run_once(self) -> int:
        """Classify every job that is ready now (up to ``max_batch_studies``); return how many."""
        jobs = self.store.claim_jobs(self.max_batch_studies)
        if not jobs:
            return 0
        loaded = [self._load(job) for job in jobs]
        flat = [(ds, image) for study in loaded
                for ds, image in zip(study.sources, study.images, strict=True)
                if image is not None]
        try:
            predictions = self._predict(flat)
            error = None
        except Exception as exc:  # one bad batch must not stop the stage
            logger.exception("Classifying studies %s failed", [j.study_uid for j in jobs])
            predictions = []
            error = f"classifier failed: {type(exc).__name__}: {exc}"
        results = iter(predictions)
        for study in loaded:
            if not study.sources:
                item = Classified(study, None, f"no readable instance in {study.job.study_uid}")
            elif error is not None:
                item = Classified(study, None, error)
            else:
                images: list[ImagePrediction] = []
                for image, verdict in zip(study.images, study.verdicts, strict=True):
                    if image is None:
                        assert verdict is not None
                        images.append(verdict)
                    else:
                        images.append(next(results))
                item = Classified(study, self.classifier.study(images))
            if not self._hand_over(item):
                break
        return len(jobs)

    def _predict(self, items: Sequence[tuple[Dataset, NDArray[np.float32]]]
                 ) -> list[ImagePrediction]:
        """Every image's prediction, its findings in the pixels of its source instance."""
        if not items:
            return []
        started = time.perf_counter()
        inputs, geometries = self.classifier.preprocess([image for _, image in items])
        _, predictions = self.classifier.predict_arrays(inputs, geometries)
        if self.metrics is not None:
            self.metrics.observe_inference(time.perf_counter() - started, len(items))
        # the image was rendered at the working size: findings go back to Columns x Rows
        return [replace(p, findings=tuple(
                    f.scaled(int(ds.Columns) / image.shape[1], int(ds.Rows) / image.shape[0])
                    for f in p.findings)) if p.findings else p
                for (ds, image), p in zip(items, predictions, strict=True)]

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
        """Read a job's instances; decide which the model sees.

        An instance that is not DICOM at all cannot be referenced and is skipped (logged).
        One outside the scope of Body Part Examined / Anatomic Region (:mod:`dicom_io.scope`),
        or whose pixel data cannot be decoded, is kept as a source that was *not assessed*,
        with the reason, so that the report says so.
        """
        loaded = LoadedStudy(job)
        working_side = self.classifier.preprocessing.working_side(
            RENDER_SIDE if self.captures else None)
        for instance in job.instances:
            try:
                ds = pydicom.dcmread(self.spool.path(instance.path))
                ds.SOPInstanceUID  # noqa: B018 - a data set without its UIDs cannot be reported
                ds.StudyInstanceUID  # noqa: B018
            except Exception as exc:  # pydicom raises many types for a damaged file
                logger.warning("Skipping SOP Instance %s: unreadable (%s: %s)",
                               instance.sop_uid, type(exc).__name__, exc)
                loaded.skipped.append(instance.sop_uid)
                continue
            decision = self.scope.decide(ds)
            if decision.out_of_scope:
                logger.info("SOP Instance %s not assessed: %s", instance.sop_uid, decision.reason)
                loaded.add(ds, None, ImagePrediction.not_assessed(decision.reason))
                continue
            try:  # any decoding or attribute error comes out as a PixelDataError
                image = normalize_radiograph(ds, max_side=working_side)
            except PixelDataError as exc:
                logger.warning("SOP Instance %s not assessed: %s", instance.sop_uid, exc)
                loaded.add(ds, None, ImagePrediction.not_assessed(
                    f"pixel data could not be decoded: {exc}"))
                continue
            loaded.add(ds, image)
        return loaded


class ReportStage:
    """Builds, writes and records the SR (and the secondary captures) of each classified study.

    Parameters
    ----------
    store, spool
        State and files.
    taxonomy : Taxonomy
        The classifier's classes (the SR's Finding Sites).
    algorithm : AlgorithmInfo
        The model's name and version (the objects' UIDs derive from the version).
    destinations : sequence of str
        Names of the destinations; each object gets one pending delivery to each.
    routes : mapping of str to sequence of str, optional
        For a study retrieved from a source named here, the destinations instead
        (``[[sources]] results_to``).
    captures : bool
        Also write a secondary capture of each assessed image, with its findings outlined
        (:mod:`dicom_io.capture`). False: SR only.
    """

    def __init__(
        self,
        store: StateStore,
        spool: Spool,
        taxonomy: Taxonomy,
        algorithm: AlgorithmInfo,
        destinations: Sequence[str],
        *,
        captures: bool = False,
        routes: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.taxonomy = taxonomy
        self.algorithm = algorithm
        self.destinations = tuple(destinations)
        self.routes = {name: tuple(to) for name, to in (routes or {}).items()}
        self.captures = captures

    def reroute(self, destinations: Sequence[str],
                routes: Mapping[str, Sequence[str]]) -> None:
        """Report from now on to ``destinations`` (and per source to ``routes``): a
        configuration reload. A study already reported keeps its deliveries."""
        self.routes = {name: tuple(to) for name, to in routes.items()}
        self.destinations = tuple(destinations)

    def destinations_of(self, job: ClaimedJob) -> tuple[str, ...]:
        """Where a study's objects go: its source's ``results_to``, else every destination."""
        if job.source is not None and job.source in self.routes:
            return self.routes[job.source]
        return self.destinations

    def handle(self, item: Classified) -> NewObject | None:
        """Report one study; return the SR recorded, or None when the job failed.

        Every object is written durably first, then all are recorded, with their
        deliveries, in one transaction. A secondary capture that cannot be built is logged
        and left out; the SR is what must reach the radiologist.
        """
        job = item.study.job
        if item.prediction is None:
            logger.error("Study %s failed: %s", job.study_uid, item.error)
            self._finish(job, error=item.error or "failed")
            return None
        try:
            sr = self._write_sr(item.study, item.prediction)
        except Exception as exc:  # a study that cannot be reported must not stop the stage
            logger.exception("Could not build the SR of study %s", job.study_uid)
            self._finish(job, error=f"SR not built: {type(exc).__name__}: {exc}")
            return None
        captures = self._write_captures(item) if self.captures else []
        recorded = self._finish(job, objects=[sr, *captures],
                                destinations=self.destinations_of(job),
                                result=study_result(item.prediction))
        return sr if recorded else None

    def _finish(self, job: ClaimedJob, **outcome: Any) -> bool:
        """Record the job's outcome under its claim (fenced by its attempt); False when the
        claim was lost meanwhile (its lease expired and another node took the job over:
        that node reports the study, with objects of the same UIDs)."""
        try:
            self.store.finish_job(job.job_id, attempt=job.attempt, **outcome)
        except LeaseLostError as exc:
            logger.warning("Study %s: not recorded here: %s", job.study_uid, exc)
            return False
        return True

    def _write_captures(self, item: Classified) -> list[NewObject]:
        """One secondary capture per assessed image, its findings outlined."""
        assert item.prediction is not None
        study, prediction = item.study, item.prediction
        thresholds = dict(prediction.thresholds)
        written = []
        for number, (source, image, verdict) in enumerate(zip(
            study.sources, study.images, prediction.images, strict=True
        ), start=1):
            if image is None or not verdict.assessed:
                continue
            source_uid = str(source.SOPInstanceUID)
            series_uid, sop_uid = secondary_capture_uids(
                study.job.study_uid, source_uid, self.algorithm.version
            )
            try:
                capture = build_secondary_capture(
                    source, image, verdict.findings,
                    label=sc_label(verdict, thresholds[verdict.body_part]),
                    series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                    instance_number=number, algorithm=self.algorithm,
                )
                path = self.spool.object_path(study.job.study_uid, sop_uid)
                self.spool.write(path, encode_file(capture))
            except Exception:  # logged; the SR still goes out
                logger.exception("Could not build the secondary capture of SOP Instance %s",
                                 source_uid)
                continue
            written.append(NewObject(kind="sc", sop_uid=sop_uid,
                                     sop_class_uid=str(capture.SOPClassUID),
                                     series_uid=series_uid, path=path))
        if written:
            logger.info("Study %s: %d secondary capture(s)", study.job.study_uid, len(written))
        return written

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
        self.spool.write(path, encode_file(sr))
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


def study_result(prediction: StudyPrediction) -> str:
    """The short result the state store keeps for the status page: ``"ABNORMAL (p=0.87)"``,
    ``"NORMAL (p=0.12)"`` or ``"NOT ASSESSED"`` (as the SR's Series Description says it)."""
    probability = prediction.abnormal_probability
    return prediction.verdict + ("" if probability is None else f" (p={probability:.2f})")


def _reference(ref: ObjectRef) -> Dataset:
    """The attributes of an earlier SR that a Predecessor Documents Sequence item needs."""
    ds = Dataset()
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = ref.series_uid
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_uid
    return ds
