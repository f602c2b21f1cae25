"""Send a finished SR to every configured destination, with bounded retries."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pydicom import Dataset

from dicom_io.send import DimsePeer, SendResult, send_c_store
from worker.config import DimseDestination

logger = logging.getLogger(__name__)


class Dispatcher:
    """Deliver datasets to the ``[[destinations]]`` of the configuration.

    Parameters
    ----------
    destinations : sequence of DimseDestination
        Where to send.
    calling_ae_title : str
        Our AE title, used as Calling AE Title.
    attempts : int
        Tries per destination before giving up (at least 1).
    backoff_s : float
        Wait before the second try; doubled for each further try.
    stop : threading.Event, optional
        When set, waiting between tries ends early and no further try is made.
    """

    def __init__(
        self,
        destinations: Sequence[DimseDestination],
        *,
        calling_ae_title: str,
        attempts: int = 3,
        backoff_s: float = 2.0,
        stop: threading.Event | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s}")
        self.destinations = tuple(destinations)
        self.calling_ae_title = calling_ae_title
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._stop = stop or threading.Event()

    def dispatch(self, dataset: Dataset) -> dict[str, SendResult]:
        """Send ``dataset`` to every destination; return the last result for each, by name."""
        results: dict[str, SendResult] = {}
        for destination in self.destinations:
            peer = DimsePeer(
                ae_title=destination.ae_title,
                host=destination.host,
                port=destination.port,
                timeout_s=destination.timeout_s,
            )
            delay = self.backoff_s
            for attempt in range(1, self.attempts + 1):
                result = send_c_store(dataset, peer, calling_ae_title=self.calling_ae_title)
                if result.ok or attempt == self.attempts or self._stop.wait(delay):
                    break
                logger.info(
                    "Retrying %s to destination %s (attempt %d of %d failed: %s)",
                    dataset.SOPInstanceUID,
                    destination.name,
                    attempt,
                    self.attempts,
                    result.outcome.value,
                )
                delay *= 2
            results[destination.name] = result
        return results
