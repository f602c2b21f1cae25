"""DIMSE event handlers: validate, write durably, note the study, return a status.

Handlers get their collaborators as bound arguments (``evt_handlers=[(evt.EVT_C_STORE,
handle_store, [spool, assembler])]``), return fast and never raise: every failure becomes a
named DIMSE status (PS3.4 B.2.3 for the Storage Service Class, PS3.7 C.4.2.1.4) and a log
line naming the SOP Instance UID. Inference never runs here.
"""

from __future__ import annotations

import logging
from enum import IntEnum

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.status import Status

from dicom_io.pixels import PixelDataError, check_pixel_module
from worker.assembly import StudyAssembler
from worker.spool import Spool, safe_name

logger = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses Ossa uses (PS3.4 Table B.2-1)."""

    SUCCESS = Status.SUCCESS
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


def _status(code: StoreStatus, comment: str) -> Dataset:
    """A status dataset with an Error Comment (0000,0902), LO so at most 64 characters."""
    ds = Dataset()
    ds.Status = int(code)
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: evt.Event) -> int:
    """C-ECHO (Verification, PS3.4 A): always success."""
    return int(Status.SUCCESS)


def handle_store(event: evt.Event, spool: Spool, assembler: StudyAssembler) -> int | Dataset:
    """C-STORE: make the instance durable, then acknowledge it.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The ``EVT_C_STORE`` event.
    spool : Spool
        Where the instance is written (fsync + rename) before success is returned.
    assembler : StudyAssembler
        Told that the instance's study received an instance.

    Returns
    -------
    int or pydicom.Dataset
        ``SUCCESS``; ``CANNOT_UNDERSTAND`` for a data set that cannot be decoded or has
        unusable pixel data; ``DATASET_DOES_NOT_MATCH_SOP_CLASS`` for missing UIDs;
        ``OUT_OF_RESOURCES`` when the instance cannot be written.
    """
    requested_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    try:
        return _store(event, spool, assembler, requested_uid)
    except Exception:  # a handler must never raise: pynetdicom would answer 0xC211 blind
        logger.exception("C-STORE of SOP Instance %s failed unexpectedly", requested_uid)
        return _status(StoreStatus.CANNOT_UNDERSTAND, "unexpected error processing data set")


def _store(
    event: evt.Event, spool: Spool, assembler: StudyAssembler, requested_uid: str
) -> int | Dataset:
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    except Exception as exc:  # pydicom decodes lazily and raises many types
        logger.warning(
            "Refused SOP Instance %s: data set cannot be decoded (%s)",
            requested_uid,
            type(exc).__name__,
        )
        return _status(StoreStatus.CANNOT_UNDERSTAND, "data set cannot be decoded")

    if not study_uid or not sop_uid:
        logger.warning(
            "Refused SOP Instance %s: Study or SOP Instance UID is missing", requested_uid
        )
        return _status(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Study/SOP Instance UID missing"
        )
    if sop_uid != requested_uid:
        logger.warning(
            "Refused SOP Instance %s: data set carries SOP Instance UID %s",
            requested_uid,
            sop_uid,
        )
        return _status(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from request"
        )

    try:
        check_pixel_module(ds)
    except PixelDataError as exc:
        logger.warning("Refused SOP Instance %s of study %s: %s", sop_uid, study_uid, exc)
        return _status(StoreStatus.CANNOT_UNDERSTAND, f"pixel data: {exc}")
    except Exception as exc:
        logger.warning(
            "Refused SOP Instance %s of study %s: malformed image attributes (%s)",
            sop_uid,
            study_uid,
            type(exc).__name__,
        )
        return _status(StoreStatus.CANNOT_UNDERSTAND, "malformed image pixel attributes")

    try:
        spool.store(study_uid, sop_uid, event.encoded_dataset(include_meta=True))
    except OSError as exc:
        logger.error(
            "Could not store SOP Instance %s of study %s: %s", sop_uid, study_uid, exc.strerror
        )
        return _status(StoreStatus.OUT_OF_RESOURCES, "instance could not be written to disk")

    assembler.note(safe_name(study_uid))
    logger.info("Stored SOP Instance %s of study %s", sop_uid, study_uid)
    return int(StoreStatus.SUCCESS)
