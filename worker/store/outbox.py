"""The outbox's queries: the deliveries the destination workers send, retries and give-ups.

A delivery is leased to the node sending it (``owner``, ``lease_until``), as a job is (see
:mod:`worker.store.jobs`): no two nodes send it at once, and one whose node died mid-send is
sent again by another once the lease expires. That second send is the one duplicate a
cluster can make (the node died after the destination took the object and before the outcome
was recorded); it carries the same SOP Instance UID, which the destination files once.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.store.core import Queries
from worker.store.states import DeliveryState


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


class OutboxQueries(Queries):
    """What :mod:`worker.delivery` and ``ossa retry`` ask of the store."""

    def due_delivery(self, destination: str) -> Delivery | None:
        """Lease to this node the pending delivery to ``destination`` whose next attempt is
        due, oldest first, and return it; None if none is due (or every due one is being
        sent by another node)."""
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            row = tx.execute(
                "SELECT d.id, d.destination, s.study_uid, o.sop_uid, o.path, d.attempts,"
                " d.queued_at FROM deliveries d JOIN objects o ON o.id = d.object_id"
                " JOIN studies s ON s.id = o.study_id"
                " WHERE d.destination = ? AND d.state = ? AND d.next_attempt <= ?"
                " AND (d.lease_until IS NULL OR d.lease_until < ?)"
                " ORDER BY d.next_attempt, d.id LIMIT 1" + db.lock_rows("d", skip_locked=True),
                (destination, DeliveryState.PENDING, now, now),
            ).fetchone()
            if row is None:
                return None
            i, dest, study, sop, path, attempts, queued = row
            tx.execute(
                "UPDATE deliveries SET owner = ?, lease_until = ? WHERE id = ?",
                (self.node, now + self.lease_s, i),
            )
        return Delivery(int(i), str(dest), str(study), str(sop), str(path), int(attempts),
                        float(queued))

    def next_attempt(self, destination: str) -> float | None:
        """When the next pending delivery to ``destination`` is due, or None."""
        value = self.db.read(
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
    ) -> bool:
        """Record one attempt: ``delivered``, ``failed``, or ``pending`` until ``next_attempt``
        (store clock), and release the lease. Return False, recording nothing, when the
        delivery is no longer this node's to record (its lease passed to another node, or it
        is no longer pending)."""
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            changed = tx.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt = ?, state = ?,"
                " last_outcome = ?, last_detail = ?, next_attempt = COALESCE(?, next_attempt),"
                " owner = NULL, lease_until = NULL"
                " WHERE id = ? AND state = ? AND (owner = ? OR owner IS NULL)",
                (now, state, outcome, detail[:500], next_attempt, delivery_id,
                 DeliveryState.PENDING, self.node),
            ).rowcount
        return bool(changed)

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
        db = self.db
        with db.tx() as tx:
            now = db.now(tx)
            return int(
                tx.execute(
                    "UPDATE deliveries SET state = ?, next_attempt = ?,"
                    " queued_at = CASE WHEN state = ? THEN ? ELSE queued_at END"
                    f" WHERE {' AND '.join(where)}",
                    (DeliveryState.PENDING, now, DeliveryState.FAILED, now, *params),
                ).rowcount
            )
