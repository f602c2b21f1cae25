"""DIMSE event handlers: validate, write durably, note the study, return a status.

Handlers get their collaborators as bound arguments (``evt_handlers=[(evt.EVT_C_STORE,
handle_store, [intake, max_inflated_bytes])]``), return fast and never raise: every failure
becomes a named DIMSE status (PS3.4 B.2.3 for the Storage Service Class, PS3.7 C.4.2.1.4) and
a log line naming the SOP Instance UID. Inference never runs here.

A data set in Deflated Explicit VR Little Endian is inflated here, within a bound, before
anything reads it: pynetdicom's ``event.dataset`` would inflate it without one.
"""

from __future__ import annotations

import logging
import sqlite3
from enum import IntEnum
from io import BytesIO

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dsutils import decode
from pynetdicom.status import Status

from dicom_io.pixels import PixelDataError, check_pixel_module
from dicom_io.transfer_syntax import InflateLimitError, inflate
from worker.intake import Accepted, Intake, Kind, Received

logger = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses Ossa uses (PS3.4 Table B.2-1)."""

    SUCCESS = Status.SUCCESS
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4.2.1.4 "Refused: SOP Class not supported"
    # Also for a deflated data set that inflates past listener.max_inflated_mb: a limit of
    # this receiver, not a defect of the data set, lifted by raising the setting.
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


def handle_store(event: evt.Event, intake: Intake, max_inflated_bytes: int) -> int | Dataset:
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
        return _store(event, intake, max_inflated_bytes, requested_uid)
    except Exception:  # a handler must never raise: pynetdicom would answer 0xC211 blind
        logger.exception("C-STORE of SOP Instance %s failed unexpectedly", requested_uid)
        return _status(StoreStatus.CANNOT_UNDERSTAND, "unexpected error processing data set")


def _received_dataset(event: evt.Event, max_inflated_bytes: int) -> Dataset:
    """The received data set, with the file meta of its presentation context.

    A deflated one is inflated from the raw bytes within ``max_inflated_bytes`` and parsed
    as Explicit VR Little Endian (PS3.5 A.5); ``event.dataset`` is never read for it.

    Raises
    ------
    InflateLimitError
        If a deflated data set inflates past the bound.
    """
    meta = event.file_meta
    if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        raw = getattr(event.request, "DataSet", None)
        if not isinstance(raw, BytesIO):
            raise TypeError("the deflated data set was not received in memory")
        inflated = inflate(raw.getvalue(), max_inflated_bytes)
        ds = decode(BytesIO(inflated), is_implicit_vr=False, is_little_endian=True)
    else:
        ds = event.dataset
    ds.file_meta = meta
    return ds


def _file_bytes(event: evt.Event, calling_aet: str) -> bytes:
    """The received data set as a DICOM file (PS3.10 7.1) whose meta names the sender."""
    meta = event.file_meta
    meta.SourceApplicationEntityTitle = calling_aet
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    buffer.write(event.encoded_dataset(include_meta=False))
    return bytes(buffer.getvalue())


def _store(
    event: evt.Event, intake: Intake, max_inflated_bytes: int, requested_uid: str
) -> int | Dataset:
    try:
        ds = _received_dataset(event, max_inflated_bytes)
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        manufacturer = str(ds.get("Manufacturer", "") or "")
    except InflateLimitError:
        logger.warning(
            "Refused SOP Instance %s: deflated data set inflates past listener.max_inflated_mb"
            " (%d bytes)",
            requested_uid,
            max_inflated_bytes,
        )
        return _status(
            StoreStatus.OUT_OF_RESOURCES, "deflated data set exceeds listener.max_inflated_mb"
        )
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
    calling_aet = str(event.assoc.requestor.ae_title).strip()
    received = Received(
        calling_aet=calling_aet,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=str(event.request.AffectedSOPClassUID),
        manufacturer=manufacturer,
    )
    try:
        kind = intake.classify(received)
    except sqlite3.Error as exc:
        logger.error("Could not look up SOP Instance %s: %s", sop_uid, exc)
        return _status(StoreStatus.OUT_OF_RESOURCES, "state store unavailable")
    if kind is Kind.OWN_OBJECT:
        logger.info(
            "Acknowledged SOP Instance %s of study %s: an object Ossa produced; not reported",
            sop_uid,
            study_uid,
        )
        return int(StoreStatus.SUCCESS)
    if kind is Kind.NOT_READ:
        logger.warning(
            "Refused SOP Instance %s of study %s: not a radiograph Ossa reads", sop_uid, study_uid
        )
        return _status(StoreStatus.SOP_CLASS_NOT_SUPPORTED, "Ossa reads CR, DX and SC images")
    try:
        check_pixel_module(ds)
    except PixelDataError as exc:
        logger.warning("Refused SOP Instance %s of study %s: %s", sop_uid, study_uid, exc)
        return _status(StoreStatus.CANNOT_UNDERSTAND, str(exc))
    except Exception as exc:
        logger.warning(
            "Refused SOP Instance %s of study %s: malformed image attributes (%s)",
            sop_uid,
            study_uid,
            type(exc).__name__,
        )
        return _status(StoreStatus.CANNOT_UNDERSTAND, "malformed image pixel attributes")

    try:
        accepted = intake.accept(received, _file_bytes(event, calling_aet))
    except (OSError, sqlite3.Error) as exc:
        logger.error("Could not store SOP Instance %s of study %s: %s", sop_uid, study_uid, exc)
        return _status(StoreStatus.OUT_OF_RESOURCES, "instance could not be written to disk")
    if accepted is Accepted.DUPLICATE:
        logger.info(
            "SOP Instance %s of study %s was already stored; not a new instance", sop_uid, study_uid
        )
    else:
        logger.info("Stored SOP Instance %s of study %s from %s", sop_uid, study_uid, calling_aet)
    return int(StoreStatus.SUCCESS)

