"""STOW-RS: store one dataset on a DICOMweb service and say clearly what happened.

Implements the user-agent side of the Store Transaction (PS3.18 10.5) with
:mod:`dicomweb_client`: one ``POST {url}/studies`` of a ``multipart/related;
type="application/dicom"`` message per dataset. Like :func:`dicom_io.send.send_c_store`,
every outcome is a :class:`~dicom_io.send.SendResult` value; nothing raises for a network,
TLS or HTTP problem.

How HTTP answers become outcomes (``SendResult.http_status`` keeps the HTTP status code;
``SendResult.status`` the instance's Failure or Warning Reason, PS3.18 Table 10.5.3-1,
which uses the DIMSE status codes of PS3.4 B.2.3):

============================================  ===============  ==========================
answer                                        outcome          retried?
============================================  ===============  ==========================
2xx, instance stored without warning          SUCCESS          -
2xx, instance stored with a Warning Reason,   WARNING          -
202 without a Failed SOP item for it
2xx or 409, instance in Failed SOP Sequence   REFUSED          no, except Failure Reason
409 without a Store Instances Response                         0xA7xx (Out of Resources)
408, 425, 429, 500, 5xx but 501 and 505       ABORTED          yes
502, 503, 504                                 UNREACHABLE      yes
any other status (400, 401, 403, 404, 405,    REFUSED          no: an operator must act
413, 415, 501, a redirect...)
no connection, TLS failure                    UNREACHABLE      yes
connection lost or no answer in time          ABORTED          yes
no secret, or an unusable one                 REFUSED          no
============================================  ===============  ==========================

A Store Instances Response is read in DICOM JSON, or in XML for a 2xx answer; a 409 in XML
is a refusal without a Failure Reason.

The secret (password or bearer token) is read from its file or environment variable at each
request, so a rotated secret is used without a restart. It is never logged, never put in a
``SendResult`` detail nor in an exception text.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from dicomweb_client import DICOMwebClient
from pydicom import Dataset
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

from dicom_io.send import SendOutcome, SendResult

logger = logging.getLogger(__name__)

Auth = Literal["none", "basic", "bearer"]

#: Media types of a Store Instances Response that are read here; dicomweb-client reads the
#: XML one (``application/dicom+xml``) of a 2xx answer. No Accept header is sent: servers
#: answer in their default type, and some (Orthanc) log an error for a list of types.
_JSON_TYPES = ("application/dicom+json", "application/json")

#: HTTP answers that say "not now" rather than "not this"; the rest of 4xx and 5xx refuse.
_TRY_LATER = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_EARLY,
                        HTTPStatus.TOO_MANY_REQUESTS})
_NOT_SERVED = frozenset({HTTPStatus.NOT_IMPLEMENTED, HTTPStatus.HTTP_VERSION_NOT_SUPPORTED})
_GATEWAY = frozenset({HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE,
                      HTTPStatus.GATEWAY_TIMEOUT})

#: What an operator should look at after a refusing HTTP status.
_HINTS: dict[int, str] = {
    HTTPStatus.UNAUTHORIZED: "credentials refused",
    HTTPStatus.FORBIDDEN: "this user may not store here",
    HTTPStatus.NOT_FOUND: "no DICOMweb service at this URL",
    HTTPStatus.METHOD_NOT_ALLOWED: "no STOW-RS at this URL",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "the object is larger than the server accepts",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "the server does not accept application/dicom",
}

#: The message is built in memory by dicomweb-client anyway; sending it with a
#: Content-Length instead of chunked transfer encoding suits more servers and proxies.
_NO_CHUNKING = 1 << 40


@dataclass(frozen=True)
class StowRsPeer:
    """A DICOMweb service that stores instances (STOW-RS, PS3.18 10.5).

    Parameters
    ----------
    url : str
        The service root, e.g. ``https://pacs.example.org/dicom-web``; instances are
        POSTed to ``{url}/studies``. A trailing ``/`` is dropped.
    auth : {"none", "basic", "bearer"}
        HTTP authentication: none, Basic (``username`` and a password) or a Bearer token.
    username : str, optional
        The Basic user name.
    secret_file : pathlib.Path, optional
        File holding the password or token (trailing line breaks are ignored).
    secret_env : str, optional
        Environment variable holding the password or token. Give exactly one of
        ``secret_file`` and ``secret_env`` when ``auth`` is not ``"none"``.
    verify_tls : bool
        Verify the server's certificate (on by default).
    ca_bundle : pathlib.Path, optional
        PEM file of the certificate authorities to trust instead of the system's.
    timeout_s : float
        Both the connection and the read timeout of each request.
    """

    url: str
    auth: Auth = "none"
    username: str | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            parts = None
        # The URL is not repeated: it might carry a user:password@.
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host and valid port")
        object.__setattr__(self, "url", self.url.rstrip("/"))
        if self.auth not in ("none", "basic", "bearer"):
            raise ValueError(f'auth must be "none", "basic" or "bearer", got {self.auth!r}')
        sources = (self.secret_file is not None) + (self.secret_env is not None)
        if self.auth != "none" and sources != 1:
            raise ValueError(f'auth = "{self.auth}" needs one of secret_file and secret_env')
        if self.auth == "basic" and not self.username:
            raise ValueError('auth = "basic" needs a username')
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")

    @property
    def target(self) -> str:
        """The URL as shown in logs and details: any ``user:password@`` is left out."""
        return _shown(self.url)

    @property
    def secret_source(self) -> str:
        """Where the secret is read from, in words (never the secret itself)."""
        if self.secret_file is not None:
            return f"secret file {self.secret_file}"
        return f"environment variable {self.secret_env}"


def _shown(url: str) -> str:
    """``url`` without ``user:password@``, query or fragment, for logs and details."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Authorization(requests.auth.AuthBase):
    """Sets a fixed ``Authorization`` header; its repr does not show it."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "<Authorization header>"


class _SecretError(Exception):
    """The secret cannot be used; the message names its source, never its value."""


def _read_secret(peer: StowRsPeer) -> str:
    """The password or token of ``peer``, read now from its file or environment variable."""
    if peer.secret_file is not None:
        try:
            secret = peer.secret_file.read_text(encoding="utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise _SecretError(f"{peer.secret_source} is not UTF-8 text") from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise _SecretError(f"{peer.secret_source} cannot be read: {why}") from None
    else:
        assert peer.secret_env is not None  # StowRsPeer guarantees one source
        value = os.environ.get(peer.secret_env)
        if value is None:
            raise _SecretError(f"{peer.secret_source} is not set")
        secret = value
    if not secret:
        raise _SecretError(f"{peer.secret_source} is empty")
    # An HTTP header cannot carry control characters; requests and http.client would raise
    # with the header value (the secret) in the message.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        raise _SecretError(f"{peer.secret_source} holds control characters (a line break?)")
    return secret


def _authorization(peer: StowRsPeer) -> tuple[_Authorization | None, str | None]:
    """The ``Authorization`` of ``peer`` and the secret in it (to keep out of details)."""
    if peer.auth == "none":
        return None, None
    secret = _read_secret(peer)
    if peer.auth == "bearer":
        if not secret.isascii() or " " in secret:
            raise _SecretError(f"{peer.secret_source}: a bearer token is ASCII without spaces")
        return _Authorization(f"Bearer {secret}"), secret
    assert peer.username is not None  # StowRsPeer guarantees it for basic
    if ":" in peer.username:
        raise _SecretError("a Basic user name cannot contain ':' (RFC 7617)")
    # RFC 7617 2.1: UTF-8 user-pass (requests would encode it as Latin-1).
    token = base64.b64encode(f"{peer.username}:{secret}".encode()).decode("ascii")
    return _Authorization(f"Basic {token}"), secret


class _Session(requests.Session):
    """A session whose own ``verify`` wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    requests lets those environment variables replace the session's CA bundle, and even
    turn verification back on, unless ``verify`` is given to each request, which
    dicomweb-client does not do. An explicit ``ca_bundle`` or ``verify_tls = false`` must
    hold; with neither, the environment's bundle (else certifi's) is used as usual.
    """

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        merged: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert
        )
        if self.verify is not True:
            merged["verify"] = self.verify
        return merged


def _client(peer: StowRsPeer, session: requests.Session, auth: _Authorization | None,
            responses: list[requests.Response]) -> DICOMwebClient:
    """A dicomweb-client of ``peer`` on ``session``, which notes every HTTP response."""
    session.auth = auth
    session.verify = str(peer.ca_bundle) if peer.verify_tls and peer.ca_bundle else peer.verify_tls
    # requests would follow a 301/302 of a POST with a GET, which a QIDO-RS service answers
    # with 200: a STOW-RS "success" that stored nothing. A redirect is refused instead.
    session.max_redirects = 0

    def keep(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        responses.append(response)
        return response

    session.hooks["response"].append(keep)
    client = DICOMwebClient(
        peer.url, session=session, chunk_size=_NO_CHUNKING,
        timeout=(peer.timeout_s, peer.timeout_s),
    )
    # The outbox retries with its own backoff; a retry inside one attempt would hold the
    # destination's worker for minutes.
    client.set_http_retry_params(retry=False)
    return client


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (urllib3 reasons, arguments, causes), depth first."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__,
                 *current.args]
        stack.extend(reversed([e for e in inner if isinstance(e, BaseException)]))


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _causes(exc) if isinstance(e, kind)), None)


def _network_result(exc: Exception, peer: StowRsPeer) -> SendResult:
    """The result of a request that got no HTTP answer."""
    target = peer.target
    if isinstance(exc, requests.exceptions.SSLError):
        verify = _first(exc, ssl.SSLCertVerificationError)
        if isinstance(verify, ssl.SSLCertVerificationError):
            why = verify.verify_message or "untrusted certificate"
            return SendResult(SendOutcome.UNREACHABLE, None,
                              f"{target}: TLS certificate verification failed: {why}")
        handshake = _first(exc, ssl.SSLError)
        why = (getattr(handshake, "reason", None) or type(handshake or exc).__name__)
        return SendResult(
            SendOutcome.UNREACHABLE, None,
            f"{target}: TLS handshake failed ({str(why).replace('_', ' ').lower()}); "
            "is it an https server?",
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return SendResult(SendOutcome.UNREACHABLE, None,
                          f"{target}: no connection within {peer.timeout_s:g} s")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return SendResult(SendOutcome.ABORTED, None,
                          f"{target}: no answer within {peer.timeout_s:g} s")
    if isinstance(exc, requests.exceptions.ConnectionError):
        if _first(exc, urllib3.exceptions.NewConnectionError) is not None:
            why = next((e.strerror for e in _causes(exc)
                        if isinstance(e, OSError) and e.strerror), "no connection")
            if _first(exc, urllib3.exceptions.NameResolutionError) is not None:
                why = "host name not found"
            return SendResult(SendOutcome.UNREACHABLE, None, f"{target}: {why}")
        return SendResult(SendOutcome.ABORTED, None,
                          f"{target}: connection lost before an answer")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.TooManyRedirects):
        return SendResult(SendOutcome.REFUSED, None, f"{target}: {type(exc).__name__}")
    return SendResult(SendOutcome.ABORTED, None, f"{target}: {type(exc).__name__}")


def _reason(code: int) -> str:
    """``0xA900 (Data Set Does Not Match SOP Class)``: a Failure or Warning Reason."""
    _, text = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code) or ("", "")
    return f"0x{code:04X}" + (f" ({text})" if text else "")


def http_status_text(response: requests.Response) -> str:
    code = response.status_code
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def hint(response: requests.Response, outcome: SendOutcome) -> str | None:
    """What an operator should look at after ``response``."""
    if outcome is not SendOutcome.REFUSED:
        return "try later"
    location = response.headers.get("Location")
    if 300 <= response.status_code < 400 and location:
        try:
            return f"redirected to {_shown(urljoin(response.url, location))}; configure that URL"
        except ValueError:  # a Location with an invalid port
            return "redirected; configure the final URL"
    return _HINTS.get(response.status_code)


def http_outcome(code: int) -> SendOutcome:
    """What an HTTP status says, before any Store Instances Response is read."""
    if 200 <= code < 300:
        return SendOutcome.SUCCESS
    if code in _GATEWAY:
        return SendOutcome.UNREACHABLE
    if code in _TRY_LATER or (500 <= code < 600 and code not in _NOT_SERVED):
        return SendOutcome.ABORTED
    return SendOutcome.REFUSED


def _response_dataset(response: requests.Response) -> Dataset | None:
    """The Store Instances Response (PS3.18 Table 10.5.3-1) of a DICOM JSON answer."""
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type not in _JSON_TYPES:
        return None
    try:
        body = response.json()
        if isinstance(body, list) and len(body) == 1:
            body = body[0]
        return Dataset.from_json(body) if isinstance(body, dict) else None
    except Exception:  # a damaged body (JSON, or DICOM JSON pydicom cannot read)
        return None


def _code(*items: Dataset, keyword: str) -> int | None:
    """The first value of ``keyword`` (a US status code) among ``items``."""
    for item in items:
        value = item.get(keyword, None)
        try:
            if value is not None and value != "":
                return int(value)
        except (TypeError, ValueError):
            return None
    return None


def _instance_reason(answer: Dataset | None, sop_uid: str) -> tuple[str, int | None]:
    """Whether the answer lists the instance as ``"failed"`` or ``"stored"`` (else
    ``"unknown"``), with its Failure or Warning Reason."""
    if answer is None:
        return "unknown", None
    failed = list(answer.get("FailedSOPSequence", None) or [])
    stored = list(answer.get("ReferencedSOPSequence", None) or [])

    def ours(items: list[Dataset]) -> Dataset | None:
        for item in items:
            if str(item.get("ReferencedSOPInstanceUID", "")) == sop_uid:
                return item
        # One instance was sent: a lone item without a UID can only be about it.
        lone = len(failed) + len(stored) == 1 and len(items) == 1
        return items[0] if lone and "ReferencedSOPInstanceUID" not in items[0] else None

    item = ours(failed)
    if item is not None:
        return "failed", _code(item, keyword="FailureReason")
    item = ours(stored)
    if item is not None:  # a Warning Reason of the item, or of the whole answer
        return "stored", _code(item, answer, keyword="WarningReason")
    return "unknown", None


def _stored_result(
    response: requests.Response, returned: object, sop_uid: str, target: str
) -> SendResult:
    """The result of an HTTP answer to a STOW-RS request of one instance; ``returned`` is
    what dicomweb-client made of a 2xx answer."""
    code = response.status_code
    head = f"{target} answered {http_status_text(response)}"
    outcome = http_outcome(code)
    if outcome is SendOutcome.SUCCESS or code == HTTPStatus.CONFLICT:
        answer = _response_dataset(response)
        if answer is None and isinstance(returned, Dataset) and len(returned):
            answer = returned  # e.g. application/dicom+xml
        kind, reason = _instance_reason(answer, sop_uid)
        if kind == "failed" or code == HTTPStatus.CONFLICT:
            detail = f"{head}: instance not stored" + (
                f", Failure Reason {_reason(reason)}" if reason is not None else "")
            return SendResult(SendOutcome.REFUSED, reason, detail, http_status=code)
        if reason is not None or code == HTTPStatus.ACCEPTED:
            detail = f"{head}: stored" + (
                f" with Warning Reason {_reason(reason)}" if reason is not None
                else " with warnings it did not name")
            return SendResult(SendOutcome.WARNING, reason, detail, http_status=code)
        return SendResult(SendOutcome.SUCCESS, None, f"{head}: stored", http_status=code)
    advice = hint(response, outcome)
    return SendResult(outcome, None, head + (f" ({advice})" if advice else ""), http_status=code)


def _scrubbed(result: SendResult, secret: str | None) -> SendResult:
    """``result`` with the secret, should any text have carried it, masked."""
    if not secret or secret not in result.detail:
        return result
    return SendResult(result.outcome, result.status, result.detail.replace(secret, "***"),
                      http_status=result.http_status)


def request(
    peer: StowRsPeer,
    call: Callable[[DICOMwebClient, requests.Session], object],
    answer: Callable[[requests.Response, object], SendResult],
) -> SendResult:
    """Run ``call`` on a client of ``peer`` (and its session, authenticated and with the
    peer's TLS settings) and turn what happened into a result: ``answer`` reads the last HTTP
    response and what ``call`` returned; a request without an answer, a secret that cannot be
    read or a URL with credentials are results too. Nothing raises for a network, TLS or
    HTTP problem, and the secret is in no detail. QIDO-RS and WADO-RS
    (:mod:`dicom_io.wado`) go through here too."""
    parts = urlsplit(peer.url)
    if parts.username is not None or parts.password is not None:
        # dicomweb-client logs the full URL at DEBUG level: the password would be in the log.
        return SendResult(SendOutcome.REFUSED, None,
                          f"{peer.target}: url holds a user name or password; use auth with "
                          "secret_file or secret_env")
    try:
        auth, secret = _authorization(peer)
    except _SecretError as exc:
        return SendResult(SendOutcome.REFUSED, None, f"{peer.target}: {exc}")
    responses: list[requests.Response] = []
    failure: Exception | None = None
    returned: object = None
    with _Session() as session:
        try:
            client = _client(peer, session, auth, responses)
        except ValueError as exc:  # dicomweb-client's own URL check
            return SendResult(SendOutcome.REFUSED, None, f"{peer.target}: {exc}")
        try:
            returned = call(client, session)
        except (requests.RequestException, ValueError, TypeError, KeyError) as exc:
            # HTTPError for 4xx/5xx; the others before an answer, or reading a damaged one.
            failure = exc
    if responses:
        result = answer(responses[-1], returned)
    else:
        assert failure is not None
        result = _network_result(failure, peer)
    return _scrubbed(result, secret)


def send_stow_rs(dataset: Dataset, peer: StowRsPeer) -> SendResult:
    """Store ``dataset`` on ``peer`` with STOW-RS (PS3.18 10.5).

    Parameters
    ----------
    dataset : pydicom.Dataset
        A dataset with SOP Instance UID and File Meta Information (as read from a PS3.10
        file); it is sent as one ``application/dicom`` part.
    peer : StowRsPeer
        The DICOMweb service.

    Returns
    -------
    SendResult
        See the module's table; ``http_status`` is the HTTP status code when there was an
        answer.
    """
    sop_uid = str(dataset.get("SOPInstanceUID", ""))
    result = request(
        peer,
        lambda client, _: client.store_instances([dataset]),
        lambda response, returned: _stored_result(response, returned, sop_uid, peer.target),
    )
    log = logger.info if result.ok else logger.warning
    log("STOW-RS of %s to %s: %s", sop_uid, peer.target, result.detail)
    return result


def _probe_result(response: requests.Response, target: str) -> SendResult:
    code = response.status_code
    outcome = http_outcome(code)
    advice = hint(response, outcome) if outcome is not SendOutcome.SUCCESS else None
    detail = f"{target} answered {http_status_text(response)}" + (f" ({advice})" if advice else "")
    return SendResult(outcome, None, detail, http_status=code)


def probe_dicomweb(peer: StowRsPeer) -> SendResult:
    """Check that ``peer`` answers and takes our credentials, storing nothing.

    Sends the QIDO-RS search ``GET {url}/studies?limit=1`` (PS3.18 10.6) with the same
    authentication and TLS settings as :func:`send_stow_rs`.

    Returns
    -------
    SendResult
        ``SUCCESS`` for a 2xx answer; otherwise what the same answer to a STOW-RS request
        would be (``REFUSED`` for 401, 403 or 404, ``UNREACHABLE`` for a TLS failure...).
    """
    return request(
        peer,
        lambda client, _: client.search_for_studies(limit=1),
        lambda response, _: _probe_result(response, peer.target),
    )
