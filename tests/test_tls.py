"""DICOM TLS: dicom_io.tls contexts, the listener with DCMTK storescu +tls, and sending to a
DCMTK storescp +tls destination. Certificates are made with openssl (tests/security.py)."""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_io.send import DimsePeer, SendOutcome, send_c_echo, send_c_store
from dicom_io.tls import (
    ClientTls,
    TlsFileError,
    client_context,
    peer_certificate_cn,
    server_context,
)
from harness.config import write_config
from harness.peers import free_port, wait_until
from models.serving.predict import TwoStageClassifier
from tests.conftest import OSSA, dcmtk, running_storescp
from tests.security import Credential, Pki, make_pki
from worker.config import (
    Config,
    DestinationTlsConfig,
    DimseDestination,
    HttpConfig,
    ListenerConfig,
    ListenerTlsConfig,
    ResultsConfig,
    StorageConfig,
    StudyConfig,
)
from worker.service import Service, build_service


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_service(
    tmp_path: Path, classifier: TwoStageClassifier
) -> Iterator[Callable[..., Service]]:
    """Start the service with a ``[listener]``; without destinations no study is ever due."""
    started: list[Service] = []

    def _start(destinations: tuple[DimseDestination, ...] = (), **listener: object) -> Service:
        fields: dict[str, object] = {"port": free_port(), "allowed_calling_aets": ("STORESCU",)}
        fields.update(listener)
        config = Config(
            listener=ListenerConfig.model_validate(fields),
            study=StudyConfig(completion_timeout_s=0.5 if destinations else 3600),
            storage=StorageConfig(root=tmp_path / "var"),
            results=ResultsConfig(secondary_capture=False),
            http=HttpConfig(enabled=False),
            destinations=destinations,
        )
        service = build_service(config, classifier, stop_event=threading.Event(),
                                poll_interval_s=0.05, delivery_poll_interval_s=0.1)
        service.start()
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop(deadline_s=30)


def _tls(pki: Pki, *, require_client_cert: bool = True) -> ListenerTlsConfig:
    return ListenerTlsConfig(cert=pki.server.cert, key=pki.server.key, ca=pki.ca,
                             require_client_cert=require_client_cert)


def _stored(service: Service) -> int:
    return service.intake.store.summary().instances.get("stored", 0)


def _study_files(make_radiograph: Callable[..., Dataset], folder: Path, n: int = 2
                 ) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    first = make_radiograph()
    for i in range(n):
        ds = first if i == 0 else make_radiograph(instance_number=i + 1)
        path = folder / f"IMG{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _storescu(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("storescu"), *tls, "-to", "10", "-ta", "10", "-td", "10",
         "-aet", "STORESCU", "-aec", "OSSA", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ossa.audit"]


def _audit_line(caplog: pytest.LogCaptureFixture) -> str:
    """The one audit line written so far, once it is there."""
    wait_until(lambda: _audit_lines(caplog), timeout=10, what="the audit line")
    (line,) = _audit_lines(caplog)
    return line


# --- dicom_io.tls ---


def test_contexts_need_tls_1_2_and_verify(pki: Pki) -> None:
    server = server_context(pki.server.cert, pki.server.key, ca=pki.ca, require_client_cert=True)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2
    assert server.verify_mode is ssl.CERT_REQUIRED
    optional = server_context(pki.server.cert, pki.server.key, ca=pki.ca)
    assert optional.verify_mode is ssl.CERT_OPTIONAL
    assert server_context(pki.server.cert, pki.server.key).verify_mode is ssl.CERT_NONE

    client = client_context(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    assert client.minimum_version is ssl.TLSVersion.TLSv1_2
    assert client.verify_mode is ssl.CERT_REQUIRED and client.check_hostname
    assert not client_context(ca=pki.ca, verify_hostname=False).check_hostname


def test_unusable_files_are_named(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="ascii")
    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: server_context(tmp_path / "missing.pem", pki.server.key), "cert",
         "No such file"),
        (lambda: server_context(pki.server.cert, tmp_path / "missing.key"), "key",
         "No such file"),
        (lambda: server_context(garbage, pki.server.key), "cert", "not a PEM certificate"),
        (lambda: server_context(pki.server.cert, garbage), "key", "not a usable PEM private key"),
        (lambda: server_context(pki.server.cert, pki.client.key), "key",
         "does not match the certificate"),
        (lambda: server_context(pki.server.cert, pki.server.key, ca=garbage), "ca",
         "not PEM CA certificates"),
        (lambda: client_context(ca=tmp_path / "missing-ca.pem"), "ca", "No such file"),
    ]
    for make, field, reason in cases:
        with pytest.raises(TlsFileError) as caught:
            make()
        assert caught.value.field == field
        assert str(caught.value).startswith(f"{field}: ") and reason in str(caught.value)
    with pytest.raises(ValueError, match="require_client_cert needs ca"):
        server_context(pki.server.cert, pki.server.key, require_client_cert=True)
    with pytest.raises(ValueError, match="cert and key go together"):
        ClientTls(cert=pki.client.cert)


# --- the listener ---


def test_storescu_over_tls_stores_the_study(
    pki: Pki, start_service: Callable[..., Service], make_radiograph: Callable[..., Dataset],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service(tls=_tls(pki))
    files = _study_files(make_radiograph, tmp_path / "study")
    sent = _storescu(service.port, files, "+tls", str(pki.client.key), str(pki.client.cert),
                     "+cf", str(pki.ca))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert _stored(service) == 2
    line = _audit_line(caplog)
    assert "calling_ae=STORESCU called_ae=OSSA peer=127.0.0.1:" in line
    assert "tls=TLSv1." in line and "client_cn=modality-7.ossa.test" in line
    assert "stored=2 duplicate=0 own=0 refused=0 outcome=released" in line


def test_client_without_a_required_certificate_is_refused(
    pki: Pki, start_service: Callable[..., Service], make_radiograph: Callable[..., Dataset],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service(tls=_tls(pki))
    files = _study_files(make_radiograph, tmp_path / "study", n=1)
    anonymous = _storescu(service.port, files, "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode != 0
    line = _audit_line(caplog)
    assert "calling_ae=- called_ae=- peer=127.0.0.1:" in line and "tls=failed" in line
    assert "outcome=refused" in line and "certificate" in line

    # A certificate from a CA the listener does not trust is refused too.
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    rogue = client_context(ca=pki.ca, cert=pki.rogue_client.cert, key=pki.rogue_client.key)
    assoc = ae.associate("127.0.0.1", service.port, ae_title="OSSA",
                         tls_args=(rogue, "127.0.0.1"))
    assert not assoc.is_established
    assert _stored(service) == 0

    # The listener is still serving authenticated clients.
    assert _storescu(service.port, files, "+tls", str(pki.client.key), str(pki.client.cert),
                     "+cf", str(pki.ca)).returncode == 0
    assert _stored(service) == 1


def test_plain_client_against_the_tls_port_fails(
    pki: Pki, start_service: Callable[..., Service], make_radiograph: Callable[..., Dataset],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service(tls=_tls(pki, require_client_cert=False))
    files = _study_files(make_radiograph, tmp_path / "study", n=1)
    plain = _storescu(service.port, files)
    assert plain.returncode != 0
    assert _stored(service) == 0
    line = _audit_line(caplog)
    assert "tls=failed" in line and "outcome=refused" in line

    # Without require_client_cert, a client with only the CA gets in.
    anonymous = _storescu(service.port, files, "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
    assert _stored(service) == 1
    assert "client_cn=- stored=1" in _audit_lines(caplog)[-1]


def test_tls_older_than_1_2_is_refused(
    pki: Pki, start_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service(tls=_tls(pki, require_client_cert=False))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    # OpenSSL's default security level forbids TLS 1.0/1.1 in the client as well: level 0
    # lets this client offer TLS 1.1, so that the refusal comes from the listener.
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as refused, socket.create_connection(
        ("127.0.0.1", service.port), timeout=10
    ) as sock, old.wrap_socket(sock, server_hostname="localhost"):
        pass
    if "NO_PROTOCOLS_AVAILABLE" in str(refused.value).upper():
        pytest.fail(f"this OpenSSL cannot offer TLS 1.1 even at level 0: {refused.value}")
    assert "protocol version" in str(refused.value)  # the listener's alert
    line = _audit_line(caplog)
    assert "unsupported protocol" in line and "outcome=refused" in line


def test_silent_connection_does_not_block_the_tls_listener(
    pki: Pki, start_service: Callable[..., Service]
) -> None:
    service = start_service(tls=_tls(pki))
    with socket.create_connection(("127.0.0.1", service.port)):  # connects, never speaks
        peer = DimsePeer("OSSA", "127.0.0.1", service.port, timeout_s=5, tls=ClientTls(
            ca=pki.ca, cert=pki.client.cert, key=pki.client.key))
        result = send_c_echo(peer, calling_ae_title="STORESCU")
    assert result.outcome is SendOutcome.SUCCESS, result.detail


def test_bad_certificate_stops_ossa_serve_naming_the_key(
    pki: Pki, tmp_path: Path, trained_bundle: Path
) -> None:
    config = write_config(
        tmp_path / "config.toml",
        listener={"port": free_port(), "allowed_calling_aets": ["STORESCU"],
                  "tls": {"cert": pki.server.cert, "key": pki.client.key}},
        model={"bundle": trained_bundle},
    )
    proc = subprocess.run([OSSA, "serve", "--config", str(config)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"listener.tls.key: {pki.client.key}: does not match the certificate" in proc.stderr


# --- sending to a TLS destination ---


@pytest.fixture
def storescp_tls(pki: Pki, tmp_path: Path) -> Iterator[Callable[[Credential], tuple[int, Path]]]:
    """DCMTK ``storescp +tls`` (AE STORESCP) that requires a client certificate of the CA."""
    started = itertools.count()
    with ExitStack() as running:

        def _start(server: Credential) -> tuple[int, Path]:
            out = tmp_path / f"storescp-{next(started)}"
            port = running.enter_context(running_storescp(
                out, "+tls", str(server.key), str(server.cert), "+cf", str(pki.ca), "-rc"))
            return port, out

        yield _start


def test_send_c_store_over_tls_to_dcmtk_storescp(
    pki: Pki, storescp_tls: Callable[[Credential], tuple[int, Path]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    port, out = storescp_tls(pki.server)
    ours = ClientTls(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    ds = make_radiograph()
    result = send_c_store(ds, DimsePeer("STORESCP", "127.0.0.1", port, timeout_s=10, tls=ours),
                          calling_ae_title="OSSA")
    assert result.outcome is SendOutcome.SUCCESS, result.detail
    assert "(TLS)" in result.detail
    files = wait_until(lambda: list(out.iterdir()), timeout=10, what="storescp to write")
    assert pydicom.dcmread(files[0]).SOPInstanceUID == ds.SOPInstanceUID  # type: ignore[index]
    assert send_c_echo(DimsePeer("STORESCP", "localhost", port, tls=ours),
                       calling_ae_title="OSSA").ok

    # storescp requires a client certificate: without ours there is no association.
    no_cert = DimsePeer("STORESCP", "127.0.0.1", port, timeout_s=10, tls=ClientTls(ca=pki.ca))
    assert send_c_echo(no_cert, calling_ae_title="OSSA").outcome is SendOutcome.UNREACHABLE
    # Our own files unusable: refused at once, nothing attempted, the key named.
    broken = DimsePeer("STORESCP", "127.0.0.1", port, tls=ClientTls(
        ca=pki.ca, cert=pki.client.cert, key=pki.server.key))
    refused = send_c_store(ds, broken, calling_ae_title="OSSA")
    assert refused.outcome is SendOutcome.REFUSED and "tls.key: " in refused.detail


def test_destination_certificate_is_verified(
    pki: Pki, storescp_tls: Callable[[Credential], tuple[int, Path]]
) -> None:
    port, _ = storescp_tls(pki.other_name)  # names pacs.invalid, not 127.0.0.1
    cert, key = pki.client.cert, pki.client.key
    checked = DimsePeer("STORESCP", "127.0.0.1", port, timeout_s=10,
                        tls=ClientTls(ca=pki.ca, cert=cert, key=key))
    assert send_c_echo(checked, calling_ae_title="OSSA").outcome is SendOutcome.UNREACHABLE
    unchecked_name = DimsePeer("STORESCP", "127.0.0.1", port, timeout_s=10,
                               tls=ClientTls(ca=pki.ca, cert=cert, key=key,
                                             verify_hostname=False))
    assert send_c_echo(unchecked_name, calling_ae_title="OSSA").ok
    # A CA that did not sign the destination's certificate: no association.
    untrusted = DimsePeer("STORESCP", "127.0.0.1", port, timeout_s=10, tls=ClientTls(
        ca=pki.rogue_client.cert.with_name("rogue-ca.pem"), cert=cert, key=key,
        verify_hostname=False))
    assert send_c_echo(untrusted, calling_ae_title="OSSA").outcome is SendOutcome.UNREACHABLE


def test_peer_certificate_cn_of_a_plain_socket_is_none() -> None:
    with socket.socket() as sock:
        assert peer_certificate_cn(sock) is None


def test_sr_is_delivered_over_tls_to_dcmtk_storescp(
    pki: Pki, storescp_tls: Callable[[Credential], tuple[int, Path]],
    start_service: Callable[..., Service], make_radiograph: Callable[..., Dataset],
) -> None:
    port, out = storescp_tls(pki.server)
    pacs = DimseDestination(
        name="pacs", ae_title="STORESCP", host="localhost", port=port, timeout_s=10,
        tls=DestinationTlsConfig(ca=pki.ca, cert=pki.client.cert, key=pki.client.key),
    )
    service = start_service(destinations=(pacs,))
    source = make_radiograph()
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", service.port, ae_title="OSSA")
    assert assoc.is_established
    assert assoc.send_c_store(source).Status == 0
    assoc.release()
    files = wait_until(lambda: list(out.iterdir()), timeout=120, what="the SR over TLS")
    sr = pydicom.dcmread(files[0])  # type: ignore[index]
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID


def test_check_config_echoes_a_tls_destination(
    pki: Pki, storescp_tls: Callable[[Credential], tuple[int, Path]], tmp_path: Path
) -> None:
    port, _ = storescp_tls(pki.server)

    def destination(name: str, key: Path) -> dict[str, object]:
        return {"name": name, "ae_title": "STORESCP", "host": "127.0.0.1", "port": port,
                "timeout_s": 10, "tls": {"ca": pki.ca, "cert": pki.client.cert, "key": key}}

    config = write_config(
        tmp_path / "config.toml",
        destinations=[destination("good", pki.client.key),
                      destination("broken", pki.server.key)],
    )
    proc = subprocess.run([OSSA, "check-config", "--config", str(config)], capture_output=True,
                          text=True, timeout=120)
    lines = {line.split()[1]: line for line in proc.stdout.splitlines()
             if line.startswith("destination")}
    assert lines.keys() == {"good", "broken"}, proc.stdout + proc.stderr
    assert f"ok    C-ECHO: STORESCP@127.0.0.1:{port} (TLS) answered 0x0000" in lines["good"]
    assert "FAIL" in lines["broken"] and "tls.key: " in lines["broken"]
    assert proc.returncode == 1
