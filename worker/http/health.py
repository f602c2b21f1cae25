"""``GET /healthz``: is the listener serving, the model loaded, the store readable and the
spool writable with room to spare?

Each check is a :class:`Check`; the answer is healthy when all are. The destinations' last
delivery outcomes are included for the operator but never make it unhealthy: a PACS that is
down is the outbox's business (it retries), not a reason to restart Ossa.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.http.views import iso_time
from worker.spool import Spool
from worker.store import StateStore, StoreError

logger = logging.getLogger(__name__)

#: Free space under the storage root below which the spool counts as unhealthy.
MIN_FREE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One health check: whether it passed and a short detail (no patient data)."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    """The answer of :meth:`HealthProbe.run`."""

    checks: dict[str, Check]
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every check passed (destinations do not count)."""
        return all(check.ok for check in self.checks.values())

    @property
    def failing(self) -> list[str]:
        """Names of the checks that failed."""
        return [name for name, check in self.checks.items() if not check.ok]

    def as_json(self) -> dict[str, Any]:
        """The JSON body of ``/healthz``."""
        return {
            "status": "ok" if self.ok else "fail",
            "failing": self.failing,
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()},
            "destinations": self.destinations,
        }


class HealthProbe:
    """Runs the health checks.

    Parameters
    ----------
    store : StateStore
        Must answer a query.
    spool : Spool
        Its root must take a new file and keep ``min_free_bytes`` free.
    listener, model : callable
        ``() -> (ok, detail)``: whether the DICOM listener is bound and serving, whether
        the model is loaded and its stage running (:class:`worker.service.Service`).
    destinations : sequence of str
        Configured destination names (listed even before their first delivery).
    min_free_bytes : int
        Least free space on the spool's file system.
    """

    def __init__(
        self,
        store: StateStore,
        spool: Spool,
        *,
        listener: Callable[[], tuple[bool, str]],
        model: Callable[[], tuple[bool, str]],
        destinations: Sequence[str] = (),
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes!r}")
        self.store = store
        self.spool = spool
        self._listener = listener
        self._model = model
        self.destinations = tuple(destinations)
        self.min_free_bytes = min_free_bytes

    def run(self) -> Health:
        """Run every check (blocking: file and database I/O)."""
        checks = {
            "listener": _guarded(self._listener),
            "model": _guarded(self._model),
            "store": self._check_store(),
            "spool": self._check_spool(),
        }
        return Health(checks, self._destinations())

    def _check_store(self) -> Check:
        try:
            self.store.ping()
        except StoreError as exc:
            return Check(False, f"state store query failed: {exc}")
        return Check(True, self.store.location.shown)

    def _check_spool(self) -> Check:
        try:
            with tempfile.NamedTemporaryFile(dir=self.spool.tmp, prefix="health-", suffix=".part"):
                pass
            free = shutil.disk_usage(self.spool.root).free
        except OSError as exc:
            return Check(False, f"spool {self.spool.root} not writable: {exc.strerror or exc}")
        if free < self.min_free_bytes:
            return Check(False, f"spool {self.spool.root}: {_size(free)} free, below "
                                f"{_size(self.min_free_bytes)}")
        return Check(True, f"{self.spool.root}: {_size(free)} free")

    def _destinations(self) -> dict[str, dict[str, Any]]:
        """Each destination's deliveries by state and its latest attempt (informative)."""
        out: dict[str, dict[str, Any]] = {
            name: {"deliveries": {}, "last_attempt": None, "last_outcome": None}
            for name in self.destinations
        }
        try:
            stats = self.store.delivery_stats()
        except StoreError:
            return out
        for entry in stats:
            out[entry.destination] = {
                "deliveries": entry.states,
                "last_attempt": iso_time(entry.last_attempt),
                "last_outcome": entry.last_outcome,
                **({} if entry.destination in self.destinations else {"configured": False}),
            }
        return out


def _guarded(check: Callable[[], tuple[bool, str]]) -> Check:
    try:
        ok, detail = check()
    except Exception as exc:  # a probe that raises is a failed check, not a 500
        logger.exception("Health check failed")
        return Check(False, f"check raised {type(exc).__name__}")
    return Check(bool(ok), detail)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
