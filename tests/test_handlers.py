"""worker.handlers over a real association: statuses, durability, no PHI in logs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from tests.conftest import free_port
from worker.assembly import StudyAssembler
from worker.handlers import StoreStatus, handle_echo, handle_store
from worker.spool import Spool


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[tuple[int, Spool, StudyAssembler]]:
    spool = Spool(tmp_path / "var")
    assembler = StudyAssembler(60.0)
    ae = AE(ae_title="OSSA")
    ae.add_supported_context(Verification)
    ae.add_supported_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [spool, assembler]),
        ],
    )
    yield port, spool, assembler
    server.shutdown()


def _send(port: int, ds: Dataset) -> Dataset:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_valid_instance_is_on_disk_before_success(
    scp: tuple[int, Spool, StudyAssembler], make_radiograph: Callable[..., Dataset]
) -> None:
    port, spool, assembler = scp
    ds = make_radiograph()
    response = _send(port, ds)
    assert response.Status == StoreStatus.SUCCESS
    path = spool.incoming / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    stored = pydicom.dcmread(path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert assembler.pending() == 1


def test_truncated_pixel_data_gets_cannot_understand(
    scp: tuple[int, Spool, StudyAssembler],
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, spool, _ = scp
    bad = make_radiograph()
    bad.PixelData = bad.PixelData[:10]
    with caplog.at_level(logging.INFO):
        response = _send(port, bad)
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert "pixel data" in response.ErrorComment
    assert bad.SOPInstanceUID in caplog.text
    assert spool.incoming_studies() == []
    # The service is still up and stores the next, good, instance.
    good = make_radiograph()
    assert _send(port, good).Status == StoreStatus.SUCCESS


def test_missing_study_uid_does_not_match_sop_class(
    scp: tuple[int, Spool, StudyAssembler], make_radiograph: Callable[..., Dataset]
) -> None:
    port, spool, _ = scp
    ds = make_radiograph()
    del ds.StudyInstanceUID
    assert _send(port, ds).Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert spool.incoming_studies() == []


def test_disk_failure_is_out_of_resources(
    scp: tuple[int, Spool, StudyAssembler],
    make_radiograph: Callable[..., Dataset],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, _, assembler = scp

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("worker.spool.os.fsync", full)
    response = _send(port, make_radiograph())
    assert response.Status == StoreStatus.OUT_OF_RESOURCES
    assert assembler.pending() == 0


def test_logs_carry_uids_not_patient_identifiers(
    scp: tuple[int, Spool, StudyAssembler],
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, _, _ = scp
    ds = make_radiograph()
    with caplog.at_level(logging.DEBUG, logger="worker"):
        assert _send(port, ds).Status == StoreStatus.SUCCESS
    assert ds.SOPInstanceUID in caplog.text
    assert "Doe" not in caplog.text and "PID-123" not in caplog.text


def test_echo(scp: tuple[int, Spool, StudyAssembler]) -> None:
    port, _, _ = scp
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
