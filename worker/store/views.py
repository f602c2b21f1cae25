"""The status views' queries: ``ossa status``, the status page, the API and the health
check. Read only; UIDs, states and counts, never patient data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.store.core import Db, Queries, StoreError, opt_float, opt_str
from worker.store.outbox import FailedDelivery
from worker.store.states import DeliveryState, JobState


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
class StudyRow:
    """A study as the status page and the API list it: UIDs, states and counts only.

    ``revision`` and ``result`` are those of its latest job (``result``: of the latest job
    that produced one, e.g. ``"ABNORMAL (p=0.87)"``); None before the first report.
    ``deliveries`` counts its objects' deliveries by state; ``source`` names the source it was
    retrieved from (None: sent to Ossa). Times are wall-clock seconds.
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
    source: str | None = None  # the [[sources]] entry it was retrieved from


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


@dataclass(frozen=True)
class NodeRow:
    """A node of the cluster as ``ossa status`` lists it: when it started, its last
    heartbeat (store clock), and how many jobs and deliveries it holds now."""

    name: str
    host: str
    pid: int
    version: str
    started: float
    heartbeat: float
    jobs: int
    deliveries: int


class ViewQueries(Queries):
    """What the status views ask of the store."""

    def summary(self) -> Summary:
        """Counts of studies, jobs, instances and deliveries by state; failed deliveries."""
        studies = {str(s): int(n) for s, n in self.db.read(
            "SELECT state, COUNT(*) FROM studies GROUP BY state")}
        jobs = {str(s): int(n) for s, n in self.db.read(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        instances = {str(s): int(n) for s, n in self.db.read(
            "SELECT state, COUNT(*) FROM instances GROUP BY state")}
        deliveries: dict[str, dict[str, int]] = {}
        for dest, state, n in self.db.read(
            "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"
        ):
            deliveries.setdefault(str(dest), {})[str(state)] = int(n)
        next_attempts = {
            str(dest): float(t)
            for dest, t in self.db.read(
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
            for study, sop, dest, attempts, last, outcome, detail in self.db.read(
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
        StoreError
            If the store is closed, its database cannot be reached or the query fails.
        """
        if self.db.closed:
            raise StoreError("the state store is closed")
        self.db.read("SELECT 1 FROM studies LIMIT 1")

    _STUDY_COLUMNS = (
        "SELECT s.id, s.study_uid, s.calling_aet, s.state, s.first_received, s.last_received,"
        " s.updated,"
        " (SELECT COUNT(*) FROM instances i WHERE i.study_id = s.id AND i.state = 'stored'),"
        " (SELECT MAX(j.revision) FROM jobs j WHERE j.study_id = s.id),"
        " (SELECT j.result FROM jobs j WHERE j.study_id = s.id AND j.result IS NOT NULL"
        "  ORDER BY j.revision DESC LIMIT 1), s.source"
        " FROM studies s"
    )

    @staticmethod
    def _study_rows(db: Db, rows: list[Any]) -> list[tuple[int, StudyRow]]:
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
                source=opt_str(source),
            ))
            for i, uid, aet, state, first, last, updated, instances, revision, result, source
            in rows
        ]

    def count_studies(self, state: str | None = None) -> int:
        """How many studies there are (in ``state``, when given)."""
        if state is None:
            return int(self.db.read("SELECT COUNT(*) FROM studies")[0][0])
        return int(self.db.read("SELECT COUNT(*) FROM studies WHERE state = ?", (state,))[0][0])

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
        with self.db.snapshot() as db:
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
        with self.db.snapshot() as db:
            rows = db.execute(
                f"{self._STUDY_COLUMNS} WHERE s.study_uid = ? ORDER BY s.calling_aet",
                (study_uid,),
            ).fetchall()
            for study_id, row in self._study_rows(db, rows):
                jobs = tuple(
                    JobRow(int(rev), str(state), float(created), opt_float(started),
                           opt_float(finished), opt_str(error), opt_str(result))
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
                                float(queued), float(next_at), opt_float(last),
                                opt_str(outcome), opt_str(detail))
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

        with self.db.snapshot() as db:
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
            for dest, last, outcome, detail in db.execute(
                "SELECT d.destination, d.last_attempt, d.last_outcome, d.last_detail"
                " FROM deliveries d WHERE d.last_attempt = (SELECT MAX(e.last_attempt)"
                " FROM deliveries e WHERE e.destination = d.destination) ORDER BY d.id"
            ):
                entry(dest).update(last_attempt=float(last), last_outcome=opt_str(outcome),
                                   last_detail=opt_str(detail))
        return [DestinationStats(name, **values) for name, values in sorted(stats.items())]

    def nodes(self) -> list[NodeRow]:
        """Every node that ran on this store, by name, with what it holds now."""
        rows = self.db.read(
            "SELECT n.name, n.host, n.pid, n.version, n.started, n.heartbeat,"
            " (SELECT COUNT(*) FROM jobs j WHERE j.owner = n.name AND j.state = ?),"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.owner = n.name AND d.state = ?)"
            " FROM nodes n ORDER BY n.name",
            (JobState.RUNNING, DeliveryState.PENDING),
        )
        return [NodeRow(str(name), str(host), int(pid), str(version), float(started),
                        float(beat), int(jobs), int(deliveries))
                for name, host, pid, version, started, beat, jobs, deliveries in rows]
