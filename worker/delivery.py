"""The outbox: deliver produced objects to each destination until it takes them.

Every (object, destination) pair is a row in the state store. One :class:`DeliveryWorker`
per destination takes its due deliveries one at a time, so a slow or dead destination
delays only its own. A failed attempt is retried with exponential backoff and jitter
(:class:`RetryPolicy`, ``[delivery]`` in the configuration) until ``give_up_after_s`` has
passed since it was queued; then it is ``failed`` (shown by ``ossa status``) until
``ossa retry``. A destination that refuses the object itself (:func:`is_permanent`) would
refuse a retry of the same bytes again: that delivery is ``failed`` at once.

The object is sent with the SOP Instance UID it was recorded with, so an attempt repeated
after a crash (sent, not yet recorded) gives the PACS the same object again, which it keeps
once.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom import Dataset

from dicom_io.send import DimsePeer, SendOutcome, SendResult, send_c_store
from dicom_io.stow import StowRsPeer, send_stow_rs
from dicom_io.tls import ClientTls
from worker.config import (
    DeliveryConfig,
    Destination,
    DicomwebAccess,
    DimseDestination,
    DimseSource,
    StowRsDestination,
)
from worker.spool import Spool
from worker.store import Delivery, DeliveryState, StateStore, StoreError

logger = logging.getLogger(__name__)

#: DIMSE failure statuses that say "try later" (PS3.4 Table B.2-1: Refused: Out of Resources).
_TRANSIENT_STATUSES = range(0xA700, 0xA800)


class Sender(Protocol):
    """A destination: a name and a way to send one dataset there."""

    @property
    def name(self) -> str:
        """The destination's name in the configuration."""
        ...

    def send(self, dataset: Dataset) -> SendResult:
        """Send one dataset; never raises for a network problem."""
        ...


@dataclass(frozen=True)
class DimseSender:
    """A ``type = "dimse"`` destination: C-STORE to a Storage SCP (PS3.4 B)."""

    destination: DimseDestination
    calling_ae_title: str

    @property
    def name(self) -> str:
        """The destination's name."""
        return self.destination.name

    def send(self, dataset: Dataset) -> SendResult:
        """C-STORE ``dataset`` to the destination (over DICOM TLS with ``[destinations.tls]``)."""
        return send_c_store(dataset, dimse_peer(self.destination),
                            calling_ae_title=self.calling_ae_title)


def dimse_peer(destination: DimseDestination | DimseSource) -> DimsePeer:
    """The DIMSE peer of a ``type = "dimse"`` destination or source, with its TLS settings.

    The TLS files are read at each association (:class:`dicom_io.tls.ClientTls`), so a
    renewed certificate is used without a restart.
    """
    tls = destination.tls
    return DimsePeer(
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        timeout_s=destination.timeout_s,
        tls=None if tls is None else ClientTls(
            ca=tls.ca, cert=tls.cert, key=tls.key, verify_hostname=tls.verify_hostname
        ),
    )


def stow_rs_peer(destination: DicomwebAccess) -> StowRsPeer:
    """The DICOMweb service of a ``type = "stowrs"`` destination or a DICOMweb source."""
    return StowRsPeer(
        url=destination.url,
        auth=destination.auth,
        username=destination.username,
        secret_file=destination.secret_file,
        secret_env=destination.secret_env,
        verify_tls=destination.verify_tls,
        ca_bundle=destination.ca_bundle,
        timeout_s=destination.timeout_s,
    )


@dataclass(frozen=True)
class StowRsSender:
    """A ``type = "stowrs"`` destination: STOW-RS to a DICOMweb service (PS3.18 10.5).

    The secret is read at each send (:mod:`dicom_io.stow`), so a rotated one is picked up.
    """

    destination: StowRsDestination

    @property
    def name(self) -> str:
        """The destination's name."""
        return self.destination.name

    def send(self, dataset: Dataset) -> SendResult:
        """STOW-RS ``dataset`` to the destination."""
        try:
            peer = stow_rs_peer(self.destination)
        except ValueError as exc:  # e.g. a port out of range, which the config lets through
            return SendResult(SendOutcome.REFUSED, None, f"destination {self.name}: {exc}")
        return send_stow_rs(dataset, peer)


def make_sender(destination: Destination, *, calling_ae_title: str) -> Sender:
    """The sender of a ``[[destinations]]`` entry, by its ``type``.

    ``calling_ae_title`` is our AE title for DIMSE destinations; STOW-RS has none.
    """
    if isinstance(destination, StowRsDestination):
        return StowRsSender(destination)
    return DimseSender(destination, calling_ae_title)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to give up.

    Parameters
    ----------
    initial_interval_s : float
        Wait after the first failed attempt.
    max_interval_s : float
        Cap of the wait, which doubles after each failed attempt.
    give_up_after_s : float
        A delivery not done this long after it was queued is ``failed``.
    """

    initial_interval_s: float
    max_interval_s: float
    give_up_after_s: float

    def __post_init__(self) -> None:
        for name in ("initial_interval_s", "max_interval_s", "give_up_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.initial_interval_s > self.max_interval_s:
            raise ValueError("initial_interval_s must not exceed max_interval_s")

    @classmethod
    def from_config(cls, config: DeliveryConfig) -> RetryPolicy:
        """The policy of a ``[delivery]`` section."""
        return cls(
            config.retry_initial_interval_s, config.retry_max_interval_s, config.give_up_after_s
        )

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) failed attempts.

        Exponential (``initial * 2**(n-1)``), capped at ``max_interval_s``, with "equal
        jitter": a uniformly random wait between half and all of it, so that many
        deliveries that failed together do not all return at once.
        """
        if failed_attempts < 1:
            raise ValueError(f"failed_attempts must be >= 1, got {failed_attempts!r}")
        growth = 2.0 ** min(failed_attempts - 1, 60)
        base = min(self.max_interval_s, self.initial_interval_s * growth)
        return base / 2 + rng.uniform(0, base / 2)


def is_permanent(result: SendResult) -> bool:
    """Whether a failed send is the destination refusing the object itself (not retried).

    One rule for both protocols: an outcome ``REFUSED`` whose status is not "Refused: Out
    of Resources" (``0xA7xx``, PS3.4 Table B.2-1). For C-STORE the status is the DIMSE
    status; for STOW-RS it is the instance's Failure Reason (same codes) or ``None``, and
    :mod:`dicom_io.stow` already maps the HTTP answers that mean "try later" (408, 429, 5xx
    but 501 and 505) and every network or TLS failure to ``ABORTED`` or ``UNREACHABLE``, so
    a ``REFUSED`` HTTP answer (400, 401, 403, 404, 409, 413, 415...) needs an operator.
    """
    return result.outcome is SendOutcome.REFUSED and (
        result.status is None or result.status not in _TRANSIENT_STATUSES
    )


def _read_object(path: Path, sop_uid: str) -> Dataset | str:
    """The object at ``path``, or why it cannot be sent (missing, unreadable or damaged).

    A file cut short after its File Meta Information still reads, as a data set without
    its UIDs: it is refused here, not sent (nor retried forever, ahead of the destination's
    other deliveries).
    """
    try:
        dataset = pydicom.dcmread(path)
        held = str(dataset.get("SOPInstanceUID", "") or "")
        has_class = "SOPClassUID" in dataset
    except Exception as exc:  # pydicom raises many types for a damaged file
        return f"object file unreadable: {type(exc).__name__}"
    if held != sop_uid or not has_class:
        return f"object file damaged: SOP Class or SOP Instance UID {sop_uid} missing"
    return dataset


class DeliveryWorker:
    """Delivers the due objects of one destination, one at a time.

    Parameters
    ----------
    sender : Sender
        The destination.
    store, spool
        The outbox rows and the objects' files.
    policy : RetryPolicy
        Backoff and give-up.
    stop : threading.Event
        Ends :meth:`run` after the attempt in progress.
    wake : threading.Event, optional
        Set when a new delivery may be due (e.g. a report was just recorded).
    poll_interval_s : float
        Longest wait between looks at the store (picks up ``ossa retry`` from another
        process).
    rng : random.Random, optional
        Jitter source.
    """

    def __init__(
        self,
        sender: Sender,
        store: StateStore,
        spool: Spool,
        policy: RetryPolicy,
        stop: threading.Event,
        *,
        wake: threading.Event | None = None,
        poll_interval_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.sender = sender
        self.store = store
        self.spool = spool
        self.policy = policy
        self.stop = stop
        self.wake = wake or threading.Event()
        self.poll_interval_s = poll_interval_s
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        """The destination's name."""
        return self.sender.name

    def run_once(self) -> bool:
        """Attempt the oldest due delivery; return whether there was one."""
        delivery = self.store.due_delivery(self.name)
        if delivery is None:
            return False
        dataset = _read_object(self.spool.path(delivery.path), delivery.sop_uid)
        if isinstance(dataset, str):
            logger.error("Delivery of %s to %s failed: %s", delivery.sop_uid, self.name, dataset)
            self.store.record_attempt(
                delivery.delivery_id, state=DeliveryState.FAILED, outcome="lost", detail=dataset
            )
            return True
        result = self.sender.send(dataset)
        self._record(delivery, result)
        return True

    def _record(self, delivery: Delivery, result: SendResult) -> None:
        if result.ok:
            if not self.store.record_attempt(
                delivery.delivery_id, state=DeliveryState.DELIVERED,
                outcome=result.outcome.value, detail=result.detail,
            ):
                _lease_lost(delivery, self.name)
                return
            logger.info(
                "Delivered %s of study %s to %s", delivery.sop_uid, delivery.study_uid, self.name
            )
            return
        attempts = delivery.attempts + 1
        now = self.store.now()
        retry_at = now + self.policy.delay(attempts, self._rng)
        if is_permanent(result):
            state, why = DeliveryState.FAILED, "refused by the destination"
        elif retry_at - delivery.queued_at > self.policy.give_up_after_s:
            state, why = DeliveryState.FAILED, f"gave up after {attempts} attempts"
        else:
            state, why = DeliveryState.PENDING, f"retry in {retry_at - now:.0f} s"
        if not self.store.record_attempt(
            delivery.delivery_id, state=state, outcome=result.outcome.value,
            detail=result.detail, next_attempt=retry_at,
        ):
            _lease_lost(delivery, self.name)
            return
        log = logger.error if state is DeliveryState.FAILED else logger.warning
        log(
            "Delivery of %s of study %s to %s: attempt %d %s (%s); %s",
            delivery.sop_uid, delivery.study_uid, self.name, attempts, result.outcome.value,
            result.detail, why,
        )

    def run(self) -> None:
        """Deliver until ``stop`` is set; waits for the next due delivery in between."""
        while not self.stop.is_set():
            try:
                if self.run_once():
                    continue
                due = self.store.next_attempt(self.name)
            except StoreError as exc:  # e.g. the store stayed locked: try again later
                logger.error("Destination %s: state store error: %s", self.name, exc)
                due = None
            except Exception:  # the worker must outlive any one delivery
                logger.exception("Destination %s: unexpected error", self.name)
                due = None
            wait = self.poll_interval_s
            if due is not None:
                wait = min(wait, max(0.0, due - self.store.now()))
            if self.wake.wait(wait):
                self.wake.clear()


def _lease_lost(delivery: Delivery, destination: str) -> None:
    """Log an attempt whose outcome this node could no longer record: the delivery's lease
    passed to another node (this one stalled longer than the lease), which sends it again."""
    logger.warning("Delivery of %s of study %s to %s: attempt not recorded, the delivery is "
                   "no longer this node's", delivery.sop_uid, delivery.study_uid, destination)
