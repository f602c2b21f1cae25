"""Association access control and audit: allowed_peers, the called AE title,
max_associations, one audit line per association, and the JSON log format."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from harness.config import write_config
from harness.peers import free_port, wait_until
from models.serving.predict import TwoStageClassifier
from tests.conftest import Served, dcmtk
from worker.access import PeerBindings
from worker.cli import JsonFormatter
from worker.config import (
    Config,
    HttpConfig,
    ListenerConfig,
    ResultsConfig,
    StorageConfig,
    StudyConfig,
)
from worker.service import Service, build_service

PATIENT = ("Secret^Patient", "SECRET-ID-77")


@pytest.fixture
def start_service(
    tmp_path: Path, classifier: TwoStageClassifier
) -> Iterator[Callable[..., Service]]:
    """Start the service with a ``[listener]`` (no study is ever due: listener tests)."""
    started: list[Service] = []

    def _start(**listener: object) -> Service:
        fields: dict[str, object] = {
            "port": free_port(), "allowed_calling_aets": ("STORESCU", "MODALITY"),
        }
        fields.update(listener)
        config = Config(
            listener=ListenerConfig.model_validate(fields),
            study=StudyConfig(completion_timeout_s=3600),
            storage=StorageConfig(root=tmp_path / "var"),
            results=ResultsConfig(secondary_capture=False),
            http=HttpConfig(enabled=False),
        )
        service = build_service(config, classifier, stop_event=threading.Event(),
                                poll_interval_s=0.05)
        service.start()
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop(deadline_s=30)


def _associate(port: int, calling: str = "STORESCU", called: str = "OSSA") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called)


def _rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ the requestor received."""
    assert assoc.is_rejected
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    return (int(primitive.result), int(primitive.result_source),  # type: ignore[arg-type]
            int(primitive.diagnostic))  # type: ignore[arg-type]


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ossa.audit"]


def _wait_audit(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    wait_until(lambda: len(_audit_lines(caplog)) >= count, timeout=10,
               what=f"{count} audit line(s)")
    return _audit_lines(caplog)


def _identity_radiograph(make_radiograph: Callable[..., Dataset], n: int = 1) -> Dataset:
    from dicom_io.synthetic import StudyIdentity

    identity = StudyIdentity(patient_name=PATIENT[0], patient_id=PATIENT[1],
                             accession_number="A1", body_part="WRIST")
    return make_radiograph(identity, instance_number=n)


# --- allowed_peers and the called AE title ---


def test_peer_bindings_match_addresses_and_networks() -> None:
    bindings = PeerBindings({"PACS": ("10.1.0.0/16", "192.0.2.7"), "V6": ("fd00::/8",)})
    assert bindings.allows("PACS", "10.1.200.3") and bindings.allows("PACS", "192.0.2.7")
    assert bindings.allows("PACS", "::ffff:10.1.2.3")  # IPv4 seen by a dual-stack listener
    assert not bindings.allows("PACS", "10.2.0.1") and not bindings.allows("PACS", "garbage")
    assert bindings.allows("V6", "fd12::1") and not bindings.allows("V6", "10.1.2.3")
    assert bindings.allows("UNBOUND", "203.0.113.9")  # not listed: not bound to an address
    with pytest.raises(ValueError, match=r"allowed_peers\.PACS: 'nowhere'"):
        PeerBindings({"PACS": ("nowhere",)})


def test_calling_ae_bound_elsewhere_is_rejected_and_logged(
    start_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service(allowed_peers={"STORESCU": ("10.99.99.99",)})
    rejected = _associate(service.port, "STORESCU")
    # Rejected permanent, by the service user, "calling AE title not recognised".
    assert _rejection(rejected) == (1, 1, 3)
    (line,) = _wait_audit(caplog, 1)
    assert "calling_ae=STORESCU called_ae=OSSA peer=127.0.0.1:" in line
    assert 'outcome=rejected reason="calling AE title not allowed from this address"' in line
    assert "calling AE STORESCU may connect only from 10.99.99.99/32" in caplog.text

    other = _associate(service.port, "MODALITY")  # not bound to an address
    assert other.is_established
    assert other.send_c_echo().Status == 0
    other.release()
    assert "calling_ae=MODALITY" in _wait_audit(caplog, 2)[1]


def test_calling_ae_bound_to_its_address_is_accepted(
    start_service: Callable[..., Service]
) -> None:
    service = start_service(allowed_peers={"STORESCU": ("10.99.99.99", "127.0.0.0/8")})
    assoc = _associate(service.port, "STORESCU")
    assert assoc.is_established
    assoc.release()


def test_wrong_called_ae_and_unknown_calling_ae_are_rejected(
    start_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service()
    assert _rejection(_associate(service.port, called="NOT-OSSA")) == (1, 1, 7)
    assert _rejection(_associate(service.port, calling="STRANGER")) == (1, 1, 3)
    wrong_called, unknown = sorted(_wait_audit(caplog, 2), key=lambda x: "STRANGER" in x)
    assert "called_ae=NOT-OSSA" in wrong_called
    assert 'reason="called ae title not recognised (rejected permanent)"' in wrong_called
    assert "calling_ae=STRANGER" in unknown
    assert 'reason="calling ae title not recognised (rejected permanent)"' in unknown


def test_max_associations_rejects_the_extra_one_cleanly(
    start_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = start_service(max_associations=1)
    first = _associate(service.port)
    assert first.is_established
    second = _associate(service.port)
    # Rejected transient, by the service provider (presentation), "local limit exceeded".
    assert _rejection(second) == (2, 3, 2)
    assert first.send_c_echo().Status == 0  # the first goes on undisturbed
    first.release()
    rejected, released = sorted(_wait_audit(caplog, 2), key=lambda x: "released" in x)
    assert 'outcome=rejected reason="local limit exceeded (rejected transient)"' in rejected
    assert "outcome=released" in released

    def accepted_again() -> bool:
        assoc = _associate(service.port)
        established = bool(assoc.is_established)
        if established:
            assoc.release()
        return established

    wait_until(accepted_again, timeout=10, what="an association after the first ended")


# --- the audit line ---


def test_audit_line_counts_the_instances_of_an_association(
    start_service: Callable[..., Service], make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    json_lines = io.StringIO()
    handler = logging.StreamHandler(json_lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("ossa.audit").addHandler(handler)
    try:
        service = start_service()
        first, second = (_identity_radiograph(make_radiograph, n) for n in (1, 2))
        broken = _identity_radiograph(make_radiograph, 3)
        del broken.StudyInstanceUID
        assoc = _associate(service.port)
        statuses = [int(assoc.send_c_store(ds).Status) for ds in (first, second, first, broken)]
        assoc.release()
        aborted = _associate(service.port, "MODALITY")
        assert aborted.is_established
        aborted.abort()
        lines = sorted(_wait_audit(caplog, 2), key=lambda x: "MODALITY" in x)
    finally:
        logging.getLogger("ossa.audit").removeHandler(handler)
    assert statuses[:3] == [0, 0, 0] and statuses[3] != 0
    assert "stored=2 duplicate=1 own=0 refused=1 outcome=released reason=- duration_s=" in lines[0]
    assert "tls=no client_cn=-" in lines[0]
    assert "calling_ae=MODALITY" in lines[1] and "outcome=aborted reason=A-ABORT" in lines[1]
    for text in (caplog.text, json_lines.getvalue()):
        assert PATIENT[0] not in text and PATIENT[1] not in text
        assert first.StudyInstanceUID not in "".join(lines)

    released, aborted_record = sorted(
        (json.loads(x) for x in json_lines.getvalue().splitlines()),
        key=lambda entry: entry["calling_ae"] == "MODALITY",
    )
    assert released["logger"] == "ossa.audit" and released["level"] == "INFO"
    assert released["message"] == lines[0]
    assert {k: released[k] for k in ("calling_ae", "called_ae", "peer_address", "tls",
                                     "stored", "duplicate", "own", "refused", "outcome")} == {
        "calling_ae": "STORESCU", "called_ae": "OSSA", "peer_address": "127.0.0.1",
        "tls": "no", "stored": 2, "duplicate": 1, "own": 0, "refused": 1,
        "outcome": "released",
    }
    assert isinstance(released["peer_port"], int) and released["client_cn"] is None
    assert aborted_record["outcome"] == "aborted"


def test_json_formatter_writes_one_object_per_line() -> None:
    record = logging.LogRecord("worker.x", logging.WARNING, __file__, 1, "Refused %s: %s",
                               ("1.2.3", 'a "quoted"\nline'), None)
    record.destination = "pacs"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["message"] == 'Refused 1.2.3: a "quoted"\nline'
    assert entry["level"] == "WARNING" and entry["logger"] == "worker.x"
    assert entry["destination"] == "pacs" and "RuntimeError: boom" in entry["exception"]
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(entry)


def test_ossa_serve_json_logs_parse_and_hold_no_patient_data(
    tmp_path: Path, trained_bundle: Path, make_radiograph: Callable[..., Dataset]
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        listener={"port": port, "allowed_calling_aets": ["STORESCU"]},
        study={"completion_timeout_s": 3600},
        model={"bundle": trained_bundle},
        logging={"level": "DEBUG", "format": "json"},
    )
    files = []
    for n in (1, 2):
        files.append(tmp_path / f"IMG{n}.dcm")
        _identity_radiograph(make_radiograph, n).save_as(files[-1], enforce_file_format=True)
    served = Served(config, port)
    try:
        sent = subprocess.run(
            [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "OSSA", "127.0.0.1", str(port),
             *map(str, files)], capture_output=True, text=True, timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def stored_line() -> list[dict[str, object]]:
            entries = [json.loads(line) for line in served.text().splitlines() if line]
            return [e for e in entries if e.get("stored") == 2]

        wait_until(stored_line, timeout=30, what="the audit line of the storescu association")
    finally:
        assert served.stop() == 0
    text = served.text()
    entries = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    audits = [e for e in entries if e["logger"] == "ossa.audit"]
    assert any(e["calling_ae"] == "STORESCU" and e["outcome"] == "released"
               and e["stored"] == 2 for e in audits)
    assert PATIENT[0] not in text and PATIENT[1] not in text
