"""JSON views of the state store's rows, shared by the API and the status page.

UIDs, AE titles, states, counts, times and the short result only: the state store holds no
patient data, and nothing here adds any.
"""

from __future__ import annotations

import time
from typing import Any

from worker.store import DeliveryRow, JobRow, ObjectRow, StudyDetail, StudyRow


def iso_time(timestamp: float | None) -> str | None:
    """Wall-clock seconds as ISO 8601 UTC (``2024-05-01T12:00:00Z``); None stays None."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def study_json(row: StudyRow) -> dict[str, Any]:
    """A study in ``GET /api/studies``."""
    return {
        "study_uid": row.study_uid,
        "calling_aet": row.calling_aet,
        "source": row.source,
        "state": row.state,
        "result": row.result,
        "revision": row.revision,
        "instances": row.instances,
        "first_received": iso_time(row.first_received),
        "last_received": iso_time(row.last_received),
        "updated": iso_time(row.updated),
        "deliveries": row.deliveries,
    }


def _job_json(job: JobRow) -> dict[str, Any]:
    return {
        "revision": job.revision,
        "state": job.state,
        "result": job.result,
        "error": job.error,
        "created": iso_time(job.created),
        "started": iso_time(job.started),
        "finished": iso_time(job.finished),
    }


def _object_json(obj: ObjectRow) -> dict[str, Any]:
    return {
        "kind": obj.kind,
        "sop_instance_uid": obj.sop_uid,
        "sop_class_uid": obj.sop_class_uid,
        "series_instance_uid": obj.series_uid,
        "revision": obj.revision,
        "created": iso_time(obj.created),
    }


def _delivery_json(delivery: DeliveryRow) -> dict[str, Any]:
    return {
        "destination": delivery.destination,
        "sop_instance_uid": delivery.sop_uid,
        "kind": delivery.kind,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "queued_at": iso_time(delivery.queued_at),
        "next_attempt": iso_time(delivery.next_attempt) if delivery.state == "pending" else None,
        "last_attempt": iso_time(delivery.last_attempt),
        "last_outcome": delivery.last_outcome,
        "last_detail": delivery.last_detail,
    }


def detail_json(study_uid: str, details: list[StudyDetail]) -> dict[str, Any]:
    """``GET /api/studies/{uid}``: one entry per calling AE title that sent the study."""
    return {
        "study_uid": study_uid,
        "senders": [
            {
                **study_json(detail.study),
                "jobs": [_job_json(j) for j in detail.jobs],
                "objects": [_object_json(o) for o in detail.objects],
                "deliveries": [_delivery_json(d) for d in detail.deliveries],
            }
            for detail in details
        ],
    }
