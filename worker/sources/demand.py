"""Analysis on demand: ``ossa analyze --source NAME --study UID`` and ``POST /api/analyze``.

A request is a retrieval queued in the state store (due now, whatever the study's earlier
state), which the running service carries out like one a poll found: any node of a cluster
takes it. :func:`analysis_state` reads how far it got: the retrieval, then the study's report.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.admission import is_ui_value
from worker.store import RetrievalRow, RetrievalState, StateStore, StudyRow, StudyState


class AnalyzeRequestError(ValueError):
    """The request names no configured source or no valid Study Instance UID."""


def request_analysis(store: StateStore, sources: tuple[str, ...], source: str, study_uid: str,
                     *, requested_by: str) -> None:
    """Queue the retrieval, and so the report, of one study from a configured source.

    Raises
    ------
    AnalyzeRequestError
        If ``source`` is not one of ``sources`` or ``study_uid`` is not a UID.
    StoreError
        If the state store cannot be written.
    """
    if source not in sources:
        known = ", ".join(sources) or "none configured"
        raise AnalyzeRequestError(f"source {source!r} is not a configured source ({known})")
    if not is_ui_value(study_uid):
        raise AnalyzeRequestError("study must be a UID (PS3.5 9.1: digits and dots, at most 64)")
    store.request_retrieval(source, study_uid, requested_by=requested_by)


@dataclass(frozen=True)
class AnalysisState:
    """How far an on-demand analysis got.

    ``stage`` is ``retrieving``, ``failed`` (the retrieval gave up, see ``detail``),
    ``reporting`` (retrieved; waiting for its quiet time, the classifier or the report),
    ``reported`` (``result`` is the study's verdict) or ``unknown``.
    """

    stage: str
    detail: str
    result: str | None = None
    retrieval: RetrievalRow | None = None

    @property
    def finished(self) -> bool:
        """Whether nothing more will happen without another request."""
        return self.stage in ("failed", "reported", "unknown")


def analysis_state(store: StateStore, source: str, study_uid: str) -> AnalysisState:
    """Where the analysis of ``study_uid`` from ``source`` is now."""
    retrieval = store.retrieval(source, study_uid)
    if retrieval is None:
        return AnalysisState("unknown", "no retrieval of this study was requested")
    if retrieval.state == RetrievalState.PENDING:
        # A poll that queues a reported study again (its instance count changed, as it does
        # when Ossa's own objects are stored back there) leaves it reported meanwhile.
        reported = (_reported(store, source, study_uid) if retrieval.requested_by == "poll"
                    else None)
        if reported is not None:
            return AnalysisState("reported", f"revision {reported.revision}; the archive's"
                                 " instances are checked again", reported.result, retrieval)
        detail = "queued" if retrieval.attempts == 0 else (
            f"attempt {retrieval.attempts} {retrieval.last_outcome}: {retrieval.last_detail}")
        return AnalysisState("retrieving", detail, retrieval=retrieval)
    if retrieval.state == RetrievalState.FAILED:
        return AnalysisState("failed", f"{retrieval.last_outcome}: {retrieval.last_detail}",
                             retrieval=retrieval)
    details = [d for d in store.study_detail(study_uid)
               if d.study.calling_aet == source or d.study.source == source]
    if not details:
        return AnalysisState("failed", "retrieved, but no radiograph of it was stored "
                             f"({retrieval.last_detail})", retrieval=retrieval)
    study = details[0].study
    if study.state == StudyState.REPORTED and (study.updated >= (retrieval.last_attempt or 0)
                                               or retrieval.retrieved == 0):
        return AnalysisState("reported", f"revision {study.revision}", study.result, retrieval)
    if study.state == StudyState.FAILED:
        return AnalysisState("failed", "the study could not be reported (see the service's log)",
                             retrieval=retrieval)
    return AnalysisState("reporting", f"study {study.state}", retrieval=retrieval)


def _reported(store: StateStore, source: str, study_uid: str) -> StudyRow | None:
    """The study of ``source`` as reported, if it is."""
    for detail in store.study_detail(study_uid):
        study = detail.study
        if (study.calling_aet == source or study.source == source) and (
                study.state == StudyState.REPORTED):
            return study
    return None
