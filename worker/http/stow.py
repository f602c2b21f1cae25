"""STOW-RS inbound: ``POST /dicomweb/studies`` (PS3.18 10.5, Store Instances).

The request is ``multipart/related; type="application/dicom"``, one DICOM PS3.10 file per
part. The body is streamed through python-multipart's parser and counted: past
``[http] max_upload_mb`` the request is refused with 413 and nothing of it is stored (parts
wait in temporary files under the spool's ``tmp/`` until the whole body has arrived). Each
part then goes through :func:`worker.admission.admit`, the step C-STORE uses, as sent by the
calling "AE" :data:`STOW_AET`: the same instances are stored, acknowledged or refused, into
the same spool and study assembly.

The answer is a Store Instances Response in DICOM JSON (PS3.18 10.5.3): Referenced SOP
Sequence (0008,1199) for the instances stored or acknowledged, Failed SOP Sequence (0008,1198)
with a Failure Reason (0008,1197) (the C-STORE status: 0xC000, 0xA900, 0x0122, 0xA700, 0xC122)
for the others; 200 when every instance was stored, 202 when some failed, 409 when all did.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, cast

from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker.admission import (
    Decision,
    Refusal,
    StoreStatus,
    Submission,
    admit,
    read_part10,
    refuse,
)
from worker.intake import Intake

logger = logging.getLogger(__name__)

#: The calling AE title recorded for instances received by STOW-RS (a study is assembled per
#: sender and Study Instance UID, so a study sent by STOW-RS is reported on its own).
STOW_AET = "STOW-RS"
PROTOCOL = "stowrs"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: A part is kept in memory up to this size, then in a temporary file.
_PART_IN_MEMORY = 8 * 1024 * 1024


class UploadTooLargeError(Exception):
    """The request body is larger than ``[http] max_upload_mb``."""


class MultipartError(ValueError):
    """The body is not a well-formed multipart message."""


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its content, spooled."""

    headers: dict[str, str]
    content: IO[bytes]
    size: int = 0

    @property
    def media_type(self) -> str:
        value, _ = parse_options_header(self.headers.get("content-type", DICOM))
        return value.decode("latin-1").lower()


@dataclass
class _Collector:
    """python-multipart callbacks that gather the parts into spooled temporary files."""

    tmp_dir: str
    parts: list[Part] = field(default_factory=list)
    ended: bool = False
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _headers: dict[str, str] = field(default_factory=dict)
    _current: Part | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._headers = {}
        self._current = None

    def _header_end(self) -> None:
        name = bytes(self._field).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        content = tempfile.SpooledTemporaryFile(max_size=_PART_IN_MEMORY, dir=self.tmp_dir)
        self._current = Part(self._headers, content)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.content.write(data[start:end])
            self._current.size += end - start

    def _part_end(self) -> None:
        if self._current is not None:
            self.parts.append(self._current)
        self._current = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        for part in self.parts:
            part.content.close()
        if self._current is not None:
            self._current.content.close()


async def read_parts(request: Request, boundary: bytes, limit: int, tmp_dir: str) -> list[Part]:
    """Stream the request body through the multipart parser, at most ``limit`` bytes.

    Raises
    ------
    UploadTooLargeError
        As soon as more than ``limit`` bytes have arrived (the rest is not read).
    MultipartError
        If the body is not a complete multipart message.
    """
    collector = _Collector(tmp_dir)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise UploadTooLargeError(received)
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if not collector.ended:
            raise MultipartError("the body ends before the closing boundary")
    except MultipartParseError as exc:
        collector.close()
        raise MultipartError(str(exc)) from None
    except BaseException:
        collector.close()
        raise
    return collector.parts


def _admit_part(intake: Intake, part: Part, max_inflated_bytes: int) -> Decision:
    """Admit one part as C-STORE admits an instance (blocking: file and database I/O)."""
    if part.media_type != DICOM:
        return refuse(intake, PROTOCOL, StoreStatus.CANNOT_UNDERSTAND, Refusal.UNDECODABLE,
                      f"part is {part.media_type}, not {DICOM}")
    content = cast(BinaryIO, part.content)  # a SpooledTemporaryFile
    size = content.seek(0, 2)
    content.seek(0)
    try:
        meta = read_part10(content)
    except ValueError as exc:
        logger.warning("STOW-RS: refused a part of %d bytes: %s", size, exc)
        return refuse(intake, PROTOCOL, StoreStatus.CANNOT_UNDERSTAND, Refusal.UNDECODABLE,
                      str(exc))
    sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "") or None
    submission = Submission(
        protocol=PROTOCOL,
        calling_aet=STOW_AET,
        file_meta=meta,
        source=content,
        offset=content.tell(),
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "") or ""),
        sop_uid=sop_uid,
    )
    return admit(intake, submission, max_inflated_bytes=max_inflated_bytes)


def admit_parts(intake: Intake, parts: list[Part], max_inflated_bytes: int) -> list[Decision]:
    """Admit every part in order, closing each one's temporary file."""
    decisions = []
    try:
        for part in parts:
            decisions.append(_admit_part(intake, part, max_inflated_bytes))
    finally:
        for part in parts:
            part.content.close()
    return decisions


def store_response(decisions: list[Decision]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the DICOM JSON Store Instances Response (PS3.18 10.5.3)."""
    response = Dataset()
    referenced, failed = [], []
    for decision in decisions:
        item = Dataset()
        item.ReferencedSOPClassUID = decision.sop_class_uid
        item.ReferencedSOPInstanceUID = decision.sop_uid
        if decision.ok:
            referenced.append(item)
        else:
            item.FailureReason = int(decision.status)
            failed.append(item)
    if referenced:
        response.ReferencedSOPSequence = referenced
    if failed:
        response.FailedSOPSequence = failed
    status = 200 if not failed else (409 if not referenced else 202)
    return status, response.to_json_dict()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def stow(
    request: Request, *, intake: Intake, max_upload_bytes: int, max_inflated_bytes: int
) -> Response:
    """``POST /dicomweb/studies`` after authentication: check the media type and size,
    read the parts, admit each and answer the Store Instances Response."""
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    part_type = params.get(b"type", DICOM.encode()).decode("latin-1").strip().lower()
    if media_type.lower() != b"multipart/related" or part_type != DICOM:
        return _error(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    boundary = params.get(b"boundary")
    if not boundary:
        return _error(400, "multipart/related without a boundary")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_upload_bytes:
        logger.warning("STOW-RS: refused a request of %s bytes (max_upload_mb)", length)
        return _error(413, f"request larger than {max_upload_bytes} bytes ([http] max_upload_mb)")
    try:
        parts = await read_parts(request, boundary, max_upload_bytes, str(intake.spool.tmp))
    except UploadTooLargeError:
        logger.warning("STOW-RS: refused a request past %d bytes (max_upload_mb)",
                       max_upload_bytes)
        return _error(413, f"request larger than {max_upload_bytes} bytes ([http] max_upload_mb)")
    except MultipartError as exc:
        return _error(400, f"malformed multipart body: {exc}")
    if not parts:
        return _error(400, "no body part")
    decisions = await run_in_threadpool(admit_parts, intake, parts, max_inflated_bytes)
    status, body = store_response(decisions)
    stored = sum(d.ok for d in decisions)
    logger.info("STOW-RS: %d instance(s) received, %d acknowledged, %d failed (HTTP %d)",
                len(decisions), stored, len(decisions) - stored, status)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)
