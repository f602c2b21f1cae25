"""The outbox end to end: ``ossa serve`` in a subprocess, Orthanc as the PACS, DCMTK in.

Orthanc down for a minute, ``kill -9`` between sending an SR and recording it, and a peer
that refuses the SR until an operator runs ``ossa retry``: each study is reported once.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage
from pynetdicom import AE, evt

from dicom_io.synthetic import StudyIdentity, write_study
from harness.config import write_config
from harness.peers import Orthanc, free_port, wait_until
from models.datasets.phantom import render_study
from tests.conftest import OSSA, Served, dcmtk

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, port: int, bundle: Path, destination: tuple[str, str, int]) -> Path:
    name, aet, dest_port = destination
    return write_config(
        tmp_path / "config.toml",
        listener={"port": port, "allowed_calling_aets": ["STORESCU", "ORTHANC"]},
        study={"completion_timeout_s": 1.0},
        model={"bundle": bundle},
        results={"secondary_capture": False},  # one object per study keeps counting simple
        delivery={"retry_initial_interval_s": 1, "retry_max_interval_s": 4},
        destinations=[{"name": name, "type": "dimse", "ae_title": aet, "host": "127.0.0.1",
                       "port": dest_port, "timeout_s": 10}],
    )


def _send_study(port: int, folder: Path, seed: int) -> str:
    """storescu a two-image phantom wrist study to Ossa; return its Study Instance UID."""
    study = render_study("WRIST", seed % 2 == 0, seed, n_images=2)
    identity = StudyIdentity(patient_id=f"PID{seed}", patient_name="Test^Outbox",
                             accession_number=f"ACC{seed}", body_part="WRIST")
    images = [np.round(image * 255).astype(np.uint8) for image in study.images]
    files = write_study(images, identity, folder)
    sent = subprocess.run(
        [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "OSSA", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    return identity.study_instance_uid


def _delivery(tmp_path: Path) -> tuple[str, int, str] | None:
    """(state, attempts, SR SOP Instance UID) of the one delivery, read as `ossa status` would."""
    db = tmp_path / "var" / "state.sqlite3"
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
        rows = connection.execute(
            "SELECT d.state, d.attempts, o.sop_uid FROM deliveries d"
            " JOIN objects o ON o.id = d.object_id"
        ).fetchall()
    assert len(rows) <= 1
    return (str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None


def _status(config: Path) -> dict[str, object]:
    proc = subprocess.run([OSSA, "status", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc for one test (these tests stop and start it)."""
    peer = Orthanc(tmp_path / "orthanc", free_port())
    yield peer
    peer.stop()


def test_pacs_down_for_a_minute_gets_exactly_one_sr_when_back(
    tmp_path: Path, trained_bundle: Path, pacs: Orthanc,
    serve: Callable[[Path, int], Served],
) -> None:
    port = free_port()
    config = _config(tmp_path, port, trained_bundle, ("pacs", pacs.aet, pacs.dicom_port))
    served = serve(config, port)
    try:
        pacs.stop()
        down_since = time.monotonic()
        study_uid = _send_study(port, tmp_path / "study", 1)
        # The PACS stays down for a minute while the outbox keeps trying (and backs off).
        wait_until(
            lambda: time.monotonic() - down_since >= 60
            and (_delivery(tmp_path) or ("", 0))[1] >= 5,
            timeout=120, what="a minute of PACS downtime with retries",
        )
        state, _attempts, sr_uid = _delivery(tmp_path)  # type: ignore[misc]
        assert state == "pending"
        status = _status(config)  # the command works while the service runs
        assert status["deliveries"] == {"pacs": {"pending": 1}}

        pacs.start()
        wait_until(lambda: (_delivery(tmp_path) or ("",))[0] == "delivered", timeout=60,
                   what="the SR delivered once the PACS is back")
        assert pacs.sr_sop_uids(study_uid) == [sr_uid]
    finally:
        assert served.stop() == 0
    assert "Secret" not in served.text()


def test_kill_9_after_sending_before_recording_still_one_sr(
    tmp_path: Path, trained_bundle: Path, pacs: Orthanc,
    serve: Callable[[Path, int], Served],
) -> None:
    port = free_port()
    config = _config(tmp_path, port, trained_bundle, ("pacs", pacs.aet, pacs.dicom_port))
    served = serve(config, port)
    pacs.stop()
    study_uid = _send_study(port, tmp_path / "study", 2)
    wait_until(lambda: (_delivery(tmp_path) or ("", 0))[1] >= 1, timeout=120,
               what="a first, failed delivery attempt")

    # A trigger refuses to record an attempt: the next attempt is claimed and sent, and
    # cannot be recorded.
    db = sqlite3.connect(tmp_path / "var" / "state.sqlite3", isolation_level=None)
    db.execute("CREATE TRIGGER hold_record BEFORE UPDATE OF attempts ON deliveries"
               " BEGIN SELECT RAISE(ABORT, 'held by the test'); END")
    try:
        pacs.start()
        sr_uids = wait_until(lambda: pacs.sr_sop_uids(study_uid), timeout=60,
                             what="the SR to reach Orthanc")
        wait_until(lambda: "held by the test" in served.text(), timeout=30,
                   what="the attempt's record to fail")
        served.kill()
    finally:
        db.execute("DROP TRIGGER hold_record")
        db.close()
    state, _attempts, sr_uid = _delivery(tmp_path)  # type: ignore[misc]
    assert sr_uids == [sr_uid]
    assert state == "pending"  # sent, never recorded

    restarted = serve(config, port)
    try:
        wait_until(lambda: (_delivery(tmp_path) or ("",))[0] == "delivered", timeout=60,
                   what="the re-sent SR recorded")
    finally:
        assert restarted.stop() == 0
    assert pacs.sr_sop_uids(study_uid) == [sr_uid]  # the same object again: one copy
    assert f"Delivered {sr_uid}" in restarted.text()


class RefusingScp:
    """A Storage SCP that answers "Cannot understand" (0xC000) until it is fixed."""

    aet = "PICKY"

    def __init__(self) -> None:
        self.fixed = threading.Event()
        self.received: list[str] = []
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(Comprehensive3DSRStorage)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._handle)])

    def _handle(self, event: evt.Event) -> int | Dataset:
        if not self.fixed.is_set():
            status = Dataset()
            status.Status = 0xC000
            status.ErrorComment = "misconfigured"
            return status
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


def test_refused_sr_is_failed_until_ossa_retry(
    tmp_path: Path, trained_bundle: Path, serve: Callable[[Path, int], Served]
) -> None:
    peer = RefusingScp()
    port = free_port()
    config = _config(tmp_path, port, trained_bundle, ("picky", peer.aet, peer.port))
    served = serve(config, port)
    try:
        study_uid = _send_study(port, tmp_path / "study", 3)
        wait_until(lambda: (_delivery(tmp_path) or ("",))[0] == "failed", timeout=120,
                   what="the refused delivery to fail")
        _state, attempts, sr_uid = _delivery(tmp_path)  # type: ignore[misc]
        assert attempts == 1  # a refusal is not retried blindly
        text = subprocess.run([OSSA, "status", "--config", str(config)], capture_output=True,
                              text=True, timeout=60).stdout
        assert sr_uid in text and study_uid in text and "0xC000" in text

        peer.fixed.set()
        retried = subprocess.run([OSSA, "retry", "--study", study_uid, "--config", str(config)],
                                 capture_output=True, text=True, timeout=60)
        assert retried.returncode == 0 and "1 delivery re-queued" in retried.stdout
        wait_until(lambda: (_delivery(tmp_path) or ("",))[0] == "delivered", timeout=60,
                   what="the SR delivered after `ossa retry`")
        assert peer.received == [sr_uid]
    finally:
        served.stop()
        assert peer.server is not None
        peer.server.shutdown()
