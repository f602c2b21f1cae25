"""Security (issue 12) against the real ``ossa serve``: the access control, the TLS listener
and the association limit as they come out of ``config.toml``.

The same checks in-process (without the CLI and the TOML file) are in tests/test_audit.py
and tests/test_tls.py; STOW-RS without the token in tests/test_http.py. What this file adds:
the address binding tested from a second real source address (127.0.0.2 on the loopback),
TLS configured by ``[listener.tls]`` in a running ``ossa serve``, and a burst of
associations well over ``max_associations`` while the allowed ones are open, after which
the service still answers C-ECHO, stores and stops cleanly.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import Status

from dicom_io.synthetic import StudyIdentity
from harness.config import write_config
from harness.peers import free_port, wait_until
from tests.conftest import OSSA, Served, dcmtk, echo
from tests.security import Pki, make_pki
from worker.store import StateStore

#: Every data set sent here carries this identity; the log must never show it.
PATIENT = StudyIdentity(patient_id="SEC-PID-4711", patient_name="Guarded^Gina",
                        accession_number="SECACC9", body_part="WRIST")

# A-ASSOCIATE-RJ (result, source, diagnostic) of PS3.8 9.3.4.
#: Rejected permanent, service user, calling AE title not recognised.
CALLING_AE_NOT_RECOGNISED = (1, 1, 3)
#: Rejected permanent, service user, called AE title not recognised.
CALLED_AE_NOT_RECOGNISED = (1, 1, 7)
#: Rejected transient, service provider (presentation), local limit exceeded.
LOCAL_LIMIT_EXCEEDED = (2, 3, 2)

#: The association limit of the burst test, and how many try beyond it at once.
LIMIT = 3
BURST = 12


def _config(folder: Path, port: int, bundle: Path, **listener: object) -> Path:
    """``config.toml`` of a listener without destinations (no study is ever due), from the
    example with ``listener`` keys added."""
    return write_config(
        folder / "config.toml",
        listener={"port": port, "allowed_calling_aets": ["STORESCU", "MODALITY"], **listener},
        study={"completion_timeout_s": 3600},
        model={"bundle": bundle},
    )


def _associate(port: int, calling: str = "STORESCU", called: str = "OSSA", *,
               source: str = "127.0.0.1") -> Association:
    """A pynetdicom association from the address ``source`` (Linux routes all of 127/8 over
    the loopback, so 127.0.0.2 is a second real peer address)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))


def _rejection(assoc: Association) -> tuple[int, int, int] | None:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ received; None if not rejected."""
    primitive = assoc.acceptor.primitive
    if not assoc.is_rejected or primitive is None:
        return None
    return (int(primitive.result), int(primitive.result_source),  # type: ignore[arg-type]
            int(primitive.diagnostic))  # type: ignore[arg-type]


def _stored(folder: Path) -> int:
    with StateStore.in_root(folder / "var") as store:
        return store.summary().instances.get("stored", 0)


def _audit(log: str, outcome: str) -> list[str]:
    """The audit lines (plain log format) of associations that ended with ``outcome``."""
    return [line for line in log.splitlines()
            if " ossa.audit: " in line and f" outcome={outcome} " in line]


def _radiographs(make_radiograph: Callable[..., Dataset], n: int) -> list[Dataset]:
    return [make_radiograph(PATIENT, instance_number=i + 1) for i in range(n)]


def _assert_no_patient_data(log: str) -> None:
    for value in (PATIENT.patient_name, PATIENT.patient_id, PATIENT.accession_number):
        assert value not in log


@pytest.mark.integration
def test_serve_rejects_unknown_calling_wrong_called_and_wrong_address(
    tmp_path: Path, trained_bundle: Path, serve: Callable[[Path, int], Served],
    make_radiograph: Callable[..., Dataset],
) -> None:
    port = free_port()
    served = serve(_config(tmp_path, port, trained_bundle,
                           allowed_peers={"MODALITY": ["127.0.0.2"]}), port)
    ds = _radiographs(make_radiograph, 1)[0]

    assert _rejection(_associate(port, "STRANGER")) == CALLING_AE_NOT_RECOGNISED
    assert _rejection(_associate(port, called="NOT-OSSA")) == CALLED_AE_NOT_RECOGNISED
    # MODALITY is bound to 127.0.0.2: from 127.0.0.1 it is rejected, from 127.0.0.2 it stores.
    assert _rejection(_associate(port, "MODALITY")) == CALLING_AE_NOT_RECOGNISED
    bound = _associate(port, "MODALITY", source="127.0.0.2")
    assert bound.is_established
    assert bound.send_c_store(ds).Status == Status.SUCCESS
    bound.release()
    assert _stored(tmp_path) == 1

    wait_until(lambda: len(_audit(served.text(), "rejected")) >= 3, timeout=10,
               what="three audit lines of rejections")
    lines = _audit(served.text(), "rejected")
    assert any("calling_ae=STRANGER" in x and "calling ae title not recognised" in x
               for x in lines)
    assert any("called_ae=NOT-OSSA" in x and "called ae title not recognised" in x
               for x in lines)
    assert any("calling_ae=MODALITY" in x and "peer=127.0.0.1:" in x
               and 'reason="calling AE title not allowed from this address"' in x for x in lines)
    wait_until(lambda: _audit(served.text(), "released"), timeout=10, what="the release")
    assert any("calling_ae=MODALITY" in x and "peer=127.0.0.2:" in x and "stored=1" in x
               for x in _audit(served.text(), "released"))
    assert served.stop() == 0
    _assert_no_patient_data(served.text())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_args(pki: Pki, *, client_cert: bool = True) -> list[str]:
    """DCMTK's TLS options: our client certificate (``+tls``) or none (``+tla``)."""
    if client_cert:
        return ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)]
    return ["+tla", "+cf", str(pki.ca)]


@pytest.fixture
def serve_tls(pki: Pki) -> Iterator[Callable[[Path, int], subprocess.Popen[bytes]]]:
    """``ossa serve`` with a TLS listener (its log in ``ossa.log`` beside the config), ready
    once DCMTK ``echoscu`` with the client certificate is answered; killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(config: Path, port: int) -> subprocess.Popen[bytes]:
        with (config.parent / "ossa.log").open("ab") as log:
            proc = subprocess.Popen(
                [OSSA, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                cwd=config.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        started.append(proc)

        def answers() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"ossa serve exited {proc.returncode}: see {config.parent}/ossa.log")
            return subprocess.run(
                [dcmtk("echoscu"), *_tls_args(pki), "-to", "5", "-aet", "STORESCU",
                 "-aec", "OSSA", "127.0.0.1", str(port)], capture_output=True, timeout=30,
            ).returncode == 0

        wait_until(answers, timeout=120, what="ossa serve to answer C-ECHO over TLS")
        return proc

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.integration
def test_serve_over_tls_needs_a_client_certificate(
    tmp_path: Path, trained_bundle: Path, pki: Pki,
    serve_tls: Callable[[Path, int], subprocess.Popen[bytes]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    port = free_port()
    tls = {"cert": pki.server.cert, "key": pki.server.key, "ca": pki.ca,
           "require_client_cert": True}
    proc = serve_tls(_config(tmp_path, port, trained_bundle, tls=tls), port)
    files = []
    for i, ds in enumerate(_radiographs(make_radiograph, 2)):
        files.append(tmp_path / f"IMG{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)

    def storescu(*tls_args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [dcmtk("storescu"), *tls_args, "-to", "10", "-ta", "10", "-td", "10",
             "-aet", "STORESCU", "-aec", "OSSA", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True, text=True, timeout=60,
        )

    assert storescu(*_tls_args(pki, client_cert=False)).returncode != 0  # no certificate
    assert storescu().returncode != 0  # plain TCP against the TLS port
    assert _stored(tmp_path) == 0
    accepted = storescu(*_tls_args(pki))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert _stored(tmp_path) == 2

    log_path = tmp_path / "ossa.log"
    wait_until(lambda: "stored=2" in log_path.read_text(), timeout=10, what="the audit line")
    proc.terminate()
    assert proc.wait(timeout=60) == 0
    log = log_path.read_text()
    assert len([x for x in _audit(log, "refused") if "tls=failed" in x]) == 2
    assert any("client_cn=modality-7.ossa.test stored=2" in x for x in _audit(log, "released"))
    _assert_no_patient_data(log)


@pytest.mark.integration
def test_associations_over_the_limit_are_rejected_and_the_service_stays_up(
    tmp_path: Path, trained_bundle: Path, serve: Callable[[Path, int], Served],
    make_radiograph: Callable[..., Dataset],
) -> None:
    port = free_port()
    served = serve(_config(tmp_path, port, trained_bundle, max_associations=LIMIT),
                   port)
    study = _radiographs(make_radiograph, LIMIT + 2)
    wait_until(lambda: _audit(served.text(), "released"), timeout=10,
               what="the start-up probe's association to end")
    held = [_associate(port) for _ in range(LIMIT)]
    assert all(assoc.is_established for assoc in held)

    # A burst of associations at once while the limit is reached: each gets A-ASSOCIATE-RJ
    # (transient: it may try again later), none hangs, the open ones are not disturbed.
    answers: list[tuple[int, int, int] | None] = []
    lock = threading.Lock()

    def attempt() -> None:
        assoc = _associate(port)
        with lock:
            answers.append(_rejection(assoc))
        if assoc.is_established:
            assoc.release()

    burst = [threading.Thread(target=attempt) for _ in range(BURST)]
    started = time.monotonic()
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(timeout=60)
    assert answers == [LOCAL_LIMIT_EXCEEDED] * BURST
    assert time.monotonic() - started < 30  # answered, not timed out

    statuses = [assoc.send_c_store(ds).Status for assoc, ds in zip(held, study, strict=False)]
    assert statuses == [Status.SUCCESS] * LIMIT
    for assoc in held:
        assoc.release()

    # Still serving: a C-ECHO, then a new association that stores the rest of the study.
    wait_until(lambda: echo(port, "STORESCU").returncode == 0, timeout=30,
               what="a C-ECHO after the burst")

    def stores_the_rest() -> bool:
        assoc = _associate(port)
        if not assoc.is_established:  # rejected threads may still be ending
            return False
        codes = [assoc.send_c_store(ds).Status for ds in study[LIMIT:]]
        assoc.release()
        return codes == [Status.SUCCESS] * (len(study) - LIMIT)

    wait_until(stores_the_rest, timeout=30, what="an association storing after the burst")
    assert _stored(tmp_path) == len(study)
    log = served.text()
    limited = [x for x in _audit(log, "rejected") if "local limit exceeded" in x]
    assert len(limited) >= BURST, log[-3000:]
    assert served.stop() == 0
    _assert_no_patient_data(served.text())
