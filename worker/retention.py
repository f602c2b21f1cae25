"""Retention: finished studies older than ``storage.retention_days`` are pruned.

A study is finished when it is reported (or failed) and none of its deliveries is pending.
Its files go first and its rows after, so that a crash in between leaves rows whose files
are missing (marked lost at the next start, pruned again) and never files without rows
(which the start-up reconciliation would take for new instances).
"""

from __future__ import annotations

import logging

from worker.spool import Spool
from worker.store import StateStore

logger = logging.getLogger(__name__)

_DAY_S = 86400.0


def prune(store: StateStore, spool: Spool, retention_days: float) -> int:
    """Delete the files and rows of finished studies older than ``retention_days``.

    Parameters
    ----------
    store, spool
        State and files.
    retention_days : float
        Age (since the study last changed) after which a finished study is pruned; 0
        keeps everything.

    Returns
    -------
    int
        Studies pruned.
    """
    if retention_days <= 0:
        return 0
    studies = store.prunable(store.now() - retention_days * _DAY_S)
    for study in studies:
        for path in study.paths:
            spool.remove(path)
        store.delete_study(study.study_id)
        logger.info("Pruned study %s (%d files): past retention", study.study_uid, len(study.paths))
    return len(studies)
