"""Intake's queries: recording received instances, recognising Ossa's own objects, and the
files the start-up reconciliation compares with the spool."""

from __future__ import annotations

from worker.store.core import Queries
from worker.store.states import InstanceState, JobState, StudyState


class IntakeQueries(Queries):
    """What :mod:`worker.intake` asks of the store."""

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
        source: str | None = None,
    ) -> bool:
        """Record a durably written instance; return whether it is new to its study.

        A re-sent instance (its SOP Instance UID already stored for the study) is not new:
        its row is refreshed and nothing is re-run; one whose file had been lost counts as
        new again. A new instance restarts the study's quiet time; for a study already
        reported it starts a new revision, and for a study whose job has not started yet it
        cancels that job, so the instance joins it.

        The study's row is created or locked first (PostgreSQL: the upsert locks it): two
        nodes receiving instances of one study, or one receiving while another queues the
        study, take turns. Four statements for a new instance of a known study.

        On SQLite, committed without a sync of its own (see :mod:`worker.store`): the
        instance's file is its durable record. ``source`` names the source the instance was
        retrieved from (recorded on its study).
        """
        db = self.db
        with db.tx(sync=False) as tx:
            now = db.now(tx) if received is None else received
            # created, or locked (the no-op update) and returned, in one statement
            study_id, state_name = tx.execute(
                "INSERT INTO studies (calling_aet, study_uid, state, first_received,"
                " last_received, updated, source) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (calling_aet, study_uid) DO UPDATE SET state = studies.state,"
                " source = COALESCE(studies.source, excluded.source)"
                " RETURNING id, state",
                (calling_aet, study_uid, StudyState.RECEIVING, now, now, now, source),
            ).fetchone()
            study_id, state = int(study_id), StudyState(state_name)
            inserted = tx.execute(
                "INSERT INTO instances (study_id, sop_uid, sop_class_uid, series_uid, path,"
                " size, received) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (study_id, sop_uid) DO NOTHING RETURNING id",
                (study_id, sop_uid, sop_class_uid, series_uid, path, size, now),
            ).fetchone()
            if inserted is None:  # the study already has this SOP Instance UID
                existing_id, existing_state = tx.execute(
                    "SELECT id, state FROM instances WHERE study_id = ? AND sop_uid = ?",
                    (study_id, sop_uid),
                ).fetchone()
                if existing_state == InstanceState.STORED:  # re-sent: not new
                    tx.execute(
                        "UPDATE instances SET path = ?, size = ? WHERE id = ?",
                        (path, size, existing_id),
                    )
                    return False
                # its file was lost: the re-sent copy is reported anew
                tx.execute(
                    "UPDATE instances SET path = ?, size = ?, state = ?, received = ?,"
                    " job_id = NULL WHERE id = ?",
                    (path, size, InstanceState.STORED, now, existing_id),
                )
            if state is StudyState.QUEUED:
                tx.execute(
                    "DELETE FROM jobs WHERE study_id = ? AND state = ?", (study_id, JobState.QUEUED)
                )
            if state in (StudyState.QUEUED, StudyState.REPORTED, StudyState.FAILED):
                state = StudyState.RECEIVING
            tx.execute(
                f"UPDATE studies SET last_received = {db.greatest('last_received', '?')},"
                " updated = ?, state = ? WHERE id = ?",
                (now, now, state, study_id),
            )
            return True

    def is_own_object(self, sop_uid: str, series_uid: str) -> bool:
        """Whether an object is one Ossa produced (by SOP Instance UID or its series)."""
        return bool(
            self.db.read(
                "SELECT 1 FROM objects WHERE sop_uid = ? OR series_uid = ? LIMIT 1",
                (sop_uid, series_uid),
            )
        )

    def instance_paths(self) -> set[str]:
        """Paths of every instance row."""
        return {str(r[0]) for r in self.db.read("SELECT path FROM instances")}

    def stored_files(self) -> list[tuple[str, str]]:
        """``(path, kind)`` of every row that should have a file: instances and objects."""
        rows = self.db.read(
            "SELECT path, 'instance' FROM instances WHERE state = ?"
            " UNION ALL SELECT path, kind FROM objects",
            (InstanceState.STORED,),
        )
        return [(str(p), str(k)) for p, k in rows]

    def mark_lost(self, path: str) -> None:
        """Record that an instance's file is missing; it is left out of later jobs."""
        with self.db.tx() as tx:
            tx.execute(
                "UPDATE instances SET state = ? WHERE path = ?", (InstanceState.LOST, path)
            )
