"""worker.admin: ``ossa status``, ``ossa retry`` and ``ossa check-config`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from harness.config import write_config
from harness.peers import Orthanc, PostgresServer, free_port
from tests.test_delivery import record_object
from tests.test_stow import ORTHANC_PASSWORD, ORTHANC_USER, AuthOrthanc
from worker.admin import format_summary
from worker.spool import Spool
from worker.store import DeliveryState, FailedDelivery, Location, StateStore, Summary

OSSA = str(Path(sys.executable).with_name("ossa"))
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fracatlas"
NOW = 1_700_000_000.0


def _ossa(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OSSA, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _destination(name: str, ae_title: str, port: int, timeout_s: float = 10
                 ) -> dict[str, object]:
    return {"name": name, "type": "dimse", "ae_title": ae_title, "host": "127.0.0.1",
            "port": port, "timeout_s": timeout_s}


def _config(tmp_path: Path, *destinations: dict[str, object],
            listener_port: int = 11112) -> Path:
    """The example config.toml with the shipped bundle, the destinations given and the
    ``[http]`` server off."""
    return write_config(tmp_path / "config.toml", listener={"port": listener_port},
                        model={"bundle": BUNDLE}, destinations=list(destinations))


# --- format_summary ---------------------------------------------------------------------


def test_format_summary() -> None:
    failed = FailedDelivery(
        study_uid="1.2.3", sop_uid="1.2.3.4", destination="old", attempts=3,
        last_attempt=NOW - 60, last_outcome="refused", last_detail="PACS answered 0xC000",
    )
    summary = Summary(
        studies={"reported": 2, "receiving": 1},
        jobs={"done": 2},
        instances={"stored": 5, "lost": 1},
        deliveries={"pacs": {"pending": 1, "delivered": 2}, "old": {"failed": 1}},
        failed=(failed,),
        next_attempts={"pacs": NOW + 30},
    )
    text = format_summary(summary, ["pacs", "archive"], NOW)
    lines = text.splitlines()
    assert lines[0] == "Studies:    receiving 1, queued 0, processing 0, reported 2, failed 0"
    assert lines[1] == "Jobs:       queued 0, running 0, done 2, failed 0"
    assert lines[2] == "Instances:  stored 5, lost 1"
    assert lines[3] == "Deliveries:"
    table = [line.split() for line in lines[4:8]]
    assert table[0] == ["destination", "pending", "delivered", "failed", "next", "attempt"]
    assert table[1][:4] == ["pacs", "1", "2", "0"] and lines[5].endswith("(in 30 s)")
    assert table[2] == ["archive", "0", "0", "0", "-"]
    assert table[3] == ["old", "(not", "configured)", "0", "0", "1", "-"]
    assert lines[8] == "Failed deliveries (`ossa retry` re-queues them):"
    assert lines[9].startswith("  study 1.2.3 object 1.2.3.4 to old: 3 attempt(s), last ")
    assert lines[9].endswith(": refused: PACS answered 0xC000")
    assert len(lines) == 10


def test_format_summary_of_an_empty_store() -> None:
    text = format_summary(Summary({}, {}, {}, {}), [], NOW)
    assert text.splitlines() == [
        "Studies:    receiving 0, queued 0, processing 0, reported 0, failed 0",
        "Jobs:       queued 0, running 0, done 0, failed 0",
        "Instances:  stored 0, lost 0",
        "Deliveries:",
        "  destination  pending  delivered  failed  next attempt",
    ]


# --- status and retry -------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """A config whose store holds one failed delivery to ``pacs``."""

    config: Path
    study_uid: str
    sop_uid: str


def _failed_delivery(tmp_path: Path, make_radiograph: Callable[..., Dataset]) -> Failed:
    config = _config(tmp_path, _destination("pacs", "PACS", free_port()))
    root = tmp_path / "var"
    ds = make_radiograph()
    with StateStore.in_root(root) as store:
        record_object(store, Spool(root), ds, ["pacs"])
        delivery = store.due_delivery("pacs")
        assert delivery is not None
        store.record_attempt(
            delivery.delivery_id, state=DeliveryState.FAILED, outcome="refused",
            detail="PACS@127.0.0.1 answered 0xC000 (Failure)",
        )
    return Failed(config, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))


def test_status_and_retry(tmp_path: Path, make_radiograph: Callable[..., Dataset]) -> None:
    failed = _failed_delivery(tmp_path, make_radiograph)

    proc = _ossa("status", "--json", "--config", failed.config)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["configured_destinations"] == ["pacs"]
    assert status["deliveries"] == {"pacs": {"failed": 1}}
    assert status["studies"] == {"reported": 1}
    (row,) = status["failed"]
    assert (row["study_uid"], row["sop_uid"], row["destination"]) == (
        failed.study_uid, failed.sop_uid, "pacs")
    assert (row["attempts"], row["last_outcome"]) == (1, "refused")
    assert "0xC000" in row["last_detail"]
    assert status["store"] == str(tmp_path / "var" / "state.sqlite3")

    text = _ossa("status", "--config", failed.config)
    assert text.returncode == 0, text.stderr
    assert f"study {failed.study_uid} object {failed.sop_uid} to pacs: 1 attempt(s)" in text.stdout
    assert "Doe" not in text.stdout and "PID-123" not in text.stdout

    proc = _ossa("retry", "--destination", "pacs", "--config", failed.config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1 delivery re-queued"

    status = json.loads(_ossa("status", "--json", "--config", failed.config).stdout)
    assert status["deliveries"] == {"pacs": {"pending": 1}}
    assert status["failed"] == []
    assert "pacs" in status["next_attempts"]


def test_retry_of_a_study(tmp_path: Path, make_radiograph: Callable[..., Dataset]) -> None:
    failed = _failed_delivery(tmp_path, make_radiograph)
    proc = _ossa("retry", "--study", "9.9.9", "--config", failed.config)
    assert (proc.returncode, proc.stdout.strip()) == (0, "0 deliveries re-queued")
    proc = _ossa("retry", "--study", failed.study_uid, "--config", failed.config)
    assert (proc.returncode, proc.stdout.strip()) == (0, "1 delivery re-queued")


def test_retry_of_an_unknown_destination_fails(
    tmp_path: Path, make_radiograph: Callable[..., Dataset]
) -> None:
    failed = _failed_delivery(tmp_path, make_radiograph)
    proc = _ossa("retry", "--destination", "nowhere", "--config", failed.config)
    assert proc.returncode != 0
    assert "'nowhere' is not a configured destination" in proc.stderr
    status = json.loads(_ossa("status", "--json", "--config", failed.config).stdout)
    assert status["deliveries"] == {"pacs": {"failed": 1}}  # nothing was re-queued


def test_status_lists_the_nodes_of_a_postgresql_store(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Two nodes on one PostgreSQL store: each one's heartbeat and what it holds; one
    silent for longer than a lease is marked so (its work is being taken over)."""
    import psycopg

    url = postgres.new_database()
    with StateStore(Location(url=url), node="alpha") as alpha, \
            StateStore(Location(url=url), node="beta") as beta:
        alpha.register_node(host="host-a", pid=1, version="test")
        beta.register_node(host="host-b", pid=2, version="test")
        alpha.add_instance(calling_aet="A", study_uid="1.2", sop_uid="1.2.1",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_uid="1.2.3",
                           path="p", size=1, received=alpha.now() - 60)
        assert alpha.schedule_due(10, max_queued=5) == 1
        assert len(alpha.claim_jobs(5)) == 1
    with psycopg.connect(url, autocommit=True) as db:  # beta fell silent an hour ago
        db.execute("UPDATE nodes SET heartbeat = heartbeat - 3600 WHERE name = 'beta'")
    config = _config(tmp_path)
    config.write_text(config.read_text().replace(
        'root = "var"', f'root = "var"\ndatabase = "{url}"'), encoding="utf-8")
    status = json.loads(_ossa("status", "--json", "--config", config).stdout)
    assert [(n["name"], n["host"], n["jobs"]) for n in status["nodes"]] == [
        ("alpha", "host-a", 1), ("beta", "host-b", 0)]
    text = _ossa("status", "--config", config)
    assert text.returncode == 0, text.stderr
    assert "State store: postgresql://ossa@127.0.0.1:" in text.stdout
    (alpha_line,) = [line for line in text.stdout.splitlines() if "  alpha (" in line]
    (beta_line,) = [line for line in text.stdout.splitlines() if "  beta (" in line]
    assert ": alive," in alpha_line and "holds 1 job(s)" in alpha_line
    assert "SILENT 36" in beta_line and "holds 0 job(s)" in beta_line


def test_status_without_a_store_fails_clearly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    proc = _ossa("status", "--config", config)
    assert proc.returncode != 0
    assert f"no state store at {tmp_path / 'var' / 'state.sqlite3'}" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "var").exists()  # status does not create one


# --- check-config -----------------------------------------------------------------------


def test_check_config_fails_on_a_dead_destination(
    tmp_path: Path, storescp: tuple[int, Path]
) -> None:
    port, _ = storescp
    dead = free_port()
    config = _config(
        tmp_path,
        _destination("archive", "STORESCP", port),
        _destination("dead", "PACS", dead, timeout_s=2),
    )
    proc = _ossa("check-config", "--config", config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = {line.split()[1] if line.startswith("destination") else line.split()[0]: line
             for line in proc.stdout.splitlines()}
    assert lines.keys() == {"config", "model.bundle", "storage.root", "archive", "dead"}
    assert lines["archive"].split()[2] == "ok"
    assert f"C-ECHO: STORESCP@127.0.0.1:{port} answered 0x0000 (Success)" in lines["archive"]
    assert lines["dead"].split()[2] == "FAIL"
    assert f"PACS@127.0.0.1:{dead}" in lines["dead"]
    assert lines["model.bundle"].split()[1] == "ok"
    assert lines["storage.root"].split()[1] == "ok"


def test_check_config_passes(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    port, _ = storescp
    config = _config(tmp_path, _destination("archive", "STORESCP", port))
    proc = _ossa("check-config", "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert "destination archive" in proc.stdout


def test_check_config_names_an_invalid_key(tmp_path: Path) -> None:
    config = _config(tmp_path, listener_port=99999)
    proc = _ossa("check-config", "--config", config)
    assert proc.returncode != 0
    assert "listener.port" in proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout


def _stowrs(name: str, url: str, secret: Path | None = None) -> dict[str, object]:
    auth = ({"auth": "basic", "username": ORTHANC_USER, "secret_file": secret}
            if secret is not None else {})
    return {"name": name, "type": "stowrs", "url": url, "timeout_s": 10, **auth}


def test_check_config_of_stow_rs_destinations(tmp_path: Path, orthanc: Orthanc) -> None:
    right, wrong = tmp_path / "right.secret", tmp_path / "wrong.secret"
    right.write_text(ORTHANC_PASSWORD + "\n", encoding="utf-8")
    wrong.write_text("guess-0f-4-password\n", encoding="utf-8")
    secured = AuthOrthanc(tmp_path / "orthanc-auth", free_port())
    try:
        config = _config(
            tmp_path,
            _stowrs("web", orthanc.url + "/dicom-web"),
            _stowrs("authed", secured.url + "/dicom-web", right),
            _stowrs("wrong", secured.url + "/dicom-web", wrong),
            _stowrs("nowhere", orthanc.url + "/no-such-root"),
        )
        proc = _ossa("check-config", "--config", config)
        count = len(secured.get("/instances"))
    finally:
        secured.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines()
             if line.startswith("destination")}
    assert lines.keys() == {"web", "authed", "wrong", "nowhere"}
    assert lines["web"].split()[2] == "ok"
    assert lines["web"].endswith(f"QIDO-RS: {orthanc.url}/dicom-web answered HTTP 200 OK")
    assert lines["authed"].split()[2] == "ok"
    assert lines["wrong"].split()[2] == "FAIL"
    assert lines["wrong"].endswith(
        f"QIDO-RS: {secured.url}/dicom-web answered HTTP 401 Unauthorized (credentials refused)")
    assert lines["nowhere"].split()[2] == "FAIL"
    assert "HTTP 404 Not Found" in lines["nowhere"]
    assert "guess-0f-4-password" not in proc.stdout + proc.stderr
    assert count == 0  # checking stored nothing
