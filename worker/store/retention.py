"""Retention's queries: finished studies past their time, and their deletion."""

from __future__ import annotations

from dataclasses import dataclass

from worker.store.core import Queries
from worker.store.states import DeliveryState, InstanceState, StudyState


@dataclass(frozen=True)
class PrunableStudy:
    """A finished study past retention, and the files to delete before its rows."""

    study_id: int
    study_uid: str
    paths: tuple[str, ...]


class RetentionQueries(Queries):
    """What :mod:`worker.retention` asks of the store."""

    def stored_bytes(self) -> int:
        """Total size of the instances whose files are in the spool."""
        return int(self.db.read(
            "SELECT COALESCE(SUM(size), 0) FROM instances WHERE state = ?",
            (InstanceState.STORED,),
        )[0][0])

    def prunable(self, older_than: float) -> list[PrunableStudy]:
        """Finished studies (reported or failed, nothing pending) last changed before
        ``older_than``, with every file of theirs."""
        rows = self.db.read(
            "SELECT s.id, s.study_uid FROM studies s WHERE s.state IN (?, ?) AND s.updated < ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN objects o ON o.id = d.object_id"
            " WHERE o.study_id = s.id AND d.state = ?)",
            (StudyState.REPORTED, StudyState.FAILED, older_than, DeliveryState.PENDING),
        )
        studies = []
        for study_id, study_uid in rows:
            paths = self.db.read(
                "SELECT path FROM instances WHERE study_id = ?"
                " UNION ALL SELECT path FROM objects WHERE study_id = ?",
                (study_id, study_id),
            )
            studies.append(PrunableStudy(int(study_id), str(study_uid),
                                         tuple(str(p[0]) for p in paths)))
        return studies

    def delete_study(self, study_id: int) -> None:
        """Delete a study's rows (its files are deleted first, by the caller)."""
        with self.db.tx() as db:
            db.execute("DELETE FROM studies WHERE id = ?", (study_id,))
