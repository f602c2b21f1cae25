"""Admission: the one protocol-neutral step that decides whether a received instance is kept.

C-STORE (:mod:`worker.handlers`) and STOW-RS (:mod:`worker.http.stow`) are two thin adapters
over :func:`admit`: each turns what arrived into a :class:`Submission` (the File Meta
Information, a file holding the data set as the sender encoded it, the sender's name) and
gets back a :class:`Decision`. :func:`admit` reads the data set's header (its attributes up
to the pixel data, whose value is skipped, not read: a deflated data set is inflated within
a bound), checks its UIDs, recognises Ossa's own objects, checks the pixel module, then
copies the data set durably into the spool and records it
(:meth:`worker.intake.Intake.accept`) before it answers success, so both protocols accept
and refuse exactly the same things. It never raises, never decodes pixel data and never
runs inference.

The status of a decision is a DIMSE C-STORE status (PS3.4 Table B.2-1); STOW-RS answers the
same code as the instance's Failure Reason (PS3.18 Table 10.5.3-1 uses these codes). Each
decision is told to :attr:`worker.intake.Intake.observer` (the metrics), once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from io import BytesIO
from typing import BinaryIO

from pydicom import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom.status import Status

from dicom_io.pixels import PixelDataError, check_pixel_module
from dicom_io.transfer_syntax import TRANSFER_SYNTAXES, InflateLimitError, inflate
from worker.intake import Accepted, Intake, Kind, Received
from worker.logsafe import printable
from worker.store import StoreError

logger = logging.getLogger(__name__)

#: Element values larger than this are skipped, not read, when a data set's header is read
#: on receipt: the pixel data, above all, is copied to the spool without being loaded.
DEFER_BYTES = 256 * 1024
#: Raw deflate (RFC 1951) grows incompressible data by 5 bytes per stored block of at most
#: 65535 bytes: a deflated data set longer than this bound on its inflated size cannot
#: inflate within ``listener.max_inflated_mb``, and is refused without being read.
_DEFLATE_OVERHEAD = 5 / 65535


class StoreStatus(IntEnum):
    """Statuses of a storage request (PS3.4 Table B.2-1; PS3.18 Table 10.5.3-1).

    When each is answered is tabled in ``docs/conformance.md``, 4.2.1.4.1.3.
    """

    SUCCESS = Status.SUCCESS
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4.2.1.4 "Refused: SOP Class not supported"
    # Also for a deflated data set that inflates past listener.max_inflated_mb: a limit of
    # this receiver, not a defect of the data set, lifted by raising the setting.
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # STOW-RS only (PS3.18 Table 10.5.3-1): DIMSE negotiates transfer syntaxes beforehand.
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class StoreOutcome(StrEnum):
    """What became of one received instance (the association audit and metrics count them)."""

    STORED = "stored"  # a new instance, durable and recorded
    DUPLICATE = "duplicate"  # its SOP Instance UID was already stored: acknowledged
    OWN_OBJECT = "own"  # an SR or capture Ossa produced, forwarded back: acknowledged
    REFUSED = "refused"  # answered with a failure status


class Refusal(StrEnum):
    """Why an instance was refused (a metrics label; the status says it to the sender)."""

    UNDECODABLE = "undecodable"  # not DICOM, or the data set cannot be parsed
    INFLATE_LIMIT = "inflate_limit"  # deflated past listener.max_inflated_mb
    TRANSFER_SYNTAX = "transfer_syntax"  # a transfer syntax Ossa does not decode
    MISSING_UIDS = "missing_uids"  # no Study, Series or SOP Instance UID
    INVALID_UID = "invalid_uid"  # a Study, Series or SOP Instance UID that is not a UID
    UID_MISMATCH = "uid_mismatch"  # the data set's SOP Instance UID is not the one sent
    SOP_CLASS = "sop_class"  # not a radiograph Ossa reads (a foreign SR, a CT...)
    PIXEL_DATA = "pixel_data"  # unusable image pixel module
    STORE_UNAVAILABLE = "store_unavailable"  # the state store could not be read
    WRITE_FAILED = "write_failed"  # the file or its row could not be written
    ERROR = "error"  # an unexpected error (logged with its traceback)


@dataclass(frozen=True)
class Submission:
    """An instance as it arrived, whatever the protocol.

    Parameters
    ----------
    protocol : str
        ``"dimse"``, ``"stowrs"``, ``"wadors"`` or ``"cget"`` (a metrics label).
    calling_aet : str
        The sender: the calling AE title, or ``"STOW-RS"`` (recorded in the state store and
        in the file's Source Application Entity Title).
    file_meta : pydicom.FileMetaDataset
        File Meta Information; its Transfer Syntax UID is the encoding of the data set.
    source : binary file
        Seekable; from ``offset`` to its end, the data set as sent (still deflated for
        Deflated Explicit VR Little Endian): pynetdicom's file of a C-STORE data set, or
        the temporary file of a STOW-RS part. :func:`admit` reads and moves its position.
    offset : int
        Where the data set starts in ``source`` (after the File Meta Information).
    sop_class_uid : str
        The SOP Class the sender named (C-STORE's Affected SOP Class UID, STOW-RS's Media
        Storage SOP Class UID).
    sop_uid : str or None
        The SOP Instance UID the sender named, which the data set must carry; None when
        the sender named none.
    origin : str or None
        The configured source (``[[sources]]``) the instance was retrieved from; None for
        an instance sent to Ossa.
    """

    protocol: str
    calling_aet: str
    file_meta: FileMetaDataset
    source: BinaryIO
    offset: int
    sop_class_uid: str
    sop_uid: str | None
    origin: str | None = None


@dataclass(frozen=True)
class Decision:
    """What :func:`admit` decided: the status to answer, the outcome and the UIDs known."""

    status: StoreStatus
    comment: str
    outcome: StoreOutcome
    reason: Refusal | None = None
    sop_class_uid: str = ""
    sop_uid: str = ""
    study_uid: str = ""

    @property
    def ok(self) -> bool:
        """Whether the instance was acknowledged (stored, re-sent or Ossa's own)."""
        return self.outcome is not StoreOutcome.REFUSED


def read_part10(source: BinaryIO) -> FileMetaDataset:
    """Read the File Meta Information of a DICOM file (PS3.10: preamble, ``DICM``, meta),
    leaving ``source`` at the first byte of the data set, which is not read.

    The preamble and ``DICM`` may be missing (dicomweb-client with pydicom 3 sends the meta
    without them, and DCMTK and Orthanc read such files); the File Meta Information with its
    Transfer Syntax UID may not: without it the encoding of the data set is unknown. The
    file Ossa writes always has all three (:func:`file_meta_bytes`).

    Raises
    ------
    ValueError
        If ``source`` has no File Meta Information with a Transfer Syntax UID.
    """
    try:
        read_preamble(source, True)  # past "DICM", or back at the start when it is missing
        # pydicom's own reader of the meta group (dcmread uses it); it leaves the position
        # at the first element of the data set.
        meta = _read_file_meta_info(source)
    except Exception as exc:  # pydicom raises several types for a file that is not DICOM
        raise ValueError(f"not a DICOM file ({type(exc).__name__})") from None
    if "TransferSyntaxUID" not in meta:
        raise ValueError("not a DICOM file: no File Meta Information with a Transfer Syntax UID")
    return meta


def file_meta_bytes(meta: FileMetaDataset, calling_aet: str) -> bytes:
    """The preamble, ``DICM`` and File Meta Information (PS3.10 7.1) of a received file,
    naming the sender (Source Application Entity Title); the data set follows as sent."""
    meta.SourceApplicationEntityTitle = calling_aet
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return bytes(buffer.getvalue())


def refuse(
    intake: Intake,
    protocol: str,
    status: StoreStatus,
    reason: Refusal,
    comment: str,
    *,
    sop_class_uid: str = "",
    sop_uid: str = "",
    study_uid: str = "",
) -> Decision:
    """A refusal decided by an adapter before :func:`admit` (e.g. a STOW-RS part that is
    not a DICOM file), told to the observer like every decision."""
    decision = Decision(status, comment, StoreOutcome.REFUSED, reason, sop_class_uid,
                        sop_uid, study_uid)
    _observe(intake, protocol, decision)
    return decision


def admit(intake: Intake, submission: Submission, *, max_inflated_bytes: int) -> Decision:
    """Decide on one instance: write and record it, acknowledge it, or refuse it.

    Parameters
    ----------
    intake : Intake
        Copies (fsync + rename) and records the instance before success is returned;
        recognises Ossa's own objects forwarded back.
    submission : Submission
        The instance as it arrived.
    max_inflated_bytes : int
        Largest size a Deflated Explicit VR Little Endian data set may inflate to
        (``listener.max_inflated_mb``).

    Returns
    -------
    Decision
        Acknowledged (``STORED``, ``DUPLICATE``, ``OWN_OBJECT``) with ``SUCCESS``, or
        refused with one of the failure statuses of :class:`StoreStatus`. Which status
        answers which defect is tabled once, in ``docs/conformance.md`` (4.2.1.4.1.3,
        "Status codes returned"; 4.5.1 for STOW-RS). Never raises.
    """
    try:
        decision = _admit(intake, submission, max_inflated_bytes)
    except Exception:  # an adapter must never see an exception (a DIMSE handler must not raise)
        logger.exception("Storage of SOP Instance %s failed unexpectedly",
                         printable(submission.sop_uid or ""))
        decision = Decision(StoreStatus.CANNOT_UNDERSTAND, "unexpected error processing data set",
                            StoreOutcome.REFUSED, Refusal.ERROR, submission.sop_class_uid,
                            submission.sop_uid or "")
    _observe(intake, submission.protocol, decision)
    return decision


def _observe(intake: Intake, protocol: str, decision: Decision) -> None:
    if intake.observer is None:
        return
    try:
        intake.observer(protocol, decision.outcome.value,
                        "" if decision.reason is None else decision.reason.value)
    except Exception:  # metrics must never change what the sender is told
        logger.exception("Admission observer failed")


#: The characters of a UI value (PS3.5 9.1 and Table 6.2-1: "0"-"9" and "."), at most 64.
_UI_VALUE = re.compile(r"[0-9.]{1,64}")


def is_ui_value(uid: str) -> bool:
    """Whether ``uid`` is made of the characters a UID may hold (digits and dots), at most 64
    of them.

    Looser than PS3.5 9.1 on purpose: components with leading zeros, a frequent departure of
    real senders, pass (the spool hashes such a UID into its file name). A value with any other
    character (``/``, ``..`` path segments, NUL, letters, non-ASCII) cannot be referenced by
    a valid SR, nor safely shown, and is refused.
    """
    return _UI_VALUE.fullmatch(uid) is not None


class TruncatedError(ValueError):
    """A data set whose last element claims more bytes than were received."""


def _read_header(submission: Submission, max_inflated_bytes: int) -> Dataset:
    """The submitted data set, its values above :data:`DEFER_BYTES` skipped, not read.

    A deflated one is inflated within ``max_inflated_bytes`` and parsed as Explicit VR
    Little Endian (PS3.5 A.5); pydicom and pynetdicom would inflate it without a bound.

    Raises
    ------
    InflateLimitError
        If a deflated data set inflates, or would inflate, past the bound.
    TruncatedError
        If the data set ends inside an element (its header or its value).
    """
    source = submission.source
    end = source.seek(0, 2)
    source.seek(submission.offset)
    syntax = UID(submission.file_meta.TransferSyntaxUID)
    stream: BinaryIO = source
    if syntax == DeflatedExplicitVRLittleEndian:
        if end - submission.offset > max_inflated_bytes * (1 + _DEFLATE_OVERHEAD) + 1024:
            raise InflateLimitError("deflated data set is longer than the inflate bound")
        inflated = inflate(source.read(), max_inflated_bytes)
        stream, end = BytesIO(inflated), len(inflated)
        implicit, little = False, True
    else:
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    start = stream.tell()
    ds = read_dataset(stream, implicit, little, defer_size=DEFER_BYTES)
    last_tell = start  # where the value of the last element in the stream starts
    last_end: int | None = start  # where it ends (None: undefined length)
    for tag in ds.keys():
        element = ds.get_item(tag, keep_deferred=True)  # raw: a skipped value stays unread
        length = getattr(element, "length", 0xFFFFFFFF)
        tell = getattr(element, "value_tell", 0)
        # undefined length (a sequence, encapsulated pixel data): ends with a delimiter
        value_end = None if length == 0xFFFFFFFF else tell + length
        if value_end is not None and value_end > end:
            raise TruncatedError(f"{element.tag} claims {length} bytes; the data set ends first")
        if tell >= last_tell:
            last_tell, last_end = tell, value_end
    # pydicom stops without a word at a last element header cut short (fewer than the 8 or
    # 12 bytes of a tag, VR and length): bytes left after the last whole element.
    if last_end is not None and last_end < end:
        raise TruncatedError(f"{end - last_end} byte(s) after the last element are not an element")
    ds.file_meta = submission.file_meta
    return ds


def _admit(intake: Intake, submission: Submission, max_inflated_bytes: int) -> Decision:
    sent_uid = submission.sop_uid or ""
    sop_class = submission.sop_class_uid

    def refused(status: StoreStatus, reason: Refusal, comment: str, study_uid: str = "",
                sop_uid: str = sent_uid) -> Decision:
        return Decision(status, comment, StoreOutcome.REFUSED, reason, sop_class, sop_uid,
                        study_uid)

    syntax = str(submission.file_meta.get("TransferSyntaxUID", "") or "")
    if syntax not in TRANSFER_SYNTAXES:
        logger.warning("Refused SOP Instance %s: transfer syntax %s is not supported",
                       printable(sent_uid), printable(syntax) or "(none)")
        return refused(StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED, Refusal.TRANSFER_SYNTAX,
                       "transfer syntax not supported")
    try:
        ds = _read_header(submission, max_inflated_bytes)
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        manufacturer = str(ds.get("Manufacturer", "") or "")
    except InflateLimitError:
        logger.warning(
            "Refused SOP Instance %s: deflated data set inflates past listener.max_inflated_mb"
            " (%d bytes)",
            printable(sent_uid),
            max_inflated_bytes,
        )
        return refused(StoreStatus.OUT_OF_RESOURCES, Refusal.INFLATE_LIMIT,
                       "deflated data set exceeds listener.max_inflated_mb")
    except TruncatedError as exc:
        logger.warning("Refused SOP Instance %s: data set is truncated (%s)", printable(sent_uid),
                       exc)
        return refused(StoreStatus.CANNOT_UNDERSTAND, Refusal.UNDECODABLE,
                       "data set is truncated")
    except Exception as exc:  # pydicom decodes lazily and raises many types
        logger.warning(
            "Refused SOP Instance %s: data set cannot be decoded (%s)", printable(sent_uid),
            type(exc).__name__,
        )
        return refused(StoreStatus.CANNOT_UNDERSTAND, Refusal.UNDECODABLE,
                       "data set cannot be decoded")

    if not study_uid or not sop_uid:
        logger.warning("Refused SOP Instance %s: Study or SOP Instance UID is missing",
                       printable(sent_uid))
        return refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, Refusal.MISSING_UIDS,
                       "Study/SOP Instance UID missing", study_uid, sop_uid or sent_uid)
    if submission.sop_uid is not None and sop_uid != submission.sop_uid:
        logger.warning(
            "Refused SOP Instance %s: data set carries SOP Instance UID %s", printable(sent_uid),
            printable(sop_uid),
        )
        return refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, Refusal.UID_MISMATCH,
                       "SOP Instance UID differs from request", study_uid)
    if not series_uid:
        logger.warning("Refused SOP Instance %s of study %s: Series Instance UID is missing",
                       printable(sop_uid), printable(study_uid))
        return refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, Refusal.MISSING_UIDS,
                       "Series Instance UID missing", study_uid, sop_uid)
    for name, uid in (("SOP Instance", sop_uid), ("Study Instance", study_uid),
                      ("Series Instance", series_uid)):
        if not is_ui_value(uid):
            logger.warning("Refused SOP Instance %s of study %s: %s UID %s is not a UID"
                           " (PS3.5 9.1: digits and dots, at most 64 characters)",
                           printable(sop_uid), printable(study_uid), name, printable(uid))
            return refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, Refusal.INVALID_UID,
                           f"{name} UID is not a valid UID", study_uid, sop_uid)
    received = Received(
        calling_aet=submission.calling_aet,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        manufacturer=manufacturer,
        source=submission.origin,
    )

    def done(outcome: StoreOutcome) -> Decision:
        return Decision(StoreStatus.SUCCESS, "", outcome, None, sop_class, sop_uid, study_uid)

    try:
        kind = intake.classify(received)
    except StoreError as exc:
        logger.error("Could not look up SOP Instance %s: %s", sop_uid, exc)
        return refused(StoreStatus.OUT_OF_RESOURCES, Refusal.STORE_UNAVAILABLE,
                       "state store unavailable", study_uid, sop_uid)
    if kind is Kind.OWN_OBJECT:
        logger.info(
            "Acknowledged SOP Instance %s of study %s: an object Ossa produced; not reported",
            sop_uid,
            study_uid,
        )
        return done(StoreOutcome.OWN_OBJECT)
    if kind is Kind.NOT_READ:
        logger.warning(
            "Refused SOP Instance %s of study %s: not a radiograph Ossa reads", sop_uid, study_uid
        )
        return refused(StoreStatus.SOP_CLASS_NOT_SUPPORTED, Refusal.SOP_CLASS,
                       "Ossa reads CR, DX and SC images", study_uid, sop_uid)
    try:
        check_pixel_module(ds)
    except PixelDataError as exc:  # also a malformed value: check_pixel_module raises no other
        logger.warning("Refused SOP Instance %s of study %s: %s", sop_uid, study_uid, exc)
        return refused(StoreStatus.CANNOT_UNDERSTAND, Refusal.PIXEL_DATA, str(exc), study_uid,
                       sop_uid)

    meta = submission.file_meta
    if "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = UID(sop_class)
    if "MediaStorageSOPInstanceUID" not in meta:
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    try:
        submission.source.seek(submission.offset)
        accepted = intake.accept(
            received, file_meta_bytes(meta, submission.calling_aet), submission.source
        )
    except (OSError, StoreError) as exc:
        logger.error("Could not store SOP Instance %s of study %s: %s", sop_uid, study_uid, exc)
        return refused(StoreStatus.OUT_OF_RESOURCES, Refusal.WRITE_FAILED,
                       "instance could not be written to disk", study_uid, sop_uid)
    if accepted is Accepted.DUPLICATE:
        logger.info(
            "SOP Instance %s of study %s was already stored; not a new instance", sop_uid, study_uid
        )
        return done(StoreOutcome.DUPLICATE)
    logger.info("Stored SOP Instance %s of study %s from %s", sop_uid, study_uid,
                submission.calling_aet)
    return done(StoreOutcome.STORED)
