"""The Ossa service lifecycle: start the listener, assemble studies, run jobs, stop cleanly.

Like uvicorn's ``Server``: :meth:`Service.start` binds the DICOM listener and starts the
scheduler and worker threads; :meth:`Service.run` blocks until :meth:`Service.request_stop`
(called from a signal handler); :meth:`Service.stop` stops accepting associations, lets the
job in progress finish within a deadline and returns an exit code. Work not finished stays
on disk and is resumed at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from worker.assembly import StudyAssembler
from worker.config import ListenerConfig
from worker.handlers import handle_echo, handle_store
from worker.jobs import JobError, StudyProcessor
from worker.spool import Job, Spool

logger = logging.getLogger(__name__)

#: Storage SOP Classes accepted: CR (PS3.4 B.5) and DX for presentation and processing.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
#: Uncompressed transfer syntaxes (PS3.5 A.1, A.2, A.3).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
)


def build_ae(listener: ListenerConfig) -> AE:
    """An Application Entity configured from ``[listener]``, not yet listening."""
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_associations = listener.max_associations
    ae.maximum_pdu_size = listener.max_pdu_size
    ae.network_timeout = listener.network_timeout_s
    ae.dimse_timeout = listener.dimse_timeout_s
    ae.acse_timeout = listener.network_timeout_s
    ae.require_calling_aet = list(listener.allowed_calling_aets)
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


class Service:
    """Listener, study assembly and the job queue, wired together.

    Parameters
    ----------
    listener : ListenerConfig
        ``[listener]`` section.
    spool : Spool
        Durable storage of instances and jobs.
    assembler : StudyAssembler
        Decides when a study is complete.
    processor : StudyProcessor
        Turns a study into an SR and delivers it.
    poll_interval_s : float
        How often the scheduler checks for complete studies.
    max_batch_studies : int
        Most studies classified in one shared batch (those ready at the same time).
    """

    def __init__(
        self,
        listener: ListenerConfig,
        spool: Spool,
        assembler: StudyAssembler,
        processor: StudyProcessor,
        *,
        stop_event: threading.Event,
        poll_interval_s: float = 0.5,
        max_batch_studies: int = 16,
    ) -> None:
        self.listener = listener
        self.spool = spool
        self.assembler = assembler
        self.processor = processor
        self.poll_interval_s = poll_interval_s
        self.max_batch_studies = max_batch_studies
        self._stop = stop_event
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._ae = build_ae(listener)
        self._server: ThreadedAssociationServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        """The TCP port the listener is bound to (useful with ``port = 0`` in tests)."""
        if self._server is None:
            raise RuntimeError("service is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Recover unfinished work, bind the listener and start the background threads."""
        self.spool.clear_tmp()
        for job in self.spool.unfinished_jobs():
            logger.info("Resuming unfinished job for study %s", job.study_uid)
            self._jobs.put(job)
        for study in self.spool.incoming_studies():
            logger.info("Resuming assembly of study %s", study)
            self.assembler.note(study)

        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.spool, self.assembler]),
        ]
        self._server = self._ae.start_server(
            (self.listener.host, self.listener.port), block=False, evt_handlers=handlers
        )
        if not self.listener.allowed_calling_aets:
            logger.warning("allowed_calling_aets is empty: any calling AE title is accepted")
        logger.info(
            "Listening as %s on %s:%d", self.listener.ae_title, self.listener.host, self.port
        )
        for target, name in ((self._schedule, "ossa-scheduler"), (self._work, "ossa-worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self) -> None:
        """Block until a stop is requested."""
        self._stop.wait()

    def request_stop(self) -> None:
        """Ask the service to stop; safe to call from a signal handler."""
        self._stop.set()

    def stop(self, *, deadline_s: float = 30.0) -> int:
        """Stop accepting associations, drain the job in progress, return an exit code."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._jobs.put(None)
        exit_code = 0
        for thread in self._threads:
            thread.join(timeout=deadline_s)
            if thread.is_alive():
                logger.error("%s did not finish within %.0f s", thread.name, deadline_s)
                exit_code = 1
        logger.info("Stopped; unfinished studies stay in %s for the next start", self.spool.root)
        return exit_code

    def _schedule(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            for study in self.assembler.pop_complete():
                try:
                    job = self.spool.claim(study)
                except OSError as exc:
                    logger.error("Could not claim study %s: %s", study, exc)
                    self.assembler.note(study)
                    continue
                if job is not None:
                    logger.info("Study %s is complete; queued", study)
                    self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                return
            batch = [job]
            while len(batch) < self.max_batch_studies:  # every study ready now, classified together
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # keep the stop marker for the next turn
                    break
                batch.append(more)
            self._run_jobs(batch)

    def _run_jobs(self, jobs: list[Job]) -> None:
        try:
            outcomes = self.processor.process_batch(jobs)
        except Exception as exc:  # one bad batch must not stop the worker
            logger.exception("Studies %s failed unexpectedly", [j.study_uid for j in jobs])
            for job in jobs:
                self.spool.finish(job, error=f"{type(exc).__name__}: {exc}")
            return
        for job, result in zip(jobs, outcomes, strict=True):
            if isinstance(result, JobError):
                logger.error("Study %s failed: %s", job.study_uid, result)
                self.spool.finish(job, error=str(result))
                continue
            if result.delivered:
                self.spool.finish(job)
                continue
            failed = sorted(name for name, r in result.deliveries.items() if not r.ok)
            self.spool.finish(job, error=f"SR not delivered to: {', '.join(failed)}")
