"""QIDO-RS and WADO-RS: find studies and their instances on a DICOMweb archive, retrieve them.

Implements the user-agent side of the Search Transaction (PS3.18 10.6) with
:mod:`dicomweb_client` and of the Retrieve Transaction for instances (PS3.18 10.4), streamed:
the answer, ``multipart/related; type="application/dicom"``, goes through the multipart
parser as it arrives and each part is spooled (:mod:`dicom_io.multipart`), so neither a study
nor a large instance is ever held whole in memory.

Requests share :func:`dicom_io.stow.request` with STOW-RS: the same authentication, TLS
settings, secret handling and mapping of every failure to a
:class:`~dicom_io.send.SendResult` (``UNREACHABLE`` and ``ABORTED`` are worth retrying;
``REFUSED``, e.g. HTTP 401, needs an operator). Nothing here raises for a network, TLS or
HTTP problem.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicom_io.multipart import DICOM, MultipartError, Part, PartCollector
from dicom_io.send import SendOutcome, SendResult
from dicom_io.stow import StowRsPeer, hint, http_outcome, http_status_text, request

logger = logging.getLogger(__name__)

#: Ask for each instance as the archive holds it (PS3.18 8.7.3.5.2: ``*`` accepts any
#: transfer syntax); :data:`EXPLICIT_LITTLE` when Ossa cannot decode what it holds.
ANY_TRANSFER_SYNTAX = "*"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
#: Results asked for per QIDO-RS request, and most requests of one search.
PAGE = 200
MAX_PAGES = 500
#: Bytes read from the answer at a time.
_CHUNK = 1 << 16

_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_SOP_CLASS = "00080016"
_STUDY_INSTANCES = "00201208"  # Number of Study Related Instances


@dataclass(frozen=True)
class FoundStudy:
    """A study a QIDO-RS search returned: its UID and how many instances the archive holds
    (None when it did not say)."""

    study_uid: str
    instances: int | None


@dataclass(frozen=True)
class FoundInstance:
    """An instance a QIDO-RS search returned."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


class AnswerTooLargeError(ValueError):
    """A WADO-RS answer grew past the limit given to :func:`retrieve_instance`."""


def _value(item: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def qido_date_range(since: float | None) -> str | None:
    """The Study Date range matching (PS3.4 C.2.2.2.5) of studies dated on or after the day
    of ``since`` (seconds since the epoch): ``"20261207-"``; None for no bound.

    The day is this machine's local one: Study Date is the modality's local date, and a
    radiology department's archive and its worker share a time zone.
    """
    if since is None:
        return None
    day = datetime.datetime.fromtimestamp(max(since, 0.0)).date()
    return f"{day:%Y%m%d}-"


def _paged(search: Callable[[int, int], list[dict[str, Any]]], key: str,
           ) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, asked for a page (``limit``, ``offset``) at a time.

    A page shorter than :data:`PAGE` is the last. dicomweb-client's own ``get_remaining``
    asks until a page comes back empty, which never happens with an archive that ignores
    ``offset`` (Orthanc's DICOMweb plugin 1.7 does without a ``limit``): a page that brings
    nothing new ends the search too, as does :data:`MAX_PAGES`.
    """
    found: dict[str, dict[str, Any]] = {}
    for number in range(MAX_PAGES):
        page = search(PAGE, number * PAGE)
        new = {str(_value(row, key)): row for row in page if _value(row, key)}
        if not set(new) - set(found):
            break
        found.update(new)
        if len(page) < PAGE:
            break
    else:
        logger.warning("A QIDO-RS search stopped after %d pages of %d", MAX_PAGES, PAGE)
    return list(found.values())


def _searched(peer: StowRsPeer, what: str, found: list[dict[str, Any]]) -> Any:
    """The ``answer`` of a search: success with the count, or the HTTP failure."""
    def answer(response: requests.Response, returned: object) -> SendResult:
        code = response.status_code
        outcome = http_outcome(code)
        if outcome is SendOutcome.SUCCESS:
            if not isinstance(returned, list):
                return SendResult(SendOutcome.ABORTED, None,
                                  f"{peer.target}: {what}: the answer could not be read",
                                  http_status=code)
            found.extend(returned)
            return SendResult(SendOutcome.SUCCESS, None,
                              f"{peer.target}: {what}: {len(returned)} found", http_status=code)
        advice = hint(response, outcome)
        return SendResult(outcome, None,
                          f"{peer.target} answered {http_status_text(response)} to {what}"
                          + (f" ({advice})" if advice else ""), http_status=code)
    return answer


def find_studies(
    peer: StowRsPeer,
    *,
    modality: str,
    since: float | None,
    filters: Mapping[str, str] | None = None,
) -> tuple[SendResult, list[FoundStudy]]:
    """Search for the studies of ``modality`` dated on or after the day of ``since``.

    One QIDO-RS ``GET {url}/studies?ModalitiesInStudy=...&StudyDate=...`` and the pages that
    follow it (``limit``/``offset``, until a page comes back short), with ``filters`` as
    further matching keys.

    Returns
    -------
    tuple of (SendResult, list of FoundStudy)
        The outcome and, when it is a success, the studies.
    """
    search: dict[str, Any] = {"ModalitiesInStudy": modality, **(filters or {})}
    dates = qido_date_range(since)
    if dates is not None:
        search["StudyDate"] = dates
    rows: list[dict[str, Any]] = []
    result = request(
        peer,
        lambda client, _: _paged(lambda limit, offset: client.search_for_studies(
            search_filters=search, fields=["NumberOfStudyRelatedInstances"], limit=limit,
            offset=offset,
        ), _STUDY_UID),
        _searched(peer, f"studies of {modality}", rows),
    )
    studies = []
    for row in rows:
        uid = _value(row, _STUDY_UID)
        if not uid:
            continue
        count = _value(row, _STUDY_INSTANCES)
        try:
            instances = None if count is None else int(count)
        except (TypeError, ValueError):
            instances = None
        studies.append(FoundStudy(str(uid), instances))
    return result, studies


def find_instances(peer: StowRsPeer, study_uid: str) -> tuple[SendResult, list[FoundInstance]]:
    """Search for every instance of a study (QIDO-RS ``GET {url}/studies/{uid}/instances``,
    every page)."""
    rows: list[dict[str, Any]] = []
    result = request(
        peer,
        lambda client, _: _paged(lambda limit, offset: client.search_for_instances(
            study_instance_uid=study_uid, limit=limit, offset=offset,
        ), _SOP_UID),
        _searched(peer, f"instances of study {study_uid}", rows),
    )
    instances = []
    for row in rows:
        series, sop, sop_class = (_value(row, t) for t in (_SERIES_UID, _SOP_UID, _SOP_CLASS))
        if series and sop:
            instances.append(FoundInstance(study_uid, str(series), str(sop),
                                           str(sop_class or "")))
    return result, instances


def _parse(chunks: Iterable[bytes], content_type: str, tmp_dir: str, max_bytes: int,
           ) -> list[Part]:
    """The DICOM parts of an answer body streamed from ``chunks``.

    Raises
    ------
    MultipartError
        If the body is neither ``application/dicom`` nor a complete multipart message.
    AnswerTooLargeError
        Past ``max_bytes``.
    """
    media, params = parse_options_header(content_type)
    media_type = media.decode("latin-1").lower()
    collector = PartCollector(tmp_dir)
    write: Callable[[bytes], object]
    finish: Callable[[], object]
    try:
        if media_type == DICOM:  # one instance, not wrapped in a multipart message
            collector.begin_whole(DICOM)
            write, finish = collector.write, collector.end_whole
        elif media_type == "multipart/related" and params.get(b"boundary"):
            parser = MultipartParser(params[b"boundary"], collector.callbacks())  # type: ignore
            write, finish = parser.write, parser.finalize
        else:
            raise MultipartError(f"the answer is {media_type or 'untyped'}, not DICOM")
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise AnswerTooLargeError(f"the answer is larger than {max_bytes} bytes")
            if chunk:
                write(chunk)
        finish()
        if not collector.ended:
            raise MultipartError("the answer ends before its closing boundary")
    except MultipartParseError as exc:
        collector.close()
        raise MultipartError(str(exc)) from None
    except BaseException:
        collector.close()
        raise
    return collector.parts


def retrieve_instance(
    peer: StowRsPeer,
    instance: FoundInstance,
    *,
    tmp_dir: str,
    max_bytes: int,
    transfer_syntax: str = ANY_TRANSFER_SYNTAX,
) -> tuple[SendResult, list[Part]]:
    """Retrieve one instance with WADO-RS (PS3.18 10.4), streamed into spooled parts.

    ``GET {url}/studies/{study}/series/{series}/instances/{sop}`` accepting
    ``multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}``.

    Returns
    -------
    tuple of (SendResult, list of Part)
        The outcome and, for a success, the DICOM parts (one, normally); the caller closes
        each part's ``content``. A connection lost mid-answer or a damaged answer is
        ``ABORTED`` (retried); an answer past ``max_bytes`` is ``REFUSED``.
    """
    url = (f"{peer.url}/studies/{instance.study_uid}/series/{instance.series_uid}"
           f"/instances/{instance.sop_uid}")
    accept = f'multipart/related; type="{DICOM}"; transfer-syntax={transfer_syntax}'
    parts: list[Part] = []
    problem: list[str] = []

    def call(_: DICOMwebClient, session: requests.Session) -> int:
        with session.get(url, headers={"Accept": accept}, stream=True,
                         timeout=(peer.timeout_s, peer.timeout_s)) as response:
            response.raise_for_status()
            try:
                parts.extend(_parse(response.iter_content(_CHUNK),
                                    response.headers.get("Content-Type", ""), tmp_dir, max_bytes))
            except (MultipartError, AnswerTooLargeError) as exc:
                problem.append(f"{type(exc).__name__}: {exc}")
                raise
        return len(parts)

    def answer(response: requests.Response, returned: object) -> SendResult:
        code = response.status_code
        outcome = http_outcome(code)
        head = (f"{peer.target} answered {http_status_text(response)} to WADO-RS of"
                f" {instance.sop_uid}")
        if outcome is SendOutcome.SUCCESS:
            if isinstance(returned, int) and returned:
                return SendResult(SendOutcome.SUCCESS, None, head, http_status=code)
            why = problem[0] if problem else "the answer was cut short"
            too_large = problem and problem[0].startswith(AnswerTooLargeError.__name__)
            return SendResult(SendOutcome.REFUSED if too_large else SendOutcome.ABORTED, None,
                              f"{head}: {why}", http_status=code)
        advice = hint(response, outcome)
        return SendResult(outcome, None, head + (f" ({advice})" if advice else ""),
                          http_status=code)

    result = request(peer, call, answer)
    if not result.ok:
        for part in parts:
            part.content.close()
        parts = []
    return result, parts
