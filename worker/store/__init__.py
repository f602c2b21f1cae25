"""The state store: the only source of truth for state, on SQLite (one node) or PostgreSQL
(several nodes sharing it).

Every received instance, study, job, produced object and delivery is a row (see
:mod:`worker.store.schema`); files under the storage root hold bytes only. SQLite runs in
WAL mode with ``synchronous=FULL``: a committed transaction survives a crash, and readers
and the writer do not block each other (each operation has its own pooled connection).
One exception: recording a received instance (:meth:`StateStore.add_instance`) commits with
``synchronous=NORMAL``, which survives the process being killed but not the machine losing
power. The instance's durable record is its file, fsync'ed with its folder before the row
is written; a row lost with the power is registered again from that file at the next start
(:meth:`worker.intake.Intake.reconcile`), and the next FULL commit syncs the WAL, earlier
rows included. This saves the C-STORE one of its three syncs.
``ossa status`` and ``ossa retry`` open the same file from another process while the service
runs; writers wait up to ``busy_timeout_s`` for each other. On PostgreSQL every commit is
durable, and several nodes work on the same rows under leases (:mod:`worker.store.jobs`).

The store is one class made of a group of queries per caller: intake
(:mod:`worker.store.intake`), the pipeline's jobs and nodes (:mod:`worker.store.jobs`), the
outbox (:mod:`worker.store.outbox`), the sources' polls and retrievals
(:mod:`worker.store.sources`), the status views (:mod:`worker.store.views`) and
retention (:mod:`worker.store.retention`), over one core of connections, transactions and
the clock (:mod:`worker.store.core`).

State transitions of a study::

    receiving --quiet time--> queued --claimed--> processing --> reported | failed
        ^                                                            |
        +---------------- a new (late) instance ---------------------+

A delivery (one per produced object and destination) is ``pending`` until the destination
takes it (``delivered``) or the outbox gives up (``failed``); ``ossa retry`` makes a
``failed`` delivery ``pending`` again.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from worker.store.core import STORE_FILE, Database, Location, StoreError
from worker.store.intake import IntakeQueries
from worker.store.jobs import (
    ClaimedJob,
    InstanceFile,
    JobQueries,
    LeaseLostError,
    NewObject,
    ObjectRef,
)
from worker.store.outbox import Delivery, FailedDelivery, OutboxQueries
from worker.store.retention import PrunableStudy, RetentionQueries
from worker.store.schema import SchemaError, migrate
from worker.store.sources import Retrieval, RetrievalRow, SourceQueries, SourceRow
from worker.store.states import (
    DeliveryState,
    InstanceState,
    JobState,
    RetrievalState,
    StudyState,
)
from worker.store.views import (
    DeliveryRow,
    DestinationStats,
    JobRow,
    NodeRow,
    ObjectRow,
    StudyDetail,
    StudyRow,
    Summary,
    ViewQueries,
)

if TYPE_CHECKING:
    from worker.config import NodeConfig, StorageConfig

__all__ = [
    "STORE_FILE", "ClaimedJob", "Delivery", "DeliveryRow", "DeliveryState", "DestinationStats",
    "FailedDelivery", "InstanceFile", "InstanceState", "JobRow", "JobState", "LeaseLostError",
    "Location", "NewObject", "NodeRow", "ObjectRef", "ObjectRow", "PrunableStudy",
    "Retrieval", "RetrievalRow", "RetrievalState", "SchemaError", "SourceRow", "StateStore",
    "StoreError", "StudyDetail", "StudyRow", "StudyState", "Summary", "node_name",
    "open_store",
]

#: How long a node holds a claimed job or delivery without renewing it (its heartbeat
#: renews every ``lease_s / 3``).
DEFAULT_LEASE_S = 60.0


class StateStore(IntakeQueries, JobQueries, OutboxQueries, SourceQueries, ViewQueries,
                 RetentionQueries):
    """The state store, on a SQLite file or a PostgreSQL database.

    Parameters
    ----------
    location : pathlib.Path or Location
        A SQLite database file (created, with its schema, if missing), or a
        :class:`~worker.store.core.Location`.
    clock : callable, optional
        Wall-clock seconds replacing the store's clock (tests). Times are stored as such so
        that they survive a restart; see :mod:`worker.store.core` for whose clock is used
        otherwise.
    busy_timeout_s : float, optional
        How long a write waits for another writer (another thread, process or node).
    node : str, optional
        This node's name: the owner of the jobs and deliveries it claims.
    lease_s : float, optional
        How long a claim holds without a heartbeat.

    Raises
    ------
    worker.store.SchemaError
        If the database was written by a newer Ossa.
    worker.store.StoreError
        If the database cannot be reached or created.
    """

    def __init__(
        self,
        location: Path | Location,
        *,
        clock: Callable[[], float] | None = None,
        busy_timeout_s: float = 30.0,
        node: str = "local",
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        if not node:
            raise ValueError("node must be a non-empty name")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        if isinstance(location, Path):
            location = Location(sqlite_path=location)
        if location.sqlite_path is not None:
            location.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        self.location = location
        self.db = Database(location, clock=clock, busy_timeout_s=busy_timeout_s)
        self.node = node
        self.lease_s = float(lease_s)
        with self.db.connection() as db:
            migrate(db)

    @property
    def path(self) -> Path | None:
        """The SQLite database file (None on PostgreSQL)."""
        return self.location.sqlite_path

    @classmethod
    def in_root(cls, root: Path, *, clock: Callable[[], float] | None = None) -> StateStore:
        """The SQLite store of a storage root (``<root>/state.sqlite3``)."""
        return cls(root / STORE_FILE, clock=clock)

    def close(self) -> None:
        """Close the connections (one still in use is closed when its operation ends)."""
        self.db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def node_name(node: NodeConfig) -> str:
    """``node.name``, or the host name when it is not set."""
    return node.name or socket.gethostname() or "local"


def open_store(storage: StorageConfig, node: NodeConfig, *,
               clock: Callable[[], float] | None = None) -> StateStore:
    """The state store a configuration names: PostgreSQL at ``storage.database``, else
    SQLite under ``storage.root``; owned by this node (``node.name``).

    Raises
    ------
    StoreError
        If the database cannot be reached (or its password read).
    SchemaError
        If it was written by a newer Ossa.
    """
    if storage.database is None:
        location = Location(sqlite_path=storage.root / STORE_FILE)
    else:
        location = Location(url=storage.database, password=_password_reader(storage))
    return StateStore(location, clock=clock, node=node_name(node), lease_s=node.lease_s)


def _password_reader(storage: StorageConfig) -> Callable[[], str] | None:
    """Reads the database password from its file or variable when a connection opens; its
    errors name the source, never the value."""
    path, variable = storage.database_password_file, storage.database_password_env
    if path is None and variable is None:
        return None

    def read() -> str:
        if path is not None:
            try:
                secret = path.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise StoreError(f"storage.database_password_file {path} cannot be read: "
                                 f"{type(exc).__name__}") from None
        else:
            assert variable is not None
            secret = os.environ.get(variable, "")
            if not secret:
                raise StoreError(f"storage.database_password_env {variable} is not set")
        return secret

    return read
