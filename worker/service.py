"""The Ossa service lifecycle: listener, pipeline stages and delivery workers in threads.

Like uvicorn's ``Server``: :meth:`Service.start` reconciles the state store with the disk,
re-queues interrupted jobs, binds the DICOM listener and starts one thread per stage
(scheduler, classify, report) and the lanes (:mod:`worker.lanes`) of each destination and
source; :meth:`Service.run` blocks until :meth:`Service.request_stop` (called from a signal
handler); :meth:`Service.stop` stops accepting associations, lets the batch in progress and
the attempts in progress finish within a deadline and returns 0. Everything not finished is
in the state store and is resumed at the next start, which is also what happens after
``kill -9``.

:meth:`Service.request_reload` (SIGHUP) makes :meth:`Service.run` call its reload callback,
which reads the configuration again and hands it to :meth:`Service.reload`: AE titles,
allowed peers, scope, retry policy, destinations and sources change without a restart and
without dropping an association (:mod:`worker.reload`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io.tls import TlsFileError, server_context, start_server
from dicom_io.transfer_syntax import TRANSFER_SYNTAXES
from worker.access import PeerBindings
from worker.audit import AssociationAudit
from worker.config import MIB, Config, ConfigError, ListenerConfig
from worker.handlers import handle_echo, handle_store
from worker.http.metrics import Metrics
from worker.http.server import HttpServer, build_http_server
from worker.intake import STORAGE_SOP_CLASSES, Intake
from worker.lanes import Lane, LaneBuilder, LaneSpec, retire
from worker.pipeline import (
    Classified,
    ClassifyStage,
    ReportStage,
    Scheduler,
    StudyClassifier,
)
from worker.reload import ConfigChange, compare, running
from worker.retention import prune
from worker.spool import Spool
from worker.store import StoreError, open_store
from worker.store.schema import SCHEMA_VERSION

logger = logging.getLogger(__name__)

#: How often finished studies are checked against ``storage.retention_days``.
RETENTION_INTERVAL_S = 3600.0
#: On a storage root shared by several nodes, a spool file without a row is registered at
#: start-up only once it is this old (a live node commits its row right after the rename).
RECONCILE_GRACE_S = 300.0
#: Added to a study's due time before the scheduler wakes for it, so that the store's
#: clock has passed it.
SCHEDULE_SLACK_S = 0.005
#: Most studies classified together in one shared batch, and so also the size of the queue
#: between the classify and report stages.
MAX_BATCH_STUDIES = 16
#: Most jobs waiting for the classifier; further complete studies wait on disk.
MAX_QUEUED_JOBS = 2 * MAX_BATCH_STUDIES
#: How long a reload waits for a retired lane's attempt in progress before going on (the
#: old lane then stops after it; the new lane starts at once either way).
RETIRE_DEADLINE_S = 30.0


def build_ae(listener: ListenerConfig) -> AE:
    """An Application Entity configured from ``[listener]``, not yet listening.

    It also turns on pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` (a process-wide setting of
    pynetdicom's): a received data set is written to a temporary file as it arrives, never
    held whole in memory, and :func:`worker.handlers.handle_store` copies it into the spool.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_associations = listener.max_associations
    ae.maximum_pdu_size = listener.max_pdu_size
    ae.network_timeout = listener.network_timeout_s
    ae.dimse_timeout = listener.dimse_timeout_s
    ae.acse_timeout = listener.network_timeout_s
    ae.require_calling_aet = list(listener.allowed_calling_aets)
    ae.require_called_aet = True  # A-ASSOCIATE-RJ "called AE title not recognised" otherwise
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


class InterruptedReceives:
    """Removes pynetdicom's temporary files of data sets whose association ended mid-transfer.

    With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each data set to a temporary file
    in ``TMPDIR`` as it arrives (``delete=False``) and removes it once the C-STORE handler
    has returned. When the association ends first (the sender aborts or drops the
    connection, or writing the file fails because ``TMPDIR`` is full, which makes pynetdicom
    abort the association), the partial file is left behind: nothing refers to it but the
    ended association's DIMSE provider, where :meth:`sweep` finds it (pynetdicom 3.0's
    ``dimse.message._data_set_file``, and the ``_dataset_file`` of a C-STORE request decoded
    but never served). A ``kill -9`` of the service still leaves its partial files in
    ``TMPDIR``: they cannot be told from other processes' files afterwards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._associations: list[Association] = []

    def handlers(self) -> list[evt.EventHandlerType]:
        """The notification handler to bind with the listener's other handlers."""
        return [(evt.EVT_CONN_OPEN, self._opened)]

    def _opened(self, event: evt.Event) -> None:
        with self._lock:
            self._associations.append(event.assoc)

    def sweep(self) -> int:
        """Remove the partial files of the associations that have ended; return how many."""
        with self._lock:
            ended = [a for a in self._associations if a.ident is not None and not a.is_alive()]
            self._associations = [a for a in self._associations if a not in ended]
        removed = 0
        for assoc in ended:
            dimse = assoc.dimse
            files = [getattr(dimse.message, "_data_set_file", None)]
            files += [getattr(p, "_dataset_file", None) for _, p in list(dimse.msg_queue.queue)]
            for handle in files:
                if handle is None:
                    continue
                try:
                    handle.close()  # flushes what it still buffers: fails on a full TMPDIR
                except OSError:
                    pass
                try:
                    size = os.stat(handle.name).st_size
                    os.unlink(handle.name)
                except OSError:  # already gone
                    continue
                logger.warning(
                    "Removed the partial data set (%d bytes) of an association that ended"
                    " during a C-STORE", size,
                )
                removed += 1
        return removed


def listener_tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    """The TLS context of ``[listener.tls]``; ``None`` without that section.

    Raises
    ------
    ConfigError
        Naming the key (``listener.tls.cert``, ``.key`` or ``.ca``) of a file that is
        missing, unreadable, not PEM, or a key that does not match the certificate.
    """
    tls = listener.tls
    if tls is None:
        return None
    try:
        return server_context(
            tls.cert, tls.key, ca=tls.ca, require_client_cert=tls.require_client_cert
        )
    except TlsFileError as exc:
        raise ConfigError(f"listener.tls.{exc}") from None


class Service:
    """Listener, pipeline stages and delivery workers, wired together.

    Parameters
    ----------
    config : Config
        The configuration it starts with (:meth:`reload` replaces its live keys).
    intake : Intake
        Writes and records received instances (its spool and store are the service's).
    scheduler, classify, report : stages of :mod:`worker.pipeline`
        ``classify`` hands its results to ``report`` through ``classify.out``.
    lanes : LaneBuilder
        Builds the lanes (threads) of each destination and source.
    stop_event : threading.Event
        Shared with the stages; set to stop.
    poll_interval_s : float
        How often the scheduler and the classify stage look at the store.
    """

    def __init__(
        self,
        config: Config,
        intake: Intake,
        scheduler: Scheduler,
        classify: ClassifyStage,
        report: ReportStage,
        lanes: LaneBuilder,
        *,
        stop_event: threading.Event,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.config = config
        self.intake = intake
        self.scheduler = scheduler
        self.classify = classify
        self.report = report
        self.poll_interval_s = poll_interval_s
        self._lane_builder = lanes
        #: The running lanes, by key (``"destination pacs"``); replaced whole by a reload.
        self.lanes: dict[str, Lane] = lanes.build_all(config)
        self._stop = stop_event
        self._wake_main = threading.Event()
        self._reload_requested = threading.Event()
        self._reload_lock = threading.Lock()
        self._classify_wake = threading.Event()
        self._ae = build_ae(config.listener)
        self._server: ThreadedAssociationServer | None = None
        self._audit = AssociationAudit(PeerBindings(config.listener.allowed_peers))
        self._interrupted = InterruptedReceives()
        self._threads: list[threading.Thread] = []
        #: Health, metrics, status page, API and STOW-RS (``[http]``); None when disabled.
        self.http: HttpServer | None = None

    @property
    def listener(self) -> ListenerConfig:
        """The running ``[listener]`` section."""
        return self.config.listener

    @property
    def port(self) -> int:
        """The TCP port the listener is bound to (useful with ``port = 0`` in tests)."""
        if self._server is None:
            raise RuntimeError("service is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Reconcile, recover interrupted work, bind the listener and start the threads.

        The HTTP server (when enabled) starts first: a port in use fails the start before
        anything else runs, and ``/healthz`` answers 503 until the listener is up.
        """
        tls_context = listener_tls_context(self.listener)  # a bad file: nothing has started
        if self.http is not None:
            try:
                self.http.start()
            except OSError as exc:
                raise ConfigError(
                    f"http: cannot listen on {self.http.host}:{self.http.requested_port}: {exc}"
                ) from None
        try:
            self._start_dicom(tls_context)
        except BaseException:
            if self.http is not None:
                self.http.stop()  # a failed start leaves nothing running
            raise

    def _start_dicom(self, tls_context: ssl.SSLContext | None) -> None:
        """Reconcile, re-queue, bind the DICOM listener and start the pipeline threads."""
        store = self.intake.store
        store.register_node(host=socket.gethostname(), pid=os.getpid(), version=_version())
        # On a shared root a file another node has just renamed into place may not have its
        # row yet: only older files without a row are registered.
        registered, lost = self.intake.reconcile(
            grace_s=RECONCILE_GRACE_S if store.location.postgres else 0.0)
        requeued = store.requeue_interrupted()
        if registered or lost or requeued:
            logger.info(
                "Start-up: %d file(s) registered, %d lost, %d interrupted job(s) re-queued",
                registered, lost, requeued,
            )
        audit = self._audit
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store,
             [self.intake, self.listener.max_inflated_mb * MIB, audit.count_store]),
            *audit.handlers(),
            *self._interrupted.handlers(),
        ]
        self._server = start_server(
            self._ae, (self.listener.host, self.listener.port), evt_handlers=handlers,
            tls_context=tls_context, handshake_timeout_s=self.listener.network_timeout_s,
            on_handshake_failed=audit.handshake_failed,
        )
        if not self.listener.allowed_calling_aets:
            logger.warning("allowed_calling_aets is empty: any calling AE title is accepted")
        logger.info(
            "Listening as %s on %s:%d%s", self.listener.ae_title, self.listener.host, self.port,
            " (DICOM TLS)" if tls_context is not None else "",
        )
        self._spawn(self._heartbeat, "ossa-heartbeat")
        self._spawn(self._schedule, "ossa-scheduler")
        self._spawn(self._classify, "ossa-classify")
        self._spawn(self._report, "ossa-report")
        for lane in self.lanes.values():
            lane.start()

    def listener_status(self) -> tuple[bool, str]:
        """Whether the DICOM listener is bound and serving (a health check)."""
        server = self._server
        if server is None or server.socket is None or server.socket.fileno() < 0:
            return False, "not listening"
        host, port = server.server_address[:2]
        return True, f"{self.listener.ae_title} on {host}:{port}"

    def model_status(self) -> tuple[bool, str]:
        """Whether the model is loaded and its stage running (a health check)."""
        algorithm = self.classify.classifier.algorithm
        alive = any(t.name == "ossa-classify" and t.is_alive() for t in self._threads)
        return alive, f"{algorithm.version}" + ("" if alive else ": classify stage not running")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def run(self, on_reload: Callable[[], None] | None = None) -> None:
        """Block until a stop is requested; call ``on_reload`` (in this thread) for each
        reload requested meanwhile."""
        while not self._stop.is_set():
            self._wake_main.wait()
            self._wake_main.clear()
            if self._reload_requested.is_set() and not self._stop.is_set():
                self._reload_requested.clear()
                if on_reload is not None:
                    on_reload()

    def request_stop(self) -> None:
        """Ask the service to stop; safe to call from a signal handler."""
        self._stop.set()
        self._wake_main.set()

    def request_reload(self) -> None:
        """Ask :meth:`run` to reload the configuration; safe to call from a signal handler."""
        self._reload_requested.set()
        self._wake_main.set()

    def reload(self, new: Config) -> ConfigChange:
        """Apply ``new``'s live keys (:mod:`worker.reload`) to the running service.

        The listener keeps listening and its associations go on: a new AE title or list of
        allowed calling AE titles or peers applies to the associations requested from now
        on. The lanes of destinations and sources that were removed or changed (or all of
        them, when the retry policy or the AE title changed) are retired after their attempt
        in progress, and the new ones started; the others run on. Keys that need a restart
        are returned and logged, and keep their running values.
        """
        with self._reload_lock:
            change = compare(self.config, new)
            if not change:
                logger.info("Configuration reloaded: nothing changed")
                return change
            config = running(self.config, new)
            # Built before anything changes: a destination that cannot be built (its TLS
            # files, say) fails the reload with the running configuration intact.
            specs = self._lane_builder.specs(config)
            built = {key: self._lane_builder.build(spec) for key, spec in specs.items()
                     if key not in self.lanes or self.lanes[key].spec != spec}
            listener = config.listener
            self._ae.ae_title = listener.ae_title
            self._ae.require_calling_aet = list(listener.allowed_calling_aets)
            if self._server is not None:  # the title the listener answers to from now on
                self._server.ae_title = listener.ae_title
            self._audit.bindings = PeerBindings(listener.allowed_peers)
            self.classify.scope = config.scope.table()
            self.report.reroute([d.name for d in config.destinations],
                                {s.name: config.results_to(s.name) for s in config.sources})
            self._replace_lanes(specs, built)
            self.config = config
            if self.http is not None:
                self.http.rename(destinations=tuple(d.name for d in config.destinations),
                                 sources=tuple(s.name for s in config.sources))
            if change.live:
                logger.info("Configuration reloaded; applied: %s", ", ".join(change.live))
            if change.restart:
                logger.warning("Configuration reloaded; these keys take effect at the next"
                               " restart only: %s", ", ".join(change.restart))
            return change

    def _replace_lanes(self, specs: dict[str, LaneSpec], built: dict[str, Lane]) -> None:
        """Retire the lanes whose spec changed or went; start ``built``, their successors
        and the lanes of new destinations and sources."""
        retire([lane for key, lane in self.lanes.items() if specs.get(key) != lane.spec],
               deadline_s=RETIRE_DEADLINE_S)
        lanes = {key: lane for key, lane in self.lanes.items() if specs.get(key) == lane.spec}
        for key, lane in built.items():
            if self._server is not None:  # started: else start() starts them
                lane.start()
            lanes[key] = lane
        self.lanes = {key: lanes[key] for key in specs}  # in the configuration's order

    def stop(self, *, deadline_s: float = 30.0) -> int:
        """Stop accepting, let work in progress finish within ``deadline_s``, return 0.

        What does not finish in time (a long classification, a send to a slow peer) is
        still in the state store and is resumed at the next start, or by another node of a
        cluster once its lease expires; when everything stopped, what this node still holds
        is released at once.
        """
        self._stop.set()
        self._wake_main.set()
        self._classify_wake.set()
        lanes = list(self.lanes.values())
        for lane in lanes:
            lane.signal_stop()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self._interrupted.sweep()
        if self.http is not None:  # no more STOW-RS, retry or scrape
            self.http.stop()
        end = time.monotonic() + deadline_s
        unfinished = []
        for thread in [*self._threads, *(t for lane in lanes for t in lane.threads)]:
            thread.join(timeout=max(0.0, end - time.monotonic()))
            if thread.is_alive():
                unfinished.append(thread.name)
        if unfinished:
            logger.warning(
                "Not finished within %.0f s: %s; resumed from the state store at the next start",
                deadline_s, ", ".join(unfinished),
            )
        else:
            try:  # what this node still holds goes back to the queue: another node takes it
                released = self.intake.store.requeue_interrupted()
                if released:
                    logger.info("Released %d job(s) to the other nodes", released)
            except StoreError as exc:
                logger.error("Could not release this node's work: %s; its leases expire", exc)
            self.intake.store.close()
        logger.info("Stopped; state is in %s", self.intake.store.location.shown)
        return 0

    def _schedule(self) -> None:
        """Queue studies as they become due: it sleeps until the quietest receiving study's
        completion timeout ends (at most ``poll_interval_s``, which bounds how late a study
        that started meanwhile is seen when its timeout is shorter than that)."""
        next_retention = 0.0
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.poll_interval_s
            try:
                self._interrupted.sweep()
                if self.scheduler.run_once():
                    self._classify_wake.set()
                due_in = self.scheduler.seconds_until_due()
                if due_in is not None and due_in > 0:  # <= 0: due, but the queue is full
                    wait = min(wait, due_in + SCHEDULE_SLACK_S)
                days = self.config.storage.retention_days
                if days > 0 and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_INTERVAL_S
                    with self.intake.store.db.singleton("retention") as mine:
                        if mine:  # one node of a cluster prunes at a time
                            prune(self.intake.store, self.intake.spool, days)
            except Exception:  # the scheduler must outlive a transient store error
                logger.exception("Scheduler error")

    def _heartbeat(self) -> None:
        """Every third of a lease: record that this node is alive and renew the leases of
        the jobs and deliveries it holds. A store that cannot be reached is logged and tried
        again; the leases then expire and other nodes take the work over."""
        store = self.intake.store
        while not self._stop.wait(store.lease_s / 3):
            try:
                store.heartbeat()
            except StoreError as exc:
                logger.error("Heartbeat of node %s not recorded: %s", store.node, exc)

    def _classify(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    worked = self.classify.run_once()
                except Exception:
                    logger.exception("Classify stage error")
                    worked = 0
                if not worked and self._classify_wake.wait(self.poll_interval_s):
                    self._classify_wake.clear()
        finally:
            self.classify.out.put(None)  # tells the report stage that nothing more comes

    def _report(self) -> None:
        out: queue.Queue[Classified | None] = self.classify.out
        while True:
            item = out.get()
            if item is None:
                return
            try:
                if self.report.handle(item) is not None:
                    for lane in list(self.lanes.values()):
                        if lane.kind == "destination":
                            lane.wake()
            except Exception:  # e.g. the store stayed locked: the job is re-run at next start
                logger.exception("Report stage error for study %s", item.study.job.study_uid)


def build_service(
    config: Config,
    classifier: StudyClassifier,
    *,
    stop_event: threading.Event,
    poll_interval_s: float = 0.5,
    delivery_poll_interval_s: float = 1.0,
) -> Service:
    """Wire a :class:`Service` from a validated configuration and a loaded classifier.

    Opens (creating or migrating) the state store under ``storage.root``.
    """
    store = open_store(config.storage, config.node)
    spool = Spool(config.storage.root, node=store.node)
    metrics = Metrics() if config.http.enabled else None
    intake = Intake(spool, store, observer=metrics.instance_admitted if metrics else None)
    results: queue.Queue[Classified | None] = queue.Queue(maxsize=MAX_BATCH_STUDIES)
    service = Service(
        config,
        intake,
        # A study left receiving by a stop waits a whole quiet time from this start.
        Scheduler(store, config.study.completion_timeout_s, max_queued=MAX_QUEUED_JOBS,
                  quiet_since=store.now()),
        ClassifyStage(
            store, spool, classifier, results, stop_event, scope=config.scope.table(),
            captures=config.results.secondary_capture, max_batch_studies=MAX_BATCH_STUDIES,
            metrics=metrics,
        ),
        ReportStage(
            store, spool, classifier.taxonomy, classifier.algorithm,
            [d.name for d in config.destinations],
            captures=config.results.secondary_capture,
            routes={source.name: config.results_to(source.name) for source in config.sources},
        ),
        LaneBuilder(intake, poll_interval_s=delivery_poll_interval_s),
        stop_event=stop_event,
        poll_interval_s=poll_interval_s,
    )
    if metrics is not None:
        service.http = build_http_server(
            config, intake=intake, metrics=metrics, listener=service.listener_status,
            model=service.model_status, report_queue=results,
        )
    return service


def _version() -> str:
    """Ossa's version and its state store's schema, as ``ossa status`` lists each node."""
    try:
        version = importlib.metadata.version("ossa")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{version} (schema {SCHEMA_VERSION})"
