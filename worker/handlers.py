"""DIMSE event handlers: validate, write durably, note the study, return a status.

Handlers get their collaborators as bound arguments (``evt_handlers=[(evt.EVT_C_STORE,
handle_store, [intake, max_inflated_bytes])]``), return fast and never raise: every failure
becomes a named DIMSE status (PS3.4 B.2.3 for the Storage Service Class, PS3.7 C.4.2.1.4) and
a log line naming the SOP Instance UID. Inference never runs here.

The C-STORE handler is a thin adapter over :func:`worker.admission.admit`, the step STOW-RS
shares: what is decoded, checked, written and refused is decided there. A data set in
Deflated Explicit VR Little Endian is inflated there, within a bound, from the bytes received:
pynetdicom's ``event.dataset`` would inflate it without one.

The service receives with pynetdicom's ``STORE_RECV_CHUNKED_DATASET``
(:func:`worker.service.build_ae`): each data set is written to a temporary file as its
P-DATA fragments arrive (``event.dataset_path``), so that a large radiograph is never held in
memory; admission copies it from there into the spool. Without that option (an AE built
otherwise, as some tests do) the encoded data set in memory is admitted the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO
from typing import BinaryIO

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.status import Status

from worker.admission import (
    StoreOutcome,
    StoreStatus,
    Submission,
    admit,
    read_part10,
)
from worker.intake import Intake
from worker.logsafe import printable

__all__ = ["StoreObserver", "StoreOutcome", "StoreStatus", "handle_echo", "handle_store"]

logger = logging.getLogger(__name__)


#: Told the outcome of each C-STORE (:class:`worker.audit.AssociationAudit.count_store`).
StoreObserver = Callable[[evt.Event, StoreOutcome], None]


def _status(code: StoreStatus, comment: str) -> Dataset:
    """A status dataset with an Error Comment (0000,0902), LO so at most 64 characters."""
    ds = Dataset()
    ds.Status = int(code)
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: evt.Event) -> int:
    """C-ECHO (Verification, PS3.4 A): always success."""
    return int(Status.SUCCESS)


def handle_store(
    event: evt.Event, intake: Intake, max_inflated_bytes: int,
    observe: StoreObserver | None = None, origin: str | None = None,
) -> int | Dataset:
    """C-STORE: make the instance durable and recorded, then acknowledge it.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The ``EVT_C_STORE`` event.
    intake : Intake
        Writes the instance (fsync + rename) and records it in the state store before
        success is returned; recognises Ossa's own objects forwarded back.
    max_inflated_bytes : int
        Largest size a Deflated Explicit VR Little Endian data set may inflate to
        (``listener.max_inflated_mb``).
    observe : callable, optional
        Told the :class:`StoreOutcome` of the request (the association audit counts them).
    origin : str, optional
        The source (``[[sources]]``) of a C-GET whose sub-operations these are: the
        instance is recorded under its name, not the association's requestor (Ossa).

    Returns
    -------
    int or pydicom.Dataset
        ``SUCCESS`` (also for a re-sent instance, and for Ossa's own SR or secondary
        capture, which is acknowledged and not reported again); ``CANNOT_UNDERSTAND`` for a
        data set that cannot be decoded or has unusable pixel data (the comment names the
        attribute or transfer syntax); ``DATASET_DOES_NOT_MATCH_SOP_CLASS`` for missing
        UIDs; ``SOP_CLASS_NOT_SUPPORTED`` for an SR Ossa did not produce;
        ``OUT_OF_RESOURCES`` when the instance cannot be written or recorded, or a
        deflated data set inflates past ``max_inflated_bytes``.
    """
    requested_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    try:
        result = _store(event, intake, max_inflated_bytes, requested_uid, origin)
    except Exception:  # a handler must never raise: pynetdicom would answer 0xC211 blind
        logger.exception("C-STORE of SOP Instance %s failed unexpectedly",
                         printable(requested_uid))
        result = _status(StoreStatus.CANNOT_UNDERSTAND, "unexpected error processing data set")
    status: int | Dataset
    if isinstance(result, StoreOutcome):
        outcome, status = result, int(StoreStatus.SUCCESS)
    else:
        outcome, status = StoreOutcome.REFUSED, result
    if observe is not None:
        observe(event, outcome)
    return status


def _store(
    event: evt.Event, intake: Intake, max_inflated_bytes: int, requested_uid: str,
    origin: str | None,
) -> StoreOutcome | Dataset:
    """The outcome of an acknowledged instance, or the failure status to answer."""
    try:
        path = event.dataset_path  # STORE_RECV_CHUNKED_DATASET: a file pynetdicom wrote
    except AttributeError:
        path = None
    source: BinaryIO
    if path is None:
        source = BytesIO(event.encoded_dataset(include_meta=True))
    else:
        source = open(path, "rb")
    with source:
        # The File Meta Information pynetdicom made from the presentation context.
        meta = read_part10(source)
        submission = Submission(
            protocol="dimse" if origin is None else "cget",
            calling_aet=str(event.assoc.requestor.ae_title).strip() if origin is None
            else origin,
            origin=origin,
            file_meta=meta,
            source=source,
            offset=source.tell(),
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            sop_uid=requested_uid,
        )
        decision = admit(intake, submission, max_inflated_bytes=max_inflated_bytes)
    return decision.outcome if decision.ok else _status(decision.status, decision.comment)
