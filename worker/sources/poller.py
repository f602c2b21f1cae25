"""Polling a DICOMweb source: QIDO-RS for the studies changed since its watermark.

Each poll asks for the studies of each configured modality dated on or after the watermark
less ``overlap_s`` (a study stored while the previous poll ran, or dated a little earlier,
is still found), and queues the retrieval of each study that is new or now has another
number of instances (:meth:`worker.store.StateStore.note_study`). A poll that got every
answer moves the watermark to the moment it started; one that failed leaves it, and the next
poll asks again. In a cluster one node polls a source at a time
(:meth:`~worker.store.StateStore.claim_poll`).
"""

from __future__ import annotations

import logging
import threading

from dicom_io.send import SendResult
from dicom_io.stow import StowRsPeer
from dicom_io.wado import find_studies
from worker.config import DicomwebSource
from worker.store import StateStore, StoreError

logger = logging.getLogger(__name__)

#: Seconds in a day (the first poll looks back ``lookback_days``).
_DAY_S = 86400.0


class SourcePoller:
    """Polls one DICOMweb source every ``poll_interval_s``.

    Parameters
    ----------
    source : DicomwebSource
        The ``[[sources]]`` entry.
    peer : StowRsPeer
        Its URL, authentication and TLS settings.
    store : StateStore
        The watermark, the poll's claim and the retrievals queued.
    stop : threading.Event
        Ends :meth:`run`.
    wake : threading.Event, optional
        Set when a poll queued retrievals (the source's retrieval worker waits on it).
    """

    def __init__(self, source: DicomwebSource, peer: StowRsPeer, store: StateStore,
                 stop: threading.Event, *, wake: threading.Event | None = None) -> None:
        if source.poll_interval_s <= 0:
            raise ValueError(f"source {source.name} is not polled (poll_interval_s = 0)")
        self.source = source
        self.peer = peer
        self.store = store
        self.stop = stop
        self.wake = wake or threading.Event()

    @property
    def name(self) -> str:
        """The source's name."""
        return self.source.name

    def poll_once(self) -> int | None:
        """Poll now if the source's poll is due and no other node polls it.

        Returns
        -------
        int or None
            How many retrievals were queued; None when this node did not poll.
        """
        source = self.source
        mine, watermark = self.store.claim_poll(source.name, source.poll_interval_s)
        if not mine:
            return None
        # Whatever happens now, the claim is released (or, should the store be unreachable,
        # taken again by this node's next poll: claim_poll lets a node reclaim its own).
        outcome, detail, moved_to = "error", "poll interrupted", None
        queued = found = 0
        try:
            started = self.store.now()
            since = (watermark if watermark is not None
                     else started - source.lookback_days * _DAY_S) - source.overlap_s
            failure: SendResult | None = None
            for modality in source.modalities:
                result, studies = find_studies(self.peer, modality=modality, since=since,
                                               filters=source.filters)
                if not result.ok:
                    failure = result
                    break
                found += len(studies)
                for study in studies:
                    queued += self.store.note_study(source.name, study.study_uid,
                                                    study.instances)
            if failure is not None:
                logger.warning("Poll of source %s failed: %s", source.name, failure.detail)
                outcome, detail = failure.outcome.value, failure.detail
            else:
                outcome, moved_to = "success", started
                detail = f"{found} stud{'y' if found == 1 else 'ies'} found, {queued} queued"
                (logger.info if queued else logger.debug)("Poll of source %s: %s",
                                                          source.name, detail)
        finally:
            self.store.finish_poll(source.name, outcome=outcome, detail=detail,
                                   watermark=moved_to)
        if queued:
            self.wake.set()
        return queued

    def run(self) -> None:
        """Poll until ``stop`` is set, waking when the next poll is due."""
        while not self.stop.is_set():
            wait = self.source.poll_interval_s
            try:
                polled = self.poll_once() is not None
                due = self.store.seconds_until_poll(self.name)
                if due is not None:
                    # another node's poll that is due but still running: look again in a
                    # while, not at once
                    wait = min(wait, max(due, 0.05 if polled else 1.0))
            except StoreError as exc:
                logger.error("Source %s: state store error: %s", self.name, exc)
            except Exception:  # the poller must outlive any one poll
                logger.exception("Source %s: unexpected error while polling", self.name)
            self.stop.wait(wait)
