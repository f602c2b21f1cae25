"""dicom_io.stow: STOW-RS into Orthanc's DICOMweb plugin and every HTTP answer's outcome."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage

from dicom_io.send import SendOutcome, SendResult
from dicom_io.sr import build_sr
from dicom_io.stow import StowRsPeer, probe_dicomweb, send_stow_rs
from harness.peers import Orthanc, free_port
from models.serving.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from models.serving.taxonomy import MURA_TAXONOMY
from worker.delivery import is_permanent

# --- helpers shared with test_delivery and test_admin -------------------------------------

#: The one user of :class:`AuthOrthanc`.
ORTHANC_USER, ORTHANC_PASSWORD = "ossa", "s3cret"


def as_read(ds: Dataset) -> Dataset:
    """``ds`` written as a PS3.10 file and read back, as the outbox reads it from the spool."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def ossa_sr(source: Dataset) -> Dataset:
    """An Ossa SR (:func:`dicom_io.sr.build_sr`) of one assessed wrist radiograph."""
    prediction = StudyPrediction(
        images=(ImagePrediction("WRIST", 0.93, True, 0.87),),
        thresholds=tuple((name, 0.5) for name in MURA_TAXONOMY.assessed),
        algorithm=AlgorithmInfo(name="Ossa test", version="stow 1"),
    )
    return as_read(build_sr([source], prediction, taxonomy=MURA_TAXONOMY))


class AuthOrthanc(Orthanc):
    """An Orthanc whose REST API and DICOMweb need HTTP Basic ``ossa``/``s3cret``."""

    def __init__(self, workdir: Path, ossa_port: int) -> None:
        super().__init__(workdir, ossa_port, extra_config={
            "AuthenticationEnabled": True,
            "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        })

    def get(self, path: str) -> Any:
        """GET a REST resource, authenticated, and decode its JSON."""
        token = base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def sop_uids(self) -> set[str]:
        """SOP Instance UIDs of every instance it holds."""
        return {
            str(self.get(f"/instances/{iid}/simplified-tags")["SOPInstanceUID"])
            for iid in self.get("/instances")
        }


@pytest.fixture(scope="module")
def auth_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthOrthanc]:
    """An Orthanc with authentication, for this module."""
    peer = AuthOrthanc(tmp_path_factory.mktemp("orthanc-auth"), free_port())
    yield peer
    peer.stop()


def secret_file(directory: Path, secret: str) -> Path:
    """A secret file as an operator writes one (with a final line break)."""
    path = directory / "stow.secret"
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# --- a canned HTTP(S) server ------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Canned:
    """An in-process HTTP server answering every request with ``answer``."""

    url: str
    answer: tuple[int, str, bytes] = (200, "application/dicom+json", b"{}")
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[_Request] = field(default_factory=list)


@pytest.fixture
def canned() -> Iterator[Canned]:
    """A plain-HTTP :class:`Canned` server on loopback."""
    yield from _serve(None)


def _serve(tls: ssl.SSLContext | None) -> Iterator[Canned]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    scheme = "https" if tls else "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state = Canned(url=f"{scheme}://127.0.0.1:{server.server_address[1]}/dicom-web")
    server.canned = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        state: Canned = self.server.canned  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        state.requests.append(_Request(self.command, self.path, dict(self.headers), body))
        status, media_type, payload = state.answer
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in state.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: Any) -> None:
        pass


def store_response(
    sop_uid: str, *, failure: int | None = None, warning: int | None = None
) -> bytes:
    """A Store Instances Response (PS3.18 Table 10.5.3-1) about one instance, as DICOM JSON."""
    item = Dataset()
    item.ReferencedSOPClassUID = ComputedRadiographyImageStorage
    item.ReferencedSOPInstanceUID = sop_uid
    answer = Dataset()
    if failure is not None:
        item.FailureReason = failure
        answer.FailedSOPSequence = [item]
    else:
        if warning is not None:
            item.WarningReason = warning
        answer.ReferencedSOPSequence = [item]
    return json.dumps(answer.to_json_dict()).encode()


@pytest.fixture
def radiograph(make_radiograph: Callable[..., Dataset]) -> Dataset:
    """A CR instance as read from a file."""
    return as_read(make_radiograph())


# --- StowRsPeer -------------------------------------------------------------------------


def test_peer_drops_a_trailing_slash_and_hides_credentials_in_its_target() -> None:
    peer = StowRsPeer("https://user:pw@pacs.example.org:8443/dicom-web/")
    assert peer.url == "https://user:pw@pacs.example.org:8443/dicom-web"
    assert peer.target == "https://pacs.example.org:8443/dicom-web"
    assert StowRsPeer("http://[::1]/dicom-web").target == "http://[::1]/dicom-web"


def test_credentials_in_the_url_are_refused(canned: Canned, radiograph: Dataset) -> None:
    url = canned.url.replace("http://", "http://ossa:pa55@")
    result = send_stow_rs(radiograph, StowRsPeer(url, timeout_s=5))
    assert result == SendResult(
        SendOutcome.REFUSED, None,
        f"{canned.url}: url holds a user name or password; use auth with secret_file or "
        "secret_env",
    )
    assert canned.requests == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://pacs/dicom-web"}, "url must be an http:// or https:// URL"),
        ({"url": "http:///dicom-web"}, "url must be an http:// or https:// URL"),
        ({"url": "http://pacs:99999/dicom-web"}, "valid port"),
        ({"url": "http://pacs", "auth": "digest"}, 'auth must be "none", "basic" or "bearer"'),
        ({"url": "http://pacs", "auth": "bearer"}, "needs one of secret_file and secret_env"),
        ({"url": "http://pacs", "auth": "bearer", "secret_env": "A", "secret_file": Path("b")},
         "needs one of secret_file and secret_env"),
        ({"url": "http://pacs", "auth": "basic", "secret_env": "A"}, "needs a username"),
        ({"url": "http://pacs", "timeout_s": 0}, "timeout_s must be > 0"),
    ],
)
def test_invalid_peer_is_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StowRsPeer(**kwargs)


# --- into a real Orthanc ----------------------------------------------------------------


def _orthanc_copy(orthanc: Orthanc, ds: Dataset) -> Dataset:
    """The instance Orthanc holds with the SOP Instance UID of ``ds``, read from its file."""
    (item,) = [
        i for i in orthanc.instances_of_study(str(ds.StudyInstanceUID))
        if i["MainDicomTags"]["SOPInstanceUID"] == ds.SOPInstanceUID
    ]
    return pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{item['ID']}/file")))


def test_radiograph_round_trips_through_orthanc(
    orthanc: Orthanc, radiograph: Dataset
) -> None:
    result = send_stow_rs(radiograph, StowRsPeer(orthanc.url + "/dicom-web/", timeout_s=10))
    assert result == SendResult(
        SendOutcome.SUCCESS, None,
        f"{orthanc.url}/dicom-web answered HTTP 200 OK: stored", http_status=200,
    )
    back = _orthanc_copy(orthanc, radiograph)
    assert back.SOPInstanceUID == radiograph.SOPInstanceUID
    assert back.PixelData == radiograph.PixelData
    assert back.PatientName == radiograph.PatientName
    assert back == radiograph  # every element of the data set


def test_sr_round_trips_and_a_resend_is_kept_once(
    orthanc: Orthanc, radiograph: Dataset
) -> None:
    sr = ossa_sr(radiograph)
    peer = StowRsPeer(orthanc.url + "/dicom-web", timeout_s=10)
    assert send_stow_rs(sr, peer).outcome is SendOutcome.SUCCESS
    assert send_stow_rs(sr, peer).outcome is SendOutcome.SUCCESS  # e.g. after a crash
    assert orthanc.sr_sop_uids(str(sr.StudyInstanceUID)) == [sr.SOPInstanceUID]
    back = _orthanc_copy(orthanc, sr)
    assert back.SOPClassUID == sr.SOPClassUID
    assert back.ContentSequence == sr.ContentSequence
    assert back == sr


def test_large_object_is_sent_whole(
    orthanc: Orthanc, make_radiograph: Callable[..., Dataset]
) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1024, 768), dtype=np.uint8)
    ds = as_read(make_radiograph(image=image))
    assert len(ds.PixelData) > 1_000_000  # above dicomweb-client's chunk size
    result = send_stow_rs(ds, StowRsPeer(orthanc.url + "/dicom-web", timeout_s=30))
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)
    assert _orthanc_copy(orthanc, ds).PixelData == ds.PixelData


def test_unknown_path_is_refused(orthanc: Orthanc, radiograph: Dataset) -> None:
    result = send_stow_rs(radiograph, StowRsPeer(orthanc.url + "/no-such-root", timeout_s=10))
    assert result == SendResult(
        SendOutcome.REFUSED, None,
        f"{orthanc.url}/no-such-root answered HTTP 404 Not Found (no DICOMweb service at this "
        "URL)",
        http_status=404,
    )
    assert is_permanent(result)


def test_unreachable_url(radiograph: Dataset) -> None:
    port = free_port()
    result = send_stow_rs(radiograph, StowRsPeer(f"http://127.0.0.1:{port}/dicom-web",
                                                 timeout_s=5))
    assert result == SendResult(
        SendOutcome.UNREACHABLE, None, f"http://127.0.0.1:{port}/dicom-web: Connection refused"
    )
    assert not is_permanent(result)


def test_https_to_a_plain_http_port_is_a_tls_failure(
    orthanc: Orthanc, radiograph: Dataset
) -> None:
    url = orthanc.url.replace("http://", "https://") + "/dicom-web"
    result = send_stow_rs(radiograph, StowRsPeer(url, timeout_s=10))
    assert result.outcome is SendOutcome.UNREACHABLE
    assert result.detail.startswith(f"{url}: TLS handshake failed (")
    assert result.detail.endswith("); is it an https server?")
    assert not is_permanent(result)


def test_no_answer_in_time_is_aborted(radiograph: Dataset) -> None:
    with socket.socket() as blackhole:  # the kernel completes TCP; nobody ever answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}/dicom-web"
        result = send_stow_rs(radiograph, StowRsPeer(url, timeout_s=1))
    assert result == SendResult(SendOutcome.ABORTED, None, f"{url}: no answer within 1 s")
    assert not is_permanent(result)


# --- authentication ---------------------------------------------------------------------


def _basic(auth_orthanc: AuthOrthanc, **kwargs: Any) -> StowRsPeer:
    return StowRsPeer(auth_orthanc.url + "/dicom-web", auth="basic", username=ORTHANC_USER,
                      timeout_s=10, **kwargs)


def test_basic_auth_with_a_secret_file(
    auth_orthanc: AuthOrthanc, radiograph: Dataset, tmp_path: Path
) -> None:
    peer = _basic(auth_orthanc, secret_file=secret_file(tmp_path, ORTHANC_PASSWORD))
    result = send_stow_rs(radiograph, peer)
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)
    assert radiograph.SOPInstanceUID in auth_orthanc.sop_uids()
    assert probe_dicomweb(peer) == SendResult(
        SendOutcome.SUCCESS, None, f"{auth_orthanc.url}/dicom-web answered HTTP 200 OK",
        http_status=200,
    )


def test_basic_auth_with_an_environment_variable(
    auth_orthanc: AuthOrthanc, radiograph: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSSA_TEST_STOW_SECRET", ORTHANC_PASSWORD)
    result = send_stow_rs(radiograph, _basic(auth_orthanc, secret_env="OSSA_TEST_STOW_SECRET"))
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)
    assert radiograph.SOPInstanceUID in auth_orthanc.sop_uids()


def test_wrong_password_is_refused_and_never_shown(
    auth_orthanc: AuthOrthanc, radiograph: Dataset, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-Pa55word"
    peer = _basic(auth_orthanc, secret_file=secret_file(tmp_path, wrong))
    with caplog.at_level(logging.DEBUG):  # every logger, urllib3's and dicomweb-client's too
        result = send_stow_rs(radiograph, peer)
        probe = probe_dicomweb(peer)
    assert result == SendResult(
        SendOutcome.REFUSED, None,
        f"{auth_orthanc.url}/dicom-web answered HTTP 401 Unauthorized (credentials refused)",
        http_status=401,
    )
    assert is_permanent(result)
    assert (probe.outcome, probe.http_status) == (SendOutcome.REFUSED, 401)
    assert radiograph.SOPInstanceUID not in auth_orthanc.sop_uids()
    encoded = base64.b64encode(f"{ORTHANC_USER}:{wrong}".encode()).decode()
    assert "STOW-RS of" in caplog.text  # the attempt was logged...
    for text in (caplog.text, result.detail, probe.detail, repr(result)):
        assert wrong not in text and encoded not in text  # ...without the secret


def test_bearer_token_from_the_environment(
    canned: Canned, radiograph: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSSA_TEST_TOKEN", "tok-123.abc")
    canned.answer = (200, "application/dicom+json", store_response(radiograph.SOPInstanceUID))
    peer = StowRsPeer(canned.url, auth="bearer", secret_env="OSSA_TEST_TOKEN", timeout_s=5)
    assert send_stow_rs(radiograph, peer).outcome is SendOutcome.SUCCESS
    (request,) = canned.requests
    assert (request.method, request.path) == ("POST", "/dicom-web/studies")
    assert request.headers["Authorization"] == "Bearer tok-123.abc"
    assert request.headers["Accept"] == "*/*"  # the server's default media type
    assert request.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert "Transfer-Encoding" not in request.headers
    assert request.body.count(b"DICM") == 1 and radiograph.SOPInstanceUID.encode() in request.body


def test_basic_credentials_are_utf8(canned: Canned, radiograph: Dataset, tmp_path: Path) -> None:
    peer = StowRsPeer(canned.url, auth="basic", username="ossa",
                      secret_file=secret_file(tmp_path, "pässwörd"), timeout_s=5)
    assert send_stow_rs(radiograph, peer).outcome is SendOutcome.SUCCESS
    expected = base64.b64encode("ossa:pässwörd".encode()).decode()
    assert canned.requests[0].headers["Authorization"] == f"Basic {expected}"


@pytest.mark.parametrize(
    ("content", "env", "why"),
    [
        (None, None, "secret file {file} cannot be read: No such file or directory"),
        ("", None, "secret file {file} is empty"),
        ("line one\nline two", None,
         "secret file {file} holds control characters (a line break?)"),
        (None, "unset", "environment variable OSSA_TEST_SECRET is not set"),
        (None, "", "environment variable OSSA_TEST_SECRET is empty"),
        (None, "tab\tsecret", "environment variable OSSA_TEST_SECRET holds control characters"),
    ],
)
def test_unusable_secret_is_refused_without_a_request(
    canned: Canned, radiograph: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    content: str | None, env: str | None, why: str,
) -> None:
    file = tmp_path / "missing.secret"
    if content is not None:
        file.write_text(content, encoding="utf-8")
    if env == "unset":
        monkeypatch.delenv("OSSA_TEST_SECRET", raising=False)
    elif env is not None:
        monkeypatch.setenv("OSSA_TEST_SECRET", env)
    source: dict[str, Any] = (
        {"secret_env": "OSSA_TEST_SECRET"} if env is not None else {"secret_file": file}
    )
    peer = StowRsPeer(canned.url, auth="basic", username="ossa", timeout_s=5, **source)
    result = send_stow_rs(radiograph, peer)
    assert result.outcome is SendOutcome.REFUSED
    assert result.detail.startswith(f"{canned.url}: {why.format(file=file)}")
    assert is_permanent(result)
    assert canned.requests == []
    for secret in ("line one", "line two", "tab\tsecret"):
        assert secret not in result.detail


def test_a_rotated_secret_is_read_at_the_next_send(
    canned: Canned, radiograph: Dataset, tmp_path: Path
) -> None:
    path = secret_file(tmp_path, "first")
    peer = StowRsPeer(canned.url, auth="bearer", secret_file=path, timeout_s=5)
    send_stow_rs(radiograph, peer)
    secret_file(tmp_path, "second")
    send_stow_rs(radiograph, peer)
    assert [r.headers["Authorization"] for r in canned.requests] == [
        "Bearer first", "Bearer second"]


# --- every HTTP answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome", "suffix"),
    [
        (400, SendOutcome.REFUSED, "HTTP 400 Bad Request"),
        (401, SendOutcome.REFUSED, "HTTP 401 Unauthorized (credentials refused)"),
        (403, SendOutcome.REFUSED, "HTTP 403 Forbidden (this user may not store here)"),
        (404, SendOutcome.REFUSED, "HTTP 404 Not Found (no DICOMweb service at this URL)"),
        (405, SendOutcome.REFUSED, "HTTP 405 Method Not Allowed (no STOW-RS at this URL)"),
        (413, SendOutcome.REFUSED, "HTTP 413 Request Entity Too Large (the object is larger "
                                   "than the server accepts)"),
        (415, SendOutcome.REFUSED, "HTTP 415 Unsupported Media Type (the server does not "
                                   "accept application/dicom)"),
        (501, SendOutcome.REFUSED, "HTTP 501 Not Implemented"),
        (408, SendOutcome.ABORTED, "HTTP 408 Request Timeout (try later)"),
        (429, SendOutcome.ABORTED, "HTTP 429 Too Many Requests (try later)"),
        (500, SendOutcome.ABORTED, "HTTP 500 Internal Server Error (try later)"),
        (502, SendOutcome.UNREACHABLE, "HTTP 502 Bad Gateway (try later)"),
        (503, SendOutcome.UNREACHABLE, "HTTP 503 Service Unavailable (try later)"),
        (504, SendOutcome.UNREACHABLE, "HTTP 504 Gateway Timeout (try later)"),
    ],
)
def test_http_status(
    canned: Canned, radiograph: Dataset, status: int, outcome: SendOutcome, suffix: str
) -> None:
    canned.answer = (status, "text/plain", b"no")
    result = send_stow_rs(radiograph, StowRsPeer(canned.url, timeout_s=5))
    assert result == SendResult(outcome, None, f"{canned.url} answered {suffix}",
                                http_status=status)
    assert is_permanent(result) is (outcome is SendOutcome.REFUSED)
    assert len(canned.requests) == 1  # dicomweb-client does not retry by itself


@pytest.mark.parametrize(
    ("status", "media_type", "response", "outcome", "reason", "permanent", "suffix"),
    [
        (202, "application/dicom+json", {"warning": 0xB000}, SendOutcome.WARNING, 0xB000,
         False, "HTTP 202 Accepted: stored with Warning Reason 0xB000 (Coercion of Data "
                "Elements)"),
        (200, "application/dicom+json; charset=utf-8", {"warning": 0xB006},
         SendOutcome.WARNING, 0xB006, False,
         "HTTP 200 OK: stored with Warning Reason 0xB006 (Element Discarded)"),
        (202, "application/dicom+json", None, SendOutcome.WARNING, None, False,
         "HTTP 202 Accepted: stored with warnings it did not name"),
        (202, "application/dicom+json", {"failure": 0xC000}, SendOutcome.REFUSED, 0xC000,
         True, "HTTP 202 Accepted: instance not stored, Failure Reason 0xC000 (Cannot "
               "Understand)"),
        (200, "application/json", {"failure": 0x0110}, SendOutcome.REFUSED, 0x0110, True,
         "HTTP 200 OK: instance not stored, Failure Reason 0x0110 (Processing Failure)"),
        (409, "application/dicom+json", {"failure": 0xA900}, SendOutcome.REFUSED, 0xA900,
         True, "HTTP 409 Conflict: instance not stored, Failure Reason 0xA900 (Data Set Does "
               "Not Match SOP Class)"),
        (409, "application/dicom+json", {"failure": 0xA700}, SendOutcome.REFUSED, 0xA700,
         False, "HTTP 409 Conflict: instance not stored, Failure Reason 0xA700 (Refused: "
                "Out of Resources)"),
        (409, "text/html", None, SendOutcome.REFUSED, None, True,
         "HTTP 409 Conflict: instance not stored"),
    ],
)
def test_store_instances_response(
    canned: Canned, radiograph: Dataset, status: int, media_type: str,
    response: dict[str, int] | None, outcome: SendOutcome, reason: int | None,
    permanent: bool, suffix: str,
) -> None:
    body = (store_response(radiograph.SOPInstanceUID, **response) if response is not None
            else b"")
    canned.answer = (status, media_type, body)
    result = send_stow_rs(radiograph, StowRsPeer(canned.url, timeout_s=5))
    assert result == SendResult(outcome, reason, f"{canned.url} answered {suffix}",
                                http_status=status)
    assert is_permanent(result) is permanent


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_refused_not_followed(
    canned: Canned, radiograph: Dataset, status: int
) -> None:
    # requests would turn the POST into a GET after a 301/302: a 200 that stored nothing.
    canned.answer = (status, "text/plain", b"")
    canned.headers = {"Location": "https://u:pw@pacs.example.org:8443/dicomweb/studies?x=1"}
    result = send_stow_rs(radiograph, StowRsPeer(canned.url, timeout_s=5))
    assert result.outcome is SendOutcome.REFUSED and result.http_status == status
    assert result.detail.endswith(
        "(redirected to https://pacs.example.org:8443/dicomweb/studies; configure that URL)")
    assert is_permanent(result)
    assert [r.method for r in canned.requests] == ["POST"]
    probe = probe_dicomweb(StowRsPeer(canned.url, timeout_s=5))
    assert (probe.outcome, probe.http_status) == (SendOutcome.REFUSED, status)


def test_xml_store_instances_response(canned: Canned, radiograph: Dataset) -> None:
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">
        <Value number="1">{radiograph.SOPInstanceUID}</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081197" vr="US" keyword="FailureReason">
        <Value number="1">272</Value>
      </DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>"""
    canned.answer = (200, "application/dicom+xml", xml.encode())
    result = send_stow_rs(radiograph, StowRsPeer(canned.url, timeout_s=5))
    assert result == SendResult(
        SendOutcome.REFUSED, 0x0110,
        f"{canned.url} answered HTTP 200 OK: instance not stored, Failure Reason 0x0110 "
        "(Processing Failure)",
        http_status=200,
    )


def test_a_failure_about_another_instance_is_not_ours(
    canned: Canned, radiograph: Dataset
) -> None:
    answer = json.loads(store_response(radiograph.SOPInstanceUID))
    other = json.loads(store_response("1.2.3.4", failure=0xC000))
    canned.answer = (200, "application/dicom+json", json.dumps({**answer, **other}).encode())
    result = send_stow_rs(radiograph, StowRsPeer(canned.url, timeout_s=5))
    assert (result.outcome, result.status) == (SendOutcome.SUCCESS, None)


def test_a_damaged_answer_body_keeps_the_http_status(
    canned: Canned, radiograph: Dataset
) -> None:
    canned.answer = (200, "application/dicom+json", b"{not json")
    result = send_stow_rs(radiograph, StowRsPeer(canned.url, timeout_s=5))
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)


def test_probe_stores_nothing(canned: Canned) -> None:
    canned.answer = (200, "application/dicom+json", b"[]")
    result = probe_dicomweb(StowRsPeer(canned.url + "/", timeout_s=5))
    assert result == SendResult(SendOutcome.SUCCESS, None, f"{canned.url} answered HTTP 200 OK",
                                http_status=200)
    assert [(r.method, r.path) for r in canned.requests] == [
        ("GET", "/dicom-web/studies?limit=1")]


# --- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfSigned:
    """A self-signed certificate for 127.0.0.1 and its key."""

    cert: Path
    key: Path


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("openssl is not installed")
    out = tmp_path_factory.mktemp("tls")
    pair = SelfSigned(out / "cert.pem", out / "key.pem")
    subprocess.run(
        [exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(pair.key), "-out", str(pair.cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return pair


@pytest.fixture
def tls_canned(self_signed: SelfSigned) -> Iterator[Canned]:
    """A :class:`Canned` server speaking HTTPS with the self-signed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(self_signed.cert, self_signed.key)
    yield from _serve(context)


@pytest.fixture
def system_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """``REQUESTS_CA_BUNDLE`` set to the system's (or certifi's) bundle, as on many hosts."""
    import certifi

    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())


@pytest.mark.usefixtures("system_ca")
def test_self_signed_server_is_refused_by_tls_verification(
    tls_canned: Canned, radiograph: Dataset
) -> None:
    result = send_stow_rs(radiograph, StowRsPeer(tls_canned.url, timeout_s=5))
    assert result == SendResult(
        SendOutcome.UNREACHABLE, None,
        f"{tls_canned.url}: TLS certificate verification failed: self-signed certificate",
    )
    assert not is_permanent(result)
    assert tls_canned.requests == []
    probe = probe_dicomweb(StowRsPeer(tls_canned.url, timeout_s=5))
    assert probe.outcome is SendOutcome.UNREACHABLE
    assert probe.detail == result.detail


@pytest.mark.usefixtures("system_ca")
def test_ca_bundle_trusts_the_server_whatever_the_environment_says(
    tls_canned: Canned, self_signed: SelfSigned, radiograph: Dataset
) -> None:
    tls_canned.answer = (200, "application/dicom+json",
                         store_response(radiograph.SOPInstanceUID))
    result = send_stow_rs(radiograph, StowRsPeer(tls_canned.url, ca_bundle=self_signed.cert,
                                                 timeout_s=5))
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)
    assert [r.method for r in tls_canned.requests] == ["POST"]


def test_without_ca_bundle_the_environment_bundle_is_used(
    tls_canned: Canned, self_signed: SelfSigned, radiograph: Dataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self_signed.cert))
    result = send_stow_rs(radiograph, StowRsPeer(tls_canned.url, timeout_s=5))
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)


@pytest.mark.usefixtures("system_ca")
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_can_be_turned_off(tls_canned: Canned, radiograph: Dataset) -> None:
    result = send_stow_rs(radiograph, StowRsPeer(tls_canned.url, verify_tls=False,
                                                 timeout_s=5))
    assert (result.outcome, result.http_status) == (SendOutcome.SUCCESS, 200)
