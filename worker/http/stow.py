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
from typing import Any, BinaryIO, cast

from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_io.multipart import DICOM, MultipartError, Part, PartCollector
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
DICOM_JSON = "application/dicom+json"
class UploadTooLargeError(Exception):
    """The request body is larger than ``[http] max_upload_mb``."""


async def read_parts(request: Request, boundary: bytes, limit: int, tmp_dir: str) -> list[Part]:
    """Stream the request body through the multipart parser, at most ``limit`` bytes.

    Raises
    ------
    UploadTooLargeError
        As soon as more than ``limit`` bytes have arrived (the rest is not read).
    MultipartError
        If the body is not a complete multipart message.
    """
    collector = PartCollector(tmp_dir)
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
