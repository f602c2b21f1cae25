"""Sources' queries: each source's poll (watermark, one poller at a time) and the studies to
retrieve from it, leased and retried like deliveries.

Polls. A source's row holds when its next poll is due; a node claims the poll by moving that
time on by the poll interval in the same statement that checks it is due, and holds a lease
on it (``polled_by``, ``poll_until``, renewed by its heartbeat) while it runs: in a cluster
one node polls a source at a time, once per interval, whichever node it is. A poll that
succeeds moves the watermark to its start, less nothing: the overlap is subtracted when the
next poll asks (:mod:`worker.sources.poller`).

Retrievals. One row per (source, Study Instance UID), ``pending`` until an attempt has
stored every instance the archive listed (``done``) or the retries gave up (``failed``, shown
by ``ossa status`` until ``ossa retry``). Any node retrieves: the row is leased to it as a
delivery is.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.store.core import Db, Queries, opt_float, opt_str
from worker.store.states import InstanceState, RetrievalState, StudyState


@dataclass(frozen=True)
class Retrieval:
    """A study to retrieve, leased to this node."""

    retrieval_id: int
    source: str
    study_uid: str
    requested_by: str
    attempts: int
    queued_at: float


@dataclass(frozen=True)
class RetrievalRow:
    """A retrieval as ``ossa status``, the API and ``ossa analyze`` show it."""

    source: str
    study_uid: str
    state: str
    requested_by: str
    expected: int | None
    retrieved: int
    attempts: int
    queued_at: float
    next_attempt: float
    last_attempt: float | None
    last_outcome: str | None
    last_detail: str | None


@dataclass(frozen=True)
class SourceRow:
    """A source's polls and retrievals as ``ossa status`` shows them."""

    name: str
    watermark: float | None
    next_poll: float
    polled_by: str | None
    last_poll: float | None
    last_outcome: str | None
    last_detail: str | None
    pending: int
    failed: int


_RETRIEVAL_COLUMNS = (
    "source, study_uid, state, requested_by, expected, retrieved, attempts, queued_at,"
    " next_attempt, last_attempt, last_outcome, last_detail"
)


def _retrieval_row(row: tuple[object, ...]) -> RetrievalRow:
    (source, study, state, by, expected, retrieved, attempts, queued, next_attempt, last,
     outcome, detail) = row
    return RetrievalRow(
        str(source), str(study), str(state), str(by),
        None if expected is None else int(expected),  # type: ignore[call-overload]
        int(retrieved), int(attempts), float(queued), float(next_attempt),  # type: ignore
        opt_float(last), opt_str(outcome), opt_str(detail),
    )


class SourceQueries(Queries):
    """What :mod:`worker.sources`, ``ossa analyze`` and ``ossa status`` ask of the store."""

    # --- polls ------------------------------------------------------------------------------

    def claim_poll(self, source: str, interval_s: float) -> tuple[bool, float | None]:
        """Claim ``source``'s poll if it is due and no live node is polling it (a claim of
        this node's own is stale: its one poller of the source is asking again).

        Returns
        -------
        tuple of (bool, float or None)
            Whether this node polls now, and the watermark (store clock; None before the
            first successful poll).
        """
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            tx.execute(
                "INSERT INTO sources (name, next_poll) VALUES (?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (source, now),
            )
            row = tx.execute(
                "UPDATE sources SET next_poll = ?, polled_by = ?, poll_until = ?"
                " WHERE name = ? AND next_poll <= ?"
                " AND (poll_until IS NULL OR poll_until < ? OR polled_by = ?)"
                " RETURNING watermark",
                (now + interval_s, self.node, now + self.lease_s, source, now, now, self.node),
            ).fetchone()
        return (row is not None), (None if row is None else opt_float(row[0]))

    def finish_poll(self, source: str, *, outcome: str, detail: str,
                    watermark: float | None = None) -> None:
        """Record a poll's outcome and release it; ``watermark`` (given after a poll that
        asked for everything it meant to) becomes the source's."""
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            tx.execute(
                "UPDATE sources SET last_poll = ?, last_outcome = ?, last_detail = ?,"
                " watermark = COALESCE(?, watermark), polled_by = NULL, poll_until = NULL"
                " WHERE name = ? AND polled_by = ?",
                (now, outcome, detail[:500], watermark, source, self.node),
            )

    def seconds_until_poll(self, source: str) -> float | None:
        """Seconds until ``source``'s next poll is due (store clock); None if never polled."""
        db = self.db
        with db.snapshot() as tx:
            now = db.now(tx)
            row = tx.execute("SELECT next_poll FROM sources WHERE name = ?",
                             (source,)).fetchone()
        return None if row is None else float(row[0]) - now

    # --- retrievals -------------------------------------------------------------------------

    def note_study(self, source: str, study_uid: str, listed: int | None) -> bool:
        """Queue the retrieval of a study a poll found, unless it is known and unchanged.

        A study never seen is queued; one retrieved before (``done``) is queued again when
        the poll sees another number of instances (``listed``) than the previous poll did;
        a pending one has its count updated; a ``failed`` one waits for ``ossa retry``.
        Returns whether it was queued.
        """
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            created = tx.execute(
                "INSERT INTO retrievals (source, study_uid, state, requested_by, listed,"
                " queued_at, next_attempt) VALUES (?, ?, ?, 'poll', ?, ?, ?)"
                " ON CONFLICT (source, study_uid) DO NOTHING RETURNING id",
                (source, study_uid, RetrievalState.PENDING, listed, now, now),
            ).fetchone()
            if created is not None:
                return True
            state, known = tx.execute(
                "SELECT state, listed FROM retrievals WHERE source = ? AND study_uid = ?"
                + db.lock_rows(),
                (source, study_uid),
            ).fetchone()
            changed = listed is not None and known != listed
            if changed:
                tx.execute(
                    "UPDATE retrievals SET listed = ? WHERE source = ? AND study_uid = ?",
                    (listed, source, study_uid),
                )
            if state == RetrievalState.DONE and changed:
                self._requeue(tx, now, source, study_uid, "poll")
                return True
            return False

    def request_retrieval(self, source: str, study_uid: str, *, requested_by: str) -> None:
        """Queue a study's retrieval now, whatever its state (``ossa analyze``, the API)."""
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            created = tx.execute(
                "INSERT INTO retrievals (source, study_uid, state, requested_by,"
                " queued_at, next_attempt) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (source, study_uid) DO NOTHING RETURNING id",
                (source, study_uid, RetrievalState.PENDING, requested_by, now, now),
            ).fetchone()
            if created is None:
                self._requeue(tx, now, source, study_uid, requested_by)

    @staticmethod
    def _requeue(tx: Db, now: float, source: str, study_uid: str, requested_by: str) -> None:
        """Make a retrieval pending and due now; a finished one starts its retries anew."""
        tx.execute(
            "UPDATE retrievals SET next_attempt = ?, requested_by = ?,"
            " attempts = CASE WHEN state = ? THEN attempts ELSE 0 END,"
            " queued_at = CASE WHEN state = ? THEN queued_at ELSE ? END, state = ?"
            " WHERE source = ? AND study_uid = ?",
            (now, requested_by, RetrievalState.PENDING, RetrievalState.PENDING, now,
             RetrievalState.PENDING, source, study_uid),
        )

    def due_retrieval(self, sources: tuple[str, ...]) -> Retrieval | None:
        """Lease to this node the oldest due pending retrieval from one of ``sources`` (those
        this node has configured); None if none is due."""
        if not sources:
            return None
        db = self.db
        marks = ", ".join("?" * len(sources))
        with db.tx() as tx:
            now = db.now(tx)
            row = tx.execute(
                "SELECT id, source, study_uid, requested_by, attempts, queued_at"
                f" FROM retrievals WHERE state = ? AND next_attempt <= ? AND source IN ({marks})"
                " AND (lease_until IS NULL OR lease_until < ?)"
                " ORDER BY next_attempt, id LIMIT 1" + db.lock_rows(skip_locked=True),
                (RetrievalState.PENDING, now, *sources, now),
            ).fetchone()
            if row is None:
                return None
            i, source, study, by, attempts, queued = row
            tx.execute(
                "UPDATE retrievals SET owner = ?, lease_until = ? WHERE id = ?",
                (self.node, now + self.lease_s, i),
            )
        return Retrieval(int(i), str(source), str(study), str(by), int(attempts), float(queued))

    def next_retrieval(self, sources: tuple[str, ...]) -> float | None:
        """When the next pending retrieval from one of ``sources`` is due, or None."""
        if not sources:
            return None
        marks = ", ".join("?" * len(sources))
        value = self.db.read(
            f"SELECT MIN(next_attempt) FROM retrievals WHERE state = ? AND source IN ({marks})",
            (RetrievalState.PENDING, *sources),
        )[0][0]
        return None if value is None else float(value)

    def record_retrieval(
        self,
        retrieval_id: int,
        *,
        state: RetrievalState,
        outcome: str,
        detail: str,
        retrieved: int,
        expected: int | None = None,
        next_attempt: float | None = None,
    ) -> bool:
        """Record one attempt and release the lease; False, recording nothing, when the
        retrieval is no longer this node's (its lease passed to another node).

        A finished retrieval's instance count becomes the one the next poll compares with:
        should its listing have missed an instance that a poll already counted (stored in
        between), the next poll sees a different count and queues the study again.
        """
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            changed = tx.execute(
                "UPDATE retrievals SET attempts = attempts + 1, last_attempt = ?, state = ?,"
                " last_outcome = ?, last_detail = ?, retrieved = ?,"
                " expected = COALESCE(?, expected), next_attempt = COALESCE(?, next_attempt),"
                " listed = COALESCE(?, listed),"
                " owner = NULL, lease_until = NULL"
                " WHERE id = ? AND state = ? AND (owner = ? OR owner IS NULL)",
                (now, state, outcome, detail[:500], retrieved, expected, next_attempt,
                 expected if state == RetrievalState.DONE else None, retrieval_id,
                 RetrievalState.PENDING, self.node),
            ).rowcount
        return bool(changed)

    def release_retrieval(self, retrieval_id: int) -> None:
        """Give a retrieval back, due now, without counting an attempt (the node stopped
        in the middle of it)."""
        with self.db.tx() as tx:
            tx.execute(
                "UPDATE retrievals SET owner = NULL, lease_until = NULL"
                " WHERE id = ? AND owner = ?",
                (retrieval_id, self.node),
            )

    def held_sop_uids(self, calling_aet: str, study_uid: str) -> set[str]:
        """SOP Instance UIDs of a study (as ``calling_aet`` sent it) whose files are held."""
        rows = self.db.read(
            "SELECT i.sop_uid FROM instances i JOIN studies s ON s.id = i.study_id"
            " WHERE s.calling_aet = ? AND s.study_uid = ? AND i.state = ?",
            (calling_aet, study_uid, InstanceState.STORED),
        )
        return {str(r[0]) for r in rows}

    def mark_source(self, study_uid: str, source: str) -> int:
        """Name the source of a study received under another calling AE title and not
        classified yet (a C-MOVE's sub-operations come from the PACS's own AE title);
        return how many studies were marked."""
        with self.db.tx() as tx:
            return int(tx.execute(
                "UPDATE studies SET source = ? WHERE study_uid = ? AND source IS NULL"
                " AND state IN (?, ?)",
                (source, study_uid, StudyState.RECEIVING, StudyState.QUEUED),
            ).rowcount)

    def retry_retrievals(self, *, source: str | None = None,
                         study_uid: str | None = None) -> int:
        """Re-queue failed retrievals (of one source, one study, or all) and make the pending
        ones of the selection due now; return how many."""
        where: list[str] = []
        params: list[str] = []
        if source:
            where.append("source = ?")
            params.append(source)
        if study_uid:
            where.append("study_uid = ?")
            params.append(study_uid)
        if not where:  # every failed one
            where.append("state = ?")
            params.append(RetrievalState.FAILED)
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            return int(tx.execute(
                "UPDATE retrievals SET next_attempt = ?,"
                " attempts = CASE WHEN state = ? THEN 0 ELSE attempts END,"
                " queued_at = CASE WHEN state = ? THEN ? ELSE queued_at END, state = ?"
                f" WHERE state IN (?, ?) AND {' AND '.join(where)}",
                (now, RetrievalState.FAILED, RetrievalState.FAILED, now, RetrievalState.PENDING,
                 RetrievalState.FAILED, RetrievalState.PENDING, *params),
            ).rowcount)

    # --- views ------------------------------------------------------------------------------

    def retrieval(self, source: str, study_uid: str) -> RetrievalRow | None:
        """One study's retrieval from ``source``, or None."""
        rows = self.db.read(
            f"SELECT {_RETRIEVAL_COLUMNS} FROM retrievals WHERE source = ? AND study_uid = ?",
            (source, study_uid),
        )
        return _retrieval_row(rows[0]) if rows else None

    def troubled_retrievals(self, limit: int = 50) -> list[RetrievalRow]:
        """Failed retrievals, and pending ones that failed at least once, newest first."""
        rows = self.db.read(
            f"SELECT {_RETRIEVAL_COLUMNS} FROM retrievals"
            " WHERE state = ? OR (state = ? AND attempts > 0)"
            " ORDER BY last_attempt DESC, id DESC LIMIT ?",
            (RetrievalState.FAILED, RetrievalState.PENDING, limit),
        )
        return [_retrieval_row(r) for r in rows]

    def sources(self) -> list[SourceRow]:
        """Every source that has polled or been retrieved from, with its retrieval counts."""
        rows = self.db.read(
            "SELECT n.name, s.watermark, s.next_poll, s.polled_by, s.last_poll,"
            " s.last_outcome, s.last_detail,"
            " (SELECT COUNT(*) FROM retrievals r WHERE r.source = n.name AND r.state = ?),"
            " (SELECT COUNT(*) FROM retrievals r WHERE r.source = n.name AND r.state = ?)"
            " FROM (SELECT name FROM sources UNION SELECT DISTINCT source FROM retrievals) n"
            " LEFT JOIN sources s ON s.name = n.name ORDER BY n.name",
            (RetrievalState.PENDING, RetrievalState.FAILED),
        )
        return [
            SourceRow(str(n), opt_float(w), float(np or 0), opt_str(by), opt_float(lp),
                      opt_str(o), opt_str(d), int(p), int(f))
            for n, w, np, by, lp, o, d, p, f in rows
        ]
