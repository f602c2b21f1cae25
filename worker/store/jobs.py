"""The pipeline's queries: studies becoming jobs, jobs claimed under a lease and finished with
their objects, and the nodes that hold them.

Leases. A claimed job belongs to one node (``owner``) until ``lease_until``, on the store's
clock; the node's heartbeat renews the leases of what it holds while the work runs. Any node
claims a queued job, or a running one whose lease expired (its node died or stalled), and
the claim counts one more ``attempt``. Finishing a job checks owner and attempt (fencing):
a node that wakes after its lease was taken over records nothing, and the node that took
over reports the study (its objects' UIDs derive from the job's inputs, so both would have
written the same objects). On PostgreSQL the claim skips rows another node is claiming
(``FOR UPDATE SKIP LOCKED``); on SQLite one node holds the whole database while it claims.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from worker.store.core import Queries, StoreError
from worker.store.states import (
    DeliveryState,
    InstanceState,
    JobState,
    RetrievalState,
    StudyState,
)

logger = logging.getLogger(__name__)


class LeaseLostError(StoreError):
    """A job's lease passed to another node (or the job was re-queued) before it finished:
    nothing of the finish was recorded."""


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
    attempt : int
        How many times the job has been claimed (this claim included): the fencing token
        :meth:`JobQueries.finish_job` checks.
    source : str or None
        The source the study was retrieved from (its results go to that source's
        ``results_to``); None for a study sent to Ossa.
    """

    job_id: int
    study_uid: str
    calling_aet: str
    revision: int
    instances: tuple[InstanceFile, ...]
    predecessor: ObjectRef | None
    attempt: int = 1
    source: str | None = None


@dataclass(frozen=True)
class NewObject:
    """An object a job produced, written durably at ``path`` before it is recorded."""

    kind: str
    sop_uid: str
    sop_class_uid: str
    series_uid: str
    path: str


class JobQueries(Queries):
    """What the scheduler, the classify stage and the report stage ask of the store."""

    def now(self) -> float:
        """The store's clock (the database server's on PostgreSQL)."""
        return self.db.now()

    def next_due(self, completion_timeout_s: float, *, quiet_since: float = 0.0) -> float | None:
        """When the quietest receiving study becomes due (store clock), or None if none is
        receiving; the scheduler sleeps until then rather than polling blindly. The quiet
        time counts from ``quiet_since`` at the earliest (see :meth:`schedule_due`)."""
        row = self.db.read(
            f"SELECT MIN({self.db.greatest('last_received', '?')}) FROM studies"
            " WHERE state = ?",
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
        reported at once without it. Every node schedules; a study one node is queueing (or
        receiving an instance of) is skipped by the others. A study retrieved from a source
        waits while its retrieval is pending (retrying after a failure part-way), so that it
        is reported once, whole (a study not yet named a source's waits for any pending
        retrieval of its UID: a C-MOVE's).
        """
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            waiting = tx.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED,)
            ).fetchone()[0]
            room = max_queued - int(waiting)
            if room <= 0:
                return 0
            # a study still being retrieved waits for the retrieval: one from its source, or
            # for a study of no source yet (a C-MOVE's instances come from the PACS's own AE
            # title, and are named the source's when the move ends) any of its UID
            due = tx.execute(
                f"SELECT id FROM studies WHERE state = ? AND"
                f" {db.greatest('last_received', '?')} <= ?"
                " AND NOT EXISTS (SELECT 1 FROM retrievals r WHERE r.study_uid ="
                " studies.study_uid AND r.state = ? AND (r.source = studies.source"
                " OR studies.source IS NULL))"
                " ORDER BY last_received LIMIT ?" + db.lock_rows(skip_locked=True),
                (StudyState.RECEIVING, quiet_since, now - completion_timeout_s,
                 RetrievalState.PENDING, room),
            ).fetchall()
            for (study_id,) in due:
                revision = 1 + int(
                    tx.execute(
                        "SELECT COALESCE(MAX(revision), 0) FROM jobs WHERE study_id = ?",
                        (study_id,),
                    ).fetchone()[0]
                )
                (job_id,) = tx.execute(
                    "INSERT INTO jobs (study_id, revision, state, created) VALUES (?, ?, ?, ?)"
                    " RETURNING id",
                    (study_id, revision, JobState.QUEUED, now),
                ).fetchone()
                tx.execute(
                    "INSERT INTO job_instances (job_id, instance_id) SELECT ?, id FROM instances"
                    " WHERE study_id = ? AND state = ?",
                    (job_id, study_id, InstanceState.STORED),
                )
                tx.execute(
                    "UPDATE instances SET job_id = ? WHERE study_id = ? AND job_id IS NULL",
                    (job_id, study_id),
                )
                tx.execute(
                    "UPDATE studies SET state = ?, updated = ? WHERE id = ?",
                    (StudyState.QUEUED, now, study_id),
                )
            return len(due)

    def requeue_interrupted(self) -> int:
        """At start-up: the jobs this node left ``running`` (it stopped or crashed) are queued
        again, and its deliveries in flight released; what other nodes hold is theirs (a
        dead node's work is taken over when its leases expire). A job without an owner (a
        store written before leases) counts as this node's."""
        with self.db.tx() as tx:
            count = tx.execute(
                "UPDATE jobs SET state = ?, started = NULL, owner = NULL, lease_until = NULL"
                " WHERE state = ? AND (owner = ? OR owner IS NULL)",
                (JobState.QUEUED, JobState.RUNNING, self.node),
            ).rowcount
            tx.execute(
                "UPDATE studies SET state = ? WHERE state = ? AND NOT EXISTS"
                " (SELECT 1 FROM jobs j WHERE j.study_id = studies.id AND j.state = ?)",
                (StudyState.QUEUED, StudyState.PROCESSING, JobState.RUNNING),
            )
            for table in ("deliveries", "retrievals"):
                tx.execute(
                    f"UPDATE {table} SET owner = NULL, lease_until = NULL WHERE owner = ?",
                    (self.node,),
                )
            tx.execute("UPDATE sources SET polled_by = NULL, poll_until = NULL"
                       " WHERE polled_by = ?", (self.node,))
            return int(count)

    def claim_jobs(self, limit: int) -> list[ClaimedJob]:
        """Lease up to ``limit`` jobs to this node, oldest first, and return them: queued
        jobs, and running ones whose lease expired (taken over from a node that died)."""
        db = self.db
        claimed = []
        with db.tx() as tx:
            now = db.now(tx)
            rows = tx.execute(
                "SELECT j.id, j.study_id, j.revision, j.attempt, j.owner, s.study_uid,"
                " s.calling_aet, s.source FROM jobs j JOIN studies s ON s.id = j.study_id"
                " WHERE j.state = ? OR (j.state = ? AND j.lease_until < ?)"
                " ORDER BY j.id LIMIT ?" + db.lock_rows("j", skip_locked=True),
                (JobState.QUEUED, JobState.RUNNING, now, limit),
            ).fetchall()
            for job_id, study_id, revision, attempt, owner, study_uid, calling_aet, source in rows:
                if owner is not None and owner != self.node:
                    logger.warning("Job %s of study %s: the lease of node %s expired; taken over",
                                   job_id, study_uid, owner)
                tx.execute(
                    "UPDATE jobs SET state = ?, started = ?, owner = ?, lease_until = ?,"
                    " attempt = ? WHERE id = ?",
                    (JobState.RUNNING, now, self.node, now + self.lease_s, int(attempt) + 1,
                     job_id),
                )
                tx.execute(
                    "UPDATE studies SET state = ?, updated = ? WHERE id = ?",
                    (StudyState.PROCESSING, now, study_id),
                )
                files = tx.execute(
                    "SELECT i.sop_uid, i.path FROM job_instances ji JOIN instances i"
                    " ON i.id = ji.instance_id WHERE ji.job_id = ? AND i.state = ?"
                    " ORDER BY i.sop_uid",
                    (job_id, InstanceState.STORED),
                ).fetchall()
                previous = tx.execute(
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
                        attempt=int(attempt) + 1,
                        source=None if source is None else str(source),
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
        attempt: int | None = None,
    ) -> None:
        """Record a job's outcome, its objects and one pending delivery per destination.

        One transaction: after a crash either all of it is recorded or the job runs again
        (and, its UIDs being derived from its inputs, produces the same objects). ``result``
        is the study's short verdict (``"ABNORMAL (p=0.87)"``), shown by the status page;
        never patient data.

        Parameters
        ----------
        attempt : int, optional
            The claim's :attr:`ClaimedJob.attempt`. Given, the job must still be running
            under this node's lease with that attempt, or :class:`LeaseLostError` is raised and
            nothing is recorded.
        """
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            row = tx.execute(
                "SELECT study_id, state, owner, attempt FROM jobs WHERE id = ?" + db.lock_rows(),
                (job_id,),
            ).fetchone()
            if row is None:
                raise LeaseLostError(f"job {job_id} no longer exists")
            study_id, state, owner, current = row
            if attempt is not None and (state != JobState.RUNNING or owner != self.node
                                        or int(current) != attempt):
                raise LeaseLostError(
                    f"job {job_id} (attempt {attempt}) is no longer this node's: it is "
                    f"{state}, attempt {current}, held by {owner or 'no node'}"
                )
            for obj in objects:
                tx.execute(
                    "INSERT INTO objects (job_id, study_id, kind, sop_uid, sop_class_uid,"
                    " series_uid, path, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (sop_uid) DO NOTHING",
                    (job_id, study_id, obj.kind, obj.sop_uid, obj.sop_class_uid, obj.series_uid,
                     obj.path, now),
                )
                (object_id,) = tx.execute(
                    "SELECT id FROM objects WHERE sop_uid = ?", (obj.sop_uid,)
                ).fetchone()
                for destination in destinations:
                    tx.execute(
                        "INSERT INTO deliveries (object_id, destination, state,"
                        " queued_at, next_attempt) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (object_id, destination) DO NOTHING",
                        (object_id, destination, DeliveryState.PENDING, now, now),
                    )
            tx.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, result = ?,"
                " lease_until = NULL WHERE id = ?",
                (JobState.FAILED if error else JobState.DONE, now, error,
                 None if result is None else result[:200], job_id),
            )
            late = tx.execute(
                "SELECT 1 FROM instances WHERE study_id = ? AND job_id IS NULL AND state = ?"
                " LIMIT 1",
                (study_id, InstanceState.STORED),
            ).fetchone()
            if late:
                state = StudyState.RECEIVING
            else:
                state = StudyState.FAILED if error else StudyState.REPORTED
            tx.execute(
                "UPDATE studies SET state = ?, updated = ? WHERE id = ?", (state, now, study_id)
            )

    # --- nodes ----------------------------------------------------------------------------

    def register_node(self, *, host: str, pid: int, version: str) -> None:
        """Record this node's start (its row is created or replaced)."""
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            tx.execute(
                "INSERT INTO nodes (name, host, pid, version, started, heartbeat)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " host = excluded.host, pid = excluded.pid, version = excluded.version,"
                " started = excluded.started, heartbeat = excluded.heartbeat",
                (self.node, host, pid, version, now, now),
            )

    def heartbeat(self) -> int:
        """Record that this node is alive and renew the leases of what it holds (its running
        jobs and the deliveries it is sending) for another ``lease_s``; return how many
        leases were renewed."""
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            tx.execute("UPDATE nodes SET heartbeat = ? WHERE name = ?", (now, self.node))
            jobs = tx.execute(
                "UPDATE jobs SET lease_until = ? WHERE owner = ? AND state = ?",
                (now + self.lease_s, self.node, JobState.RUNNING),
            ).rowcount
            deliveries = tx.execute(
                "UPDATE deliveries SET lease_until = ? WHERE owner = ? AND state = ?",
                (now + self.lease_s, self.node, DeliveryState.PENDING),
            ).rowcount
            retrievals = tx.execute(
                "UPDATE retrievals SET lease_until = ? WHERE owner = ? AND state = ?",
                (now + self.lease_s, self.node, RetrievalState.PENDING),
            ).rowcount
            tx.execute("UPDATE sources SET poll_until = ? WHERE polled_by = ?",
                       (now + self.lease_s, self.node))
            return int(jobs) + int(deliveries) + int(retrievals)
