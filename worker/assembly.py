"""Study assembly: decide when a study has stopped arriving.

DICOM has no end-of-study message for C-STORE (PS3.4 B), so a study is complete when no new
instance of it has arrived for ``completion_timeout_s``, as in mercure and Orthanc's
"StableAge".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StudyAssembler:
    """Thread-safe record of when each incoming study last received an instance.

    Parameters
    ----------
    completion_timeout_s : float
        Quiet time after which a study is complete.
    clock : callable, optional
        Monotonic clock in seconds; injectable for tests.
    """

    def __init__(
        self, completion_timeout_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if completion_timeout_s <= 0:
            raise ValueError(f"completion_timeout_s must be > 0, got {completion_timeout_s!r}")
        self.completion_timeout_s = completion_timeout_s
        self._clock = clock
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, study: str) -> None:
        """Record that an instance of ``study`` has just been stored."""
        with self._lock:
            self._last_seen[study] = self._clock()

    def pop_complete(self) -> list[str]:
        """Remove and return the studies that have been quiet long enough."""
        now = self._clock()
        with self._lock:
            due = [
                study
                for study, seen in self._last_seen.items()
                if now - seen >= self.completion_timeout_s
            ]
            for study in due:
                del self._last_seen[study]
        return sorted(due)

    def pending(self) -> int:
        """Number of studies still being received."""
        with self._lock:
            return len(self._last_seen)
