"""The state store: one embedded SQLite database, the only source of truth for state.

Every received instance, study, job, produced object and delivery is a row (see
:mod:`worker.schema`); files under the storage root hold bytes only. The database runs in
WAL mode with ``synchronous=FULL``: a committed transaction survives a crash, and readers
and the writer do not block each other (each operation has its own pooled connection).
One exception: recording a received instance (:meth:`StateStore.add_instance`) commits with
``synchronous=NORMAL``, which survives the process being killed but not the machine losing
power. The instance's durable record is its file, fsync'ed with its folder before the row
is written; a row lost with the power is registered again from that file at the next start
(:meth:`worker.intake.Intake.reconcile`), and the next FULL commit syncs the WAL, earlier
rows included. This saves the C-STORE one of its three syncs.
``ossa status`` and ``ossa retry`` open the same file from another process while the service
runs; writers wait up to ``busy_timeout_s`` for each other.

State transitions of a study::

    receiving --quiet time--> queued --claimed--> processing --> reported | failed
        ^                                                            |
        +---------------- a new (late) instance ---------------------+

A delivery (one per produced object and destination) is ``pending`` until the destination
takes it (``delivered``) or the outbox gives up (``failed``); ``ossa retry`` makes a
``failed`` delivery ``pending`` again.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from worker.schema import migrate

logger = logging.getLogger(__name__)

#: File name of the database under the storage root.
STORE_FILE = "state.sqlite3"


class StudyState(StrEnum):
    """Where a study is (see the module docstring)."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    PROCESSING = "processing"
    REPORTED = "reported"
    FAILED = "failed"


class JobState(StrEnum):
    """Where a run of the classifier over a study is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class InstanceState(StrEnum):
    """Whether an instance's file is on disk."""

    STORED = "stored"
    LOST = "lost"


class DeliveryState(StrEnum):
    """Where one object's delivery to one destination is."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class InstanceFile:
    """An instance a job reads: its SOP Instance UID and file (relative to the root)."""

    sop_uid: str
    path: str


@dataclass(frozen=True)
class ObjectRef:
    """An object Ossa produced, as another object references it (PS3.3 C.17.2.1)."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str


@dataclass(frozen=True)
class ClaimedJob:
    """A job handed to the classifier.

    Parameters
    ----------
    job_id : int
        Row id.
    study_uid, calling_aet : str
        The study, and the AE title that sent it.
    revision : int
        1 for a study's first report, n for the report after the (n-1)th late instance(s).
    instances : tuple of InstanceFile
        Every stored instance of the study when the job was created.
    predecessor : ObjectRef or None
        The SR of the previous revision, which the new SR supersedes.
    """

    job_id: int
    study_uid: str
    calling_aet: str
    revision: int
    instances: tuple[InstanceFile, ...]
    predecessor: ObjectRef | None


@dataclass(frozen=True)
class NewObject:
    """An object a job produced, written durably at ``path`` before it is recorded."""

    kind: str
    sop_uid: str
    sop_class_uid: str
    series_uid: str
    path: str


@dataclass(frozen=True)
class Delivery:
    """A pending delivery handed to a destination's worker."""

    delivery_id: int
    destination: str
    study_uid: str
    sop_uid: str
    path: str
    attempts: int
    queued_at: float


@dataclass(frozen=True)
class FailedDelivery:
    """A delivery the outbox gave up on (shown by ``ossa status``)."""

    study_uid: str
    sop_uid: str
    destination: str
    attempts: int
    last_attempt: float | None
    last_outcome: str | None
    last_detail: str | None


@dataclass(frozen=True)
class Summary:
    """Counts by state, for ``ossa status``: UIDs only, never patient data."""

    studies: dict[str, int]
    jobs: dict[str, int]
    instances: dict[str, int]
    deliveries: dict[str, dict[str, int]]
    failed: tuple[FailedDelivery, ...] = field(default=())
    next_attempts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunableStudy:
    """A finished study past retention, and the files to delete before its rows."""

    study_id: int
    study_uid: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class StudyRow:
    """A study as the status page and the API list it: UIDs, states and counts only.

    ``revision`` and ``result`` are those of its latest job (``result``: of the latest job
    that produced one, e.g. ``"ABNORMAL (p=0.87)"``); None before the first report.
    ``deliveries`` counts its objects' deliveries by state. Times are wall-clock seconds.
    """

    study_uid: str
    calling_aet: str
    state: str
    instances: int
    revision: int | None
    result: str | None
    first_received: float
    last_received: float
    updated: float
    deliveries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRow:
    """One run of the classifier over a study."""

    revision: int
    state: str
    created: float
    started: float | None
    finished: float | None
    error: str | None
    result: str | None


@dataclass(frozen=True)
class ObjectRow:
    """An object a job of the study produced (``kind``: ``sr`` or ``sc``)."""

    kind: str
    sop_uid: str
    sop_class_uid: str
    series_uid: str
    revision: int
    created: float


@dataclass(frozen=True)
class DeliveryRow:
    """One object's delivery to one destination."""

    destination: str
    sop_uid: str
    kind: str
    state: str
    attempts: int
    queued_at: float
    next_attempt: float
    last_attempt: float | None
    last_outcome: str | None
    last_detail: str | None


@dataclass(frozen=True)
class StudyDetail:
    """A study (as one calling AE title sent it) with its jobs, objects and deliveries."""

    study: StudyRow
    jobs: tuple[JobRow, ...]
    objects: tuple[ObjectRow, ...]
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True)
class DestinationStats:
    """A destination's deliveries: counts by state and by last outcome, the oldest pending
    one (when it was queued) and the latest attempt."""

    destination: str
    states: dict[str, int]
    outcomes: dict[str, int]
    oldest_pending: float | None
    last_attempt: float | None
    last_outcome: str | None
    last_detail: str | None


class StateStore:
    """The SQLite state store under the storage root.

    Parameters
    ----------
    path : pathlib.Path
        The database file (created, with its schema, if missing).
    clock : callable, optional
        Wall-clock seconds (``time.time``); times are stored as such so that they survive a
        restart. Injectable for tests.
    busy_timeout_s : float, optional
        How long a write waits for another writer (another thread or process).

    Raises
    ------
    worker.schema.SchemaError
        If the database was written by a newer Ossa.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 30.0,
    ) -> None:
        if busy_timeout_s <= 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self.path = path
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        try:
            migrate(connection)
        except BaseException:
            connection.close()
            raise
        self._pool.put(connection)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool, for one operation of one thread.

        Each operation has a connection of its own, so a thread waiting for the write lock
        (held by another process, e.g. ``ossa retry``, or by another thread) never blocks
        the readers; SQLite serialises the writers. The pool grows to the number of
        operations that ran at once and its connections are reused.
        """
        try:
            connection = self._pool.get_nowait()
        except queue.Empty:
            connection = self._connect()
        try:
            yield connection
        finally:
            if self._closed:
                connection.close()
            else:
                self._pool.put(connection)

    @classmethod
    def in_root(cls, root: Path, *, clock: Callable[[], float] = time.time) -> StateStore:
        """The store of a storage root (``<root>/state.sqlite3``)."""
        return cls(root / STORE_FILE, clock=clock)

    def close(self) -> None:
        """Close the connections (one still in use is closed when its operation ends)."""
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> float:
        """The store's clock."""
        return self._clock()

    @contextmanager
    def _tx(self, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: waits up to ``busy_timeout_s`` for
        another writer, in this process or another); without ``sync``, committed with
        ``synchronous=NORMAL`` (durable when the process dies, not when the power fails).

        A COMMIT that fails (``SQLITE_FULL`` when the disk is full: in WAL mode the pages
        are written at COMMIT) leaves SQLite's transaction open; it is rolled back here, or
        the pooled connection would keep the write lock and wedge every later writer.
        """
        with self._connection() as db:
            if not sync:
                db.execute("PRAGMA synchronous = NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            finally:
                if not sync:
                    db.execute("PRAGMA synchronous = FULL")

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._connection() as db:
            return list(db.execute(sql, params).fetchall())

    # --- intake -------------------------------------------------------------------------

    def add_instance(
        self,
        *,
        calling_aet: str,
        study_uid: str,
        sop_uid: str,
        sop_class_uid: str,
        series_uid: str,
        path: str,
        size: int,
        received: float | None = None,
    ) -> bool:
        """Record a durably written instance; return whether it is new to its study.

        A re-sent instance (its SOP Instance UID already stored for the study) is not new:
        its row is refreshed and nothing is re-run; one whose file had been lost counts as
        new again. A new instance restarts the study's
        quiet time; for a study already reported it starts a new revision, and for a study
        whose job has not started yet it cancels that job, so the instance joins it.

        Committed without a sync of its own (see the module's notes): the instance's file
        is its durable record.
        """
        now = self._clock() if received is None else received
        with self._tx(sync=False) as db:
            row = db.execute(
                "SELECT id, state FROM studies WHERE calling_aet = ? AND study_uid = ?",
                (calling_aet, study_uid),
            ).fetchone()
            if row is None:
                study_id = db.execute(
                    "INSERT INTO studies (calling_aet, study_uid, state, first_received,"
                    " last_received, updated) VALUES (?, ?, ?, ?, ?, ?)",
                    (calling_aet, study_uid, StudyState.RECEIVING, now, now, now),
                ).lastrowid
                state = StudyState.RECEIVING
            else:
                study_id, state = int(row[0]), StudyState(row[1])
            existing = db.execute(
                "SELECT id, state FROM instances WHERE study_id = ? AND sop_uid = ?",
                (study_id, sop_uid),
            ).fetchone()
            if existing is not None and existing[1] == InstanceState.STORED:
                db.execute(
                    "UPDATE instances SET path = ?, size = ? WHERE id = ?",
                    (path, size, existing[0]),
                )
                return False
            if existing is not None:  # its file was lost: the re-sent copy is reported anew
                db.execute(
                    "UPDATE instances SET path = ?, size = ?, state = ?, received = ?,"
                    " job_id = NULL WHERE id = ?",
                    (path, size, InstanceState.STORED, now, existing[0]),
                )
            else:
                db.execute(
                    "INSERT INTO instances (study_id, sop_uid, sop_class_uid, series_uid, path,"
                    " size, received) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (study_id, sop_uid, sop_class_uid, series_uid, path, size, now),
                )
            if state is StudyState.QUEUED:
                db.execute(
                    "DELETE FROM jobs WHERE study_id = ? AND state = ?", (study_id, JobState.QUEUED)
                )
            if state in (StudyState.QUEUED, StudyState.REPORTED, StudyState.FAILED):
                state = StudyState.RECEIVING
            db.execute(
                "UPDATE studies SET last_received = MAX(last_received, ?), updated = ?, state = ?"
                " WHERE id = ?",
                (now, now, state, study_id),
            )
            return True

    def is_own_object(self, sop_uid: str, series_uid: str) -> bool:
        """Whether an object is one Ossa produced (by SOP Instance UID or its series)."""
        return bool(
            self._read(
                "SELECT 1 FROM objects WHERE sop_uid = ? OR series_uid = ? LIMIT 1",
                (sop_uid, series_uid),
            )
        )

    def instance_paths(self) -> set[str]:
        """Paths of every instance row."""
        return {str(r[0]) for r in self._read("SELECT path FROM instances")}

    def stored_files(self) -> list[tuple[str, str]]:
        """``(path, kind)`` of every row that should have a file: instances and objects."""
        rows = self._read(
            "SELECT path, 'instance' FROM instances WHERE state = ?"
            " UNION ALL SELECT path, kind FROM objects",
            (InstanceState.STORED,),
        )
        return [(str(p), str(k)) for p, k in rows]

    def mark_lost(self, path: str) -> None:
        """Record that an instance's file is missing; it is left out of later jobs."""
        with self._tx() as db:
            db.execute(
                "UPDATE instances SET state = ? WHERE path = ?", (InstanceState.LOST, path)
            )

    # --- scheduling -----------------------------------------------------------------------

    def next_due(self, completion_timeout_s: float, *, quiet_since: float = 0.0) -> float | None:
        """When the quietest receiving study becomes due (store clock), or None if none is
        receiving; the scheduler sleeps until then rather than polling blindly. The quiet
        time counts from ``quiet_since`` at the earliest (see :meth:`schedule_due`)."""
        row = self._read(
            "SELECT MIN(MAX(last_received, ?)) FROM studies WHERE state = ?",
            (quiet_since, StudyState.RECEIVING),
        )
        return None if row[0][0] is None else float(row[0][0]) + completion_timeout_s

    def schedule_due(
        self, completion_timeout_s: float, *, max_queued: int, quiet_since: float = 0.0
    ) -> int:
        """Queue a job for each study quiet for ``completion_timeout_s``; return how many.

        At most ``max_queued`` jobs wait at a time (back-pressure: the other studies stay
        ``receiving`` on disk until the classifier catches up). The quiet time counts from
        ``quiet_since`` at the earliest: the service passes its start, so that a study that
        was receiving when the service stopped (or died) waits a whole quiet time after the
        restart, for its senders to re-send what the outage interrupted, rather than being
        reported at once without it.
        """
        now = self._clock()
        with self._tx() as db:
            waiting = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED,)
            ).fetchone()[0]
            room = max_queued - int(waiting)
            if room <= 0:
                return 0
            due = db.execute(
                "SELECT id FROM studies WHERE state = ? AND MAX(last_received, ?) <= ?"
                " ORDER BY last_received LIMIT ?",
                (StudyState.RECEIVING, quiet_since, now - completion_timeout_s, room),
            ).fetchall()
            for (study_id,) in due:
                revision = 1 + int(
                    db.execute(
                        "SELECT COALESCE(MAX(revision), 0) FROM jobs WHERE study_id = ?",
                        (study_id,),
                    ).fetchone()[0]
                )
                job_id = db.execute(
                    "INSERT INTO jobs (study_id, revision, state, created) VALUES (?, ?, ?, ?)",
                    (study_id, revision, JobState.QUEUED, now),
                ).lastrowid
                db.execute(
                    "INSERT INTO job_instances (job_id, instance_id) SELECT ?, id FROM instances"
                    " WHERE study_id = ? AND state = ?",
                    (job_id, study_id, InstanceState.STORED),
                )
                db.execute(
                    "UPDATE instances SET job_id = ? WHERE study_id = ? AND job_id IS NULL",
                    (job_id, study_id),
                )
                db.execute(
                    "UPDATE studies SET state = ?, updated = ? WHERE id = ?",
                    (StudyState.QUEUED, now, study_id),
                )
            return len(due)

    def requeue_interrupted(self) -> int:
        """At start-up: jobs left ``running`` by a stop or a crash are queued again."""
        with self._tx() as db:
            count = db.execute(
                "UPDATE jobs SET state = ?, started = NULL WHERE state = ?",
                (JobState.QUEUED, JobState.RUNNING),
            ).rowcount
            db.execute(
                "UPDATE studies SET state = ? WHERE state = ?",
                (StudyState.QUEUED, StudyState.PROCESSING),
            )
            return int(count)

    def claim_jobs(self, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` queued jobs running, oldest first, and return them."""
        now = self._clock()
        claimed = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT j.id, j.study_id, j.revision, s.study_uid, s.calling_aet FROM jobs j"
                " JOIN studies s ON s.id = j.study_id WHERE j.state = ? ORDER BY j.id LIMIT ?",
                (JobState.QUEUED, limit),
            ).fetchall()
            for job_id, study_id, revision, study_uid, calling_aet in rows:
                db.execute(
                    "UPDATE jobs SET state = ?, started = ? WHERE id = ?",
                    (JobState.RUNNING, now, job_id),
                )
                db.execute(
                    "UPDATE studies SET state = ?, updated = ? WHERE id = ?",
                    (StudyState.PROCESSING, now, study_id),
                )
                files = db.execute(
                    "SELECT i.sop_uid, i.path FROM job_instances ji JOIN instances i"
                    " ON i.id = ji.instance_id WHERE ji.job_id = ? AND i.state = ?"
                    " ORDER BY i.sop_uid",
                    (job_id, InstanceState.STORED),
                ).fetchall()
                previous = db.execute(
                    "SELECT o.series_uid, o.sop_class_uid, o.sop_uid FROM objects o"
                    " JOIN jobs j ON j.id = o.job_id WHERE o.study_id = ? AND o.kind = 'sr'"
                    " AND j.revision < ? ORDER BY j.revision DESC LIMIT 1",
                    (study_id, revision),
                ).fetchone()
                claimed.append(
                    ClaimedJob(
                        job_id=int(job_id),
                        study_uid=str(study_uid),
                        calling_aet=str(calling_aet),
                        revision=int(revision),
                        instances=tuple(InstanceFile(str(u), str(p)) for u, p in files),
                        predecessor=None
                        if previous is None
                        else ObjectRef(str(study_uid), *(str(v) for v in previous)),
                    )
                )
        return claimed

    def finish_job(
        self,
        job_id: int,
        *,
        objects: Sequence[NewObject] = (),
        destinations: Sequence[str] = (),
        error: str | None = None,
        result: str | None = None,
    ) -> None:
        """Record a job's outcome, its objects and one pending delivery per destination.

        One transaction: after a crash either all of it is recorded or the job runs again
        (and, its UIDs being derived from its inputs, produces the same objects). ``result``
        is the study's short verdict (``"ABNORMAL (p=0.87)"``), shown by the status page;
        never patient data.
        """
        now = self._clock()
        with self._tx() as db:
            (study_id,) = db.execute("SELECT study_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            for obj in objects:
                db.execute(
                    "INSERT OR IGNORE INTO objects (job_id, study_id, kind, sop_uid, sop_class_uid,"
                    " series_uid, path, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, study_id, obj.kind, obj.sop_uid, obj.sop_class_uid, obj.series_uid,
                     obj.path, now),
                )
                (object_id,) = db.execute(
                    "SELECT id FROM objects WHERE sop_uid = ?", (obj.sop_uid,)
                ).fetchone()
                for destination in destinations:
                    db.execute(
                        "INSERT OR IGNORE INTO deliveries (object_id, destination, state,"
                        " queued_at, next_attempt) VALUES (?, ?, ?, ?, ?)",
                        (object_id, destination, DeliveryState.PENDING, now, now),
                    )
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, result = ? WHERE id = ?",
                (JobState.FAILED if error else JobState.DONE, now, error,
                 None if result is None else result[:200], job_id),
            )
            late = db.execute(
                "SELECT 1 FROM instances WHERE study_id = ? AND job_id IS NULL AND state = ?"
                " LIMIT 1",
                (study_id, InstanceState.STORED),
            ).fetchone()
            if late:
                state = StudyState.RECEIVING
            else:
                state = StudyState.FAILED if error else StudyState.REPORTED
            db.execute(
                "UPDATE studies SET state = ?, updated = ? WHERE id = ?", (state, now, study_id)
            )

    # --- outbox ---------------------------------------------------------------------------

    def due_delivery(self, destination: str) -> Delivery | None:
        """The pending delivery to ``destination`` whose next attempt is due, oldest first."""
        rows = self._read(
            "SELECT d.id, d.destination, s.study_uid, o.sop_uid, o.path, d.attempts, d.queued_at"
            " FROM deliveries d JOIN objects o ON o.id = d.object_id"
            " JOIN studies s ON s.id = o.study_id"
            " WHERE d.destination = ? AND d.state = ? AND d.next_attempt <= ?"
            " ORDER BY d.next_attempt, d.id LIMIT 1",
            (destination, DeliveryState.PENDING, self._clock()),
        )
        if not rows:
            return None
        i, dest, study, sop, path, attempts, queued = rows[0]
        return Delivery(int(i), str(dest), str(study), str(sop), str(path), int(attempts),
                        float(queued))

    def next_attempt(self, destination: str) -> float | None:
        """When the next pending delivery to ``destination`` is due, or None."""
        value = self._read(
            "SELECT MIN(next_attempt) FROM deliveries WHERE destination = ? AND state = ?",
            (destination, DeliveryState.PENDING),
        )[0][0]
        return None if value is None else float(value)

    def record_attempt(
        self,
        delivery_id: int,
        *,
        state: DeliveryState,
        outcome: str,
        detail: str,
        next_attempt: float | None = None,
    ) -> None:
        """Record one attempt: ``delivered``, ``failed``, or ``pending`` until ``next_attempt``."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt = ?, state = ?,"
                " last_outcome = ?, last_detail = ?, next_attempt = COALESCE(?, next_attempt)"
                " WHERE id = ? AND state = ?",
                (now, state, outcome, detail[:500], next_attempt, delivery_id,
                 DeliveryState.PENDING),
            )

    def retry(
        self,
        *,
        study_uid: str | None = None,
        destination: str | None = None,
        all_failed: bool = False,
    ) -> int:
        """Re-queue failed deliveries (and make pending ones of the selection due now).

        Parameters
        ----------
        study_uid, destination : str, optional
            Select the deliveries of one study, or to one destination (both: both).
        all_failed : bool
            Select every failed delivery.

        Returns
        -------
        int
            How many deliveries were re-queued or made due.
        """
        if not (study_uid or destination or all_failed):
            raise ValueError("retry needs study_uid, destination or all_failed")
        now = self._clock()
        where = ["1 = 1"]
        params: list[object] = []
        if study_uid:
            where.append(
                "object_id IN (SELECT o.id FROM objects o JOIN studies s ON s.id = o.study_id"
                " WHERE s.study_uid = ?)"
            )
            params.append(study_uid)
        if destination:
            where.append("destination = ?")
            params.append(destination)
        states = [DeliveryState.FAILED] if all_failed and not (study_uid or destination) else [
            DeliveryState.FAILED, DeliveryState.PENDING]
        where.append(f"state IN ({', '.join('?' * len(states))})")
        params.extend(states)
        with self._tx() as db:
            return int(
                db.execute(
                    "UPDATE deliveries SET state = ?, next_attempt = ?,"
                    " queued_at = CASE WHEN state = ? THEN ? ELSE queued_at END"
                    f" WHERE {' AND '.join(where)}",
                    (DeliveryState.PENDING, now, DeliveryState.FAILED, now, *params),
                ).rowcount
            )

    # --- status and retention -------------------------------------------------------------

    def summary(self) -> Summary:
        """Counts of studies, jobs, instances and deliveries by state; failed deliveries."""
        studies = {str(s): int(n) for s, n in self._read(
            "SELECT state, COUNT(*) FROM studies GROUP BY state")}
        jobs = {str(s): int(n) for s, n in self._read(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        instances = {str(s): int(n) for s, n in self._read(
            "SELECT state, COUNT(*) FROM instances GROUP BY state")}
        deliveries: dict[str, dict[str, int]] = {}
        for dest, state, n in self._read(
            "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"
        ):
            deliveries.setdefault(str(dest), {})[str(state)] = int(n)
        next_attempts = {
            str(dest): float(t)
            for dest, t in self._read(
                "SELECT destination, MIN(next_attempt) FROM deliveries WHERE state = ?"
                " GROUP BY destination",
                (DeliveryState.PENDING,),
            )
        }
        failed = tuple(
            FailedDelivery(str(study), str(sop), str(dest), int(attempts),
                           None if last is None else float(last),
                           None if outcome is None else str(outcome),
                           None if detail is None else str(detail))
            for study, sop, dest, attempts, last, outcome, detail in self._read(
                "SELECT s.study_uid, o.sop_uid, d.destination, d.attempts, d.last_attempt,"
                " d.last_outcome, d.last_detail FROM deliveries d"
                " JOIN objects o ON o.id = d.object_id JOIN studies s ON s.id = o.study_id"
                " WHERE d.state = ? ORDER BY d.last_attempt",
                (DeliveryState.FAILED,),
            )
        )
        return Summary(studies, jobs, instances, deliveries, failed, next_attempts)

    def ping(self) -> None:
        """Run a trivial query (the health check).

        Raises
        ------
        sqlite3.Error
            If the store is closed or the query fails.
        """
        if self._closed:
            raise sqlite3.ProgrammingError("the state store is closed")
        self._read("SELECT 1 FROM studies LIMIT 1")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: its queries see one consistent state of the database."""
        with self._connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    _STUDY_COLUMNS = (
        "SELECT s.id, s.study_uid, s.calling_aet, s.state, s.first_received, s.last_received,"
        " s.updated,"
        " (SELECT COUNT(*) FROM instances i WHERE i.study_id = s.id AND i.state = 'stored'),"
        " (SELECT MAX(j.revision) FROM jobs j WHERE j.study_id = s.id),"
        " (SELECT j.result FROM jobs j WHERE j.study_id = s.id AND j.result IS NOT NULL"
        "  ORDER BY j.revision DESC LIMIT 1)"
        " FROM studies s"
    )

    @staticmethod
    def _study_rows(db: sqlite3.Connection, rows: list[Any]) -> list[tuple[int, StudyRow]]:
        """``(study id, StudyRow)`` of :attr:`_STUDY_COLUMNS` rows, with delivery counts."""
        ids = [int(r[0]) for r in rows]
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        if ids:
            for study_id, state, n in db.execute(
                "SELECT o.study_id, d.state, COUNT(*) FROM deliveries d"
                " JOIN objects o ON o.id = d.object_id"
                f" WHERE o.study_id IN ({', '.join('?' * len(ids))})"
                " GROUP BY o.study_id, d.state",
                ids,
            ):
                counts[int(study_id)][str(state)] = int(n)
        return [
            (int(i), StudyRow(
                study_uid=str(uid), calling_aet=str(aet), state=str(state),
                instances=int(instances), revision=None if revision is None else int(revision),
                result=None if result is None else str(result), first_received=float(first),
                last_received=float(last), updated=float(updated), deliveries=counts[int(i)],
            ))
            for i, uid, aet, state, first, last, updated, instances, revision, result in rows
        ]

    def count_studies(self, state: str | None = None) -> int:
        """How many studies there are (in ``state``, when given)."""
        if state is None:
            return int(self._read("SELECT COUNT(*) FROM studies")[0][0])
        return int(self._read("SELECT COUNT(*) FROM studies WHERE state = ?", (state,))[0][0])

    def list_studies(
        self, *, limit: int = 50, offset: int = 0, state: str | None = None
    ) -> list[StudyRow]:
        """Studies, most recently received first (``state``: only those in it).

        Parameters
        ----------
        limit, offset : int
            Paging: at most ``limit`` studies, after skipping ``offset``.
        state : str, optional
            One of :class:`StudyState`.
        """
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got {limit!r}, {offset!r}")
        where, params = ("", []) if state is None else (" WHERE s.state = ?", [state])
        with self._snapshot() as db:
            rows = db.execute(
                f"{self._STUDY_COLUMNS}{where}"
                " ORDER BY s.last_received DESC, s.id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return [row for _, row in self._study_rows(db, rows)]

    def study_detail(self, study_uid: str) -> list[StudyDetail]:
        """A study's state, jobs, objects and deliveries; one entry per calling AE title
        that sent it (Ossa assembles and reports a study per sender); [] if unknown."""
        details = []
        with self._snapshot() as db:
            rows = db.execute(
                f"{self._STUDY_COLUMNS} WHERE s.study_uid = ? ORDER BY s.calling_aet",
                (study_uid,),
            ).fetchall()
            for study_id, row in self._study_rows(db, rows):
                jobs = tuple(
                    JobRow(int(rev), str(state), float(created), _opt_float(started),
                           _opt_float(finished), _opt_str(error), _opt_str(result))
                    for rev, state, created, started, finished, error, result in db.execute(
                        "SELECT revision, state, created, started, finished, error, result"
                        " FROM jobs WHERE study_id = ? ORDER BY revision",
                        (study_id,),
                    )
                )
                objects = tuple(
                    ObjectRow(str(kind), str(sop), str(cls), str(series), int(rev),
                              float(created))
                    for kind, sop, cls, series, rev, created in db.execute(
                        "SELECT o.kind, o.sop_uid, o.sop_class_uid, o.series_uid, j.revision,"
                        " o.created FROM objects o JOIN jobs j ON j.id = o.job_id"
                        " WHERE o.study_id = ? ORDER BY j.revision, o.kind DESC, o.sop_uid",
                        (study_id,),
                    )
                )
                deliveries = tuple(
                    DeliveryRow(str(dest), str(sop), str(kind), str(state), int(attempts),
                                float(queued), float(next_at), _opt_float(last),
                                _opt_str(outcome), _opt_str(detail))
                    for dest, sop, kind, state, attempts, queued, next_at, last, outcome, detail
                    in db.execute(
                        "SELECT d.destination, o.sop_uid, o.kind, d.state, d.attempts,"
                        " d.queued_at, d.next_attempt, d.last_attempt, d.last_outcome,"
                        " d.last_detail FROM deliveries d JOIN objects o ON o.id = d.object_id"
                        " WHERE o.study_id = ? ORDER BY d.destination, o.kind DESC, o.sop_uid",
                        (study_id,),
                    )
                )
                details.append(StudyDetail(row, jobs, objects, deliveries))
        return details

    def delivery_stats(self) -> list[DestinationStats]:
        """Per destination that has deliveries: counts by state and by last outcome, the
        oldest pending delivery's queued time and the latest attempt, by name."""
        stats: dict[str, dict[str, Any]] = {}

        def entry(name: object) -> dict[str, Any]:
            return stats.setdefault(str(name), {
                "states": {}, "outcomes": {}, "oldest_pending": None, "last_attempt": None,
                "last_outcome": None, "last_detail": None,
            })

        with self._snapshot() as db:
            for dest, state, n in db.execute(
                "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY 1, 2"
            ):
                entry(dest)["states"][str(state)] = int(n)
            for dest, outcome, n in db.execute(
                "SELECT destination, last_outcome, COUNT(*) FROM deliveries"
                " WHERE last_outcome IS NOT NULL GROUP BY 1, 2"
            ):
                entry(dest)["outcomes"][str(outcome)] = int(n)
            for dest, oldest in db.execute(
                "SELECT destination, MIN(queued_at) FROM deliveries WHERE state = ?"
                " GROUP BY 1",
                (DeliveryState.PENDING,),
            ):
                entry(dest)["oldest_pending"] = float(oldest)
            # SQLite takes the bare columns of a MAX() aggregate from the row holding the max.
            for dest, last, outcome, detail in db.execute(
                "SELECT destination, MAX(last_attempt), last_outcome, last_detail"
                " FROM deliveries WHERE last_attempt IS NOT NULL GROUP BY destination"
            ):
                entry(dest).update(last_attempt=float(last), last_outcome=_opt_str(outcome),
                                   last_detail=_opt_str(detail))
        return [DestinationStats(name, **values) for name, values in sorted(stats.items())]

    def stored_bytes(self) -> int:
        """Total size of the instances whose files are in the spool."""
        return int(self._read(
            "SELECT COALESCE(SUM(size), 0) FROM instances WHERE state = ?",
            (InstanceState.STORED,),
        )[0][0])

    def prunable(self, older_than: float) -> list[PrunableStudy]:
        """Finished studies (reported or failed, nothing pending) last changed before
        ``older_than``, with every file of theirs."""
        rows = self._read(
            "SELECT s.id, s.study_uid FROM studies s WHERE s.state IN (?, ?) AND s.updated < ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN objects o ON o.id = d.object_id"
            " WHERE o.study_id = s.id AND d.state = ?)",
            (StudyState.REPORTED, StudyState.FAILED, older_than, DeliveryState.PENDING),
        )
        studies = []
        for study_id, study_uid in rows:
            paths = self._read(
                "SELECT path FROM instances WHERE study_id = ?"
                " UNION ALL SELECT path FROM objects WHERE study_id = ?",
                (study_id, study_id),
            )
            studies.append(PrunableStudy(int(study_id), str(study_uid),
                                         tuple(str(p[0]) for p in paths)))
        return studies

    def delete_study(self, study_id: int) -> None:
        """Delete a study's rows (its files are deleted first, by the caller)."""
        with self._tx() as db:
            db.execute("DELETE FROM studies WHERE id = ?", (study_id,))


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the connection's transaction, if one is still open.

    Some errors (``SQLITE_FULL``, ``SQLITE_IOERR``) may already have rolled it back, and
    ``ROLLBACK`` then fails: that failure must not hide the error being raised.
    """
    if not db.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.warning("Rollback failed: %s", exc)
