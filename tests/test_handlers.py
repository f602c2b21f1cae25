"""worker.handlers over a real association: statuses, durability, no PHI in logs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import free_port
from tests.test_delivery import record_object
from worker.handlers import StoreStatus, handle_echo, handle_store
from worker.intake import Intake
from worker.spool import Spool
from worker.store import StateStore


@dataclass(frozen=True)
class Scp:
    """The listener under test: its port, spool and state store."""

    port: int
    spool: Spool
    store: StateStore


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    root = tmp_path / "var"
    spool = Spool(root)
    store = StateStore.in_root(root)
    ae = AE(ae_title="OSSA")
    ae.add_supported_context(Verification)
    for sop_class in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                      Comprehensive3DSRStorage):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [Intake(spool, store)]),
        ],
    )
    assert server is not None
    yield Scp(port, spool, store)
    server.shutdown()
    store.close()


def _send(port: int, ds: Dataset, *, calling_ae_title: str = "STORESCU") -> Dataset:
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _sr(*, manufacturer: str | None = None) -> Dataset:
    """A minimal Comprehensive 3D SR data set (enough for a C-STORE) of a new study."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = Comprehensive3DSRStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-123"
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    return ds


def test_valid_instance_is_on_disk_and_recorded_before_success(
    scp: Scp, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    response = _send(scp.port, ds)
    assert response.Status == StoreStatus.SUCCESS

    path = scp.spool.instance_path("STORESCU", ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert list(scp.spool.instance_files()) == [path]
    stored = pydicom.dcmread(scp.spool.path(path))
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
    summary = scp.store.summary()
    assert summary.instances == {"stored": 1}
    assert summary.studies == {"receiving": 1}
    assert scp.store.instance_paths() == {path}
    assert list(scp.spool.tmp.iterdir()) == []


def test_source_ae_title_is_the_calling_ae(
    scp: Scp, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph(modality="DX")
    assert _send(scp.port, ds, calling_ae_title="MODALITY7").Status == StoreStatus.SUCCESS
    path = scp.spool.instance_path("MODALITY7", ds.StudyInstanceUID, ds.SOPInstanceUID)
    meta = pydicom.dcmread(scp.spool.path(path), stop_before_pixels=True).file_meta
    assert meta.SourceApplicationEntityTitle == "MODALITY7"
    assert meta.MediaStorageSOPClassUID == DigitalXRayImageStorageForPresentation


def test_resent_instance_is_success_and_not_new(
    scp: Scp, make_radiograph: Callable[..., Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_radiograph()
    assert _send(scp.port, ds).Status == StoreStatus.SUCCESS
    with caplog.at_level(logging.INFO, logger="worker"):
        assert _send(scp.port, ds).Status == StoreStatus.SUCCESS
    assert scp.store.summary().instances == {"stored": 1}
    assert len(list(scp.spool.instance_files())) == 1
    assert f"SOP Instance {ds.SOPInstanceUID} of study {ds.StudyInstanceUID} was already stored" \
        in caplog.text


def test_truncated_pixel_data_gets_cannot_understand(
    scp: Scp, make_radiograph: Callable[..., Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    bad = make_radiograph()
    bad.PixelData = bad.PixelData[:10]
    with caplog.at_level(logging.INFO):
        response = _send(scp.port, bad)
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert "pixel data" in response.ErrorComment
    assert bad.SOPInstanceUID in caplog.text
    assert list(scp.spool.instance_files()) == []
    assert scp.store.summary().instances == {}
    # The service is still up and stores the next, good, instance.
    good = make_radiograph()
    assert _send(scp.port, good).Status == StoreStatus.SUCCESS
    assert scp.store.summary().instances == {"stored": 1}


def test_missing_study_uid_does_not_match_sop_class(
    scp: Scp, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    del ds.StudyInstanceUID
    response = _send(scp.port, ds)
    assert response.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "UID missing" in response.ErrorComment
    assert list(scp.spool.instance_files()) == []
    assert scp.store.summary().studies == {}


def test_disk_failure_is_out_of_resources(
    scp: Scp, make_radiograph: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("worker.spool.os.fsync", full)
    response = _send(scp.port, make_radiograph())
    assert response.Status == StoreStatus.OUT_OF_RESOURCES
    summary = scp.store.summary()
    assert (summary.studies, summary.instances) == ({}, {})
    assert list(scp.spool.instance_files()) == []
    assert list(scp.spool.tmp.iterdir()) == []  # the partial write was removed


def test_own_sr_forwarded_back_is_acknowledged_not_stored(
    scp: Scp, caplog: pytest.LogCaptureFixture
) -> None:
    sr = _sr()  # no Manufacturer: recognised by its SOP Instance UID in the store alone
    record_object(scp.store, scp.spool, sr, [])
    before = scp.store.summary()
    assert before.studies == {"reported": 1}

    with caplog.at_level(logging.INFO, logger="worker"):
        assert _send(scp.port, sr, calling_ae_title="ORTHANC").Status == StoreStatus.SUCCESS
    assert f"Acknowledged SOP Instance {sr.SOPInstanceUID}" in caplog.text
    after = scp.store.summary()
    assert after.studies == {"reported": 1}  # not receiving again: no new report
    assert after.instances == before.instances
    assert list(scp.spool.instance_files()) == []


def test_sr_with_ossa_as_manufacturer_is_acknowledged(scp: Scp) -> None:
    sr = _sr(manufacturer="Ossa")
    assert _send(scp.port, sr).Status == StoreStatus.SUCCESS
    assert scp.store.summary().studies == {}
    assert list(scp.spool.instance_files()) == []


def test_foreign_sr_is_refused(scp: Scp, caplog: pytest.LogCaptureFixture) -> None:
    sr = _sr(manufacturer="OtherVendor")
    with caplog.at_level(logging.INFO, logger="worker"):
        response = _send(scp.port, sr)
    assert response.Status == StoreStatus.SOP_CLASS_NOT_SUPPORTED == 0x0122
    assert "CR and DX" in response.ErrorComment
    assert f"Refused SOP Instance {sr.SOPInstanceUID}" in caplog.text
    assert scp.store.summary().studies == {}
    assert list(scp.spool.instance_files()) == []


def test_logs_carry_uids_not_patient_identifiers(
    scp: Scp, make_radiograph: Callable[..., Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    good = make_radiograph()
    bad = make_radiograph()
    bad.PixelData = bad.PixelData[:10]
    foreign = _sr(manufacturer="OtherVendor")
    with caplog.at_level(logging.DEBUG, logger="worker"):
        assert _send(scp.port, good).Status == StoreStatus.SUCCESS
        assert _send(scp.port, good).Status == StoreStatus.SUCCESS
        assert _send(scp.port, bad).Status == StoreStatus.CANNOT_UNDERSTAND
        assert _send(scp.port, foreign).Status == StoreStatus.SOP_CLASS_NOT_SUPPORTED
    for uid in (good.SOPInstanceUID, good.StudyInstanceUID, bad.SOPInstanceUID,
                foreign.SOPInstanceUID):
        assert uid in caplog.text
    assert "Doe" not in caplog.text and "Jane" not in caplog.text
    assert "PID-123" not in caplog.text
    paths = [str(p) for p in scp.spool.root.rglob("*")]
    assert not any("PID-123" in p or "Doe" in p for p in paths)


def test_echo(scp: Scp) -> None:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="OSSA")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
