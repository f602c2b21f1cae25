"""The states a study, a job, an instance and a delivery go through (see :mod:`worker.store`)."""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """Where a study is."""

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


class RetrievalState(StrEnum):
    """Where the retrieval of one study from a source is."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
