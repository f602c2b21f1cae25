"""worker.handlers over a real association: statuses, durability, no PHI in logs."""

from __future__ import annotations

import logging
import resource
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    Comprehensive3DSRStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_io.derived import MANUFACTURER
from harness.peers import free_port
from tests.test_delivery import record_object
from worker.config import ListenerConfig
from worker.handlers import StoreStatus, handle_echo, handle_store
from worker.intake import Intake
from worker.service import build_ae
from worker.spool import Spool
from worker.store import StateStore

MIB = 1024 * 1024


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
    listener = ListenerConfig(ae_title="OSSA")  # the service's AE, default bound
    ae = build_ae(listener)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [Intake(spool, store), listener.max_inflated_mb * MIB]),
        ],
    )
    assert server is not None
    yield Scp(port, spool, store)
    server.shutdown()
    store.close()


def _send(port: int, ds: Dataset, *, calling_ae_title: str = "STORESCU") -> Dataset:
    """C-STORE ``ds`` in the transfer syntax of its file meta."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
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


@pytest.mark.parametrize("chunked", [True, False], ids=["from-a-file", "in-memory"])
def test_valid_instance_is_on_disk_and_recorded_before_success(
    scp: Scp, make_radiograph: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch,
    chunked: bool,
) -> None:
    # The service receives into a file (build_ae turns STORE_RECV_CHUNKED_DATASET on); the
    # handler also admits a data set pynetdicom kept in memory.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", chunked)
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
    # The comment (LO, 64 characters at most) names the attribute at fault.
    assert response.ErrorComment == (
        "PixelData holds 10 bytes; Rows x Columns x BitsAllocated need 61"
    )
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
    assert response.ErrorComment == "Ossa reads CR, DX and SC images"
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


# --- secondary captures: digitised films are read, Ossa's own are acknowledged ---


def _secondary_capture(
    make_radiograph: Callable[..., Dataset], *, manufacturer: str = "Film Digitizer Inc"
) -> Dataset:
    """A single-frame grayscale Secondary Capture (a digitised film) of a new study."""
    ds = make_radiograph()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.ConversionType = "DF"  # digitised film (PS3.3 C.8.6.1)
    ds.Manufacturer = manufacturer
    return ds


def _rgb(ds: Dataset) -> Dataset:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.zeros((ds.Rows, ds.Columns, 3), np.uint8).tobytes()
    del ds.WindowCenter, ds.WindowWidth
    return ds


def test_digitised_film_secondary_capture_is_stored(
    scp: Scp, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = _secondary_capture(make_radiograph)
    assert _send(scp.port, ds).Status == StoreStatus.SUCCESS
    path = scp.spool.instance_path("STORESCU", ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert list(scp.spool.instance_files()) == [path]
    assert scp.store.summary().instances == {"stored": 1}
    stored = pydicom.dcmread(scp.spool.path(path))
    assert stored.SOPClassUID == SecondaryCaptureImageStorage
    assert stored.PixelData == ds.PixelData


def test_own_secondary_capture_is_acknowledged_before_any_pixel_check(
    scp: Scp, make_radiograph: Callable[..., Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    # Ossa's own SCs may be RGB (outlined findings): recognised first, so never refused for that.
    by_manufacturer = _rgb(_secondary_capture(make_radiograph, manufacturer=MANUFACTURER))
    by_uid = _rgb(_secondary_capture(make_radiograph, manufacturer="Other"))
    record_object(scp.store, scp.spool, by_uid, [])
    before = scp.store.summary()
    with caplog.at_level(logging.INFO, logger="worker"):
        assert _send(scp.port, by_manufacturer).Status == StoreStatus.SUCCESS
        assert _send(scp.port, by_uid, calling_ae_title="ORTHANC").Status == StoreStatus.SUCCESS
    for ds in (by_manufacturer, by_uid):
        assert f"Acknowledged SOP Instance {ds.SOPInstanceUID}" in caplog.text
    assert scp.store.summary() == before
    assert list(scp.spool.instance_files()) == []


@pytest.mark.parametrize(
    ("change", "comment"),
    [
        (_rgb, "PhotometricInterpretation is 'RGB', not MONOCHROME1/2"),
        (lambda ds: setattr(ds, "NumberOfFrames", 2) or ds,
         "NumberOfFrames is 2; only single-frame images are read"),
    ],
    ids=["rgb", "multi-frame"],
)
def test_foreign_colour_or_multiframe_secondary_capture_is_refused(
    scp: Scp,
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
    change: Callable[[Dataset], Dataset],
    comment: str,
) -> None:
    ds = change(_secondary_capture(make_radiograph))
    if "NumberOfFrames" in ds:
        ds.PixelData = ds.PixelData * 2
    with caplog.at_level(logging.INFO, logger="worker"):
        response = _send(scp.port, ds)
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert response.ErrorComment == comment
    assert f"Refused SOP Instance {ds.SOPInstanceUID}" in caplog.text
    assert list(scp.spool.instance_files()) == []
    assert scp.store.summary().studies == {}


def test_negotiated_sop_classes(scp: Scp) -> None:
    ae = AE(ae_title="STORESCU")
    wanted = [
        DigitalXRayImageStorageForProcessing,
        SecondaryCaptureImageStorage,
        Comprehensive3DSRStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    ]
    for sop_class in wanted:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="OSSA")
    assert assoc.is_established
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert accepted == set(wanted[:3])
    assert rejected == {MultiFrameGrayscaleByteSecondaryCaptureImageStorage}


# --- Deflated Explicit VR Little Endian: inflated within listener.max_inflated_mb ---


def _send_file(port: int, path: Path, sop_class: str, syntax: str,
               *, calling_ae_title: str = "STORESCU") -> Dataset:
    """C-STORE a file's data set bytes exactly as they are on disk (pynetdicom's chunked send:
    the file is neither decoded nor re-encoded)."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def _part10(path: Path, ds: Dataset, syntax: str, dataset_bytes: Iterator[bytes]) -> None:
    """Write a DICOM file with ``ds``'s file meta (in ``syntax``) and the given data set."""
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    with path.open("wb") as f:
        f.write(buffer.getvalue())
        for chunk in dataset_bytes:
            f.write(chunk)


def _explicit_le(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def _deflate_bomb(path: Path, make_radiograph: Callable[..., Dataset], pixel_mib: int) -> Dataset:
    """A deflated CR file whose Pixel Data is ``pixel_mib`` MiB of zeros, about 1 KiB per MiB.

    Built from one deflated MiB: after a full flush the compressor starts afresh, so every
    further MiB of zeros deflates to the same bytes, and the test never holds the inflated
    data set.
    """
    ds = make_radiograph()
    ds.Rows, ds.Columns = 16384, pixel_mib * 32  # 16-bit: 1 MiB per 32 columns
    del ds.PixelData
    header = _explicit_le(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_mib * MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(MIB)
    mebibyte = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH) == mebibyte
    tail = compressor.flush()
    _part10(path, ds, DeflatedExplicitVRLittleEndian,
            iter([head, *([mebibyte] * pixel_mib), tail]))
    return ds


def test_deflated_instance_is_stored_as_sent(
    scp: Scp, make_radiograph: Callable[..., Dataset], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_radiograph()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(_explicit_le(ds)) + compressor.flush()
    sent = tmp_path / "deflated.dcm"
    _part10(sent, ds, DeflatedExplicitVRLittleEndian, iter([deflated]))

    response = _send_file(scp.port, sent, ds.SOPClassUID, DeflatedExplicitVRLittleEndian)
    assert response.Status == StoreStatus.SUCCESS
    path = scp.spool.instance_path("STORESCU", ds.StudyInstanceUID, ds.SOPInstanceUID)
    data = scp.spool.path(path).read_bytes()
    assert data.endswith(deflated)  # the deflated bytes as received, not re-encoded
    stored = pydicom.dcmread(scp.spool.path(path))
    assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert stored.PixelData == ds.PixelData
    assert scp.store.summary().instances == {"stored": 1}


def test_deflate_bomb_is_refused_within_a_few_mib(
    scp: Scp, make_radiograph: Callable[..., Dataset], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """1 GiB of Pixel Data deflated to about 1 MiB, past the default 256 MiB bound."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    bomb = tmp_path / "bomb.dcm"
    ds = _deflate_bomb(bomb, make_radiograph, pixel_mib=1024)
    assert bomb.stat().st_size < 1.1 * MIB
    assert ListenerConfig().max_inflated_mb == 256

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        with caplog.at_level(logging.INFO, logger="worker"):
            response = _send_file(scp.port, bomb, ds.SOPClassUID, DeflatedExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before

    assert response.Status == StoreStatus.OUT_OF_RESOURCES == 0xA700
    assert response.ErrorComment == "deflated data set exceeds listener.max_inflated_mb"
    assert f"Refused SOP Instance {ds.SOPInstanceUID}: deflated data set inflates past" \
        in caplog.text
    # Python allocations at their peak (the received MiB, the inflated chunk, pynetdicom's
    # PDUs) and the process's peak resident size: a few MiB, not the 256 MiB of the bound.
    assert peak < 16 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
    assert rss_growth * 1024 < 32 * MIB, f"peak RSS grew {rss_growth / 1024:.1f} MiB"
    assert list(scp.spool.instance_files()) == []
    assert scp.store.summary().studies == {}
    # The listener still answers.
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="OSSA")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_bound_refuses_a_deflated_data_set_just_over_it(
    tmp_path: Path, make_radiograph: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is the configured one: 1 MiB refuses 2 MiB of pixels, accepts 0.5 MiB."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    root = tmp_path / "var"
    spool, store = Spool(root), StateStore.in_root(root)
    listener = ListenerConfig(max_inflated_mb=1)
    server = build_ae(listener).start_server(
        ("127.0.0.1", port := free_port()), block=False,
        evt_handlers=[(evt.EVT_C_STORE, handle_store,
                       [Intake(spool, store), listener.max_inflated_mb * MIB])],
    )
    try:
        big = _deflate_bomb(tmp_path / "big.dcm", make_radiograph, pixel_mib=2)
        response = _send_file(port, tmp_path / "big.dcm", big.SOPClassUID,
                              DeflatedExplicitVRLittleEndian)
        assert response.Status == StoreStatus.OUT_OF_RESOURCES
        small = make_radiograph(image=np.zeros((512, 512), np.uint8))  # 0.5 MiB of pixels
        small.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        assert _send(port, small).Status == StoreStatus.SUCCESS
        assert store.summary().instances == {"stored": 1}
    finally:
        server.shutdown()
        store.close()


def test_corrupt_deflate_stream_cannot_be_understood(
    scp: Scp, make_radiograph: Callable[..., Dataset], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_radiograph()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(_explicit_le(ds)) + compressor.flush()
    sent = tmp_path / "truncated.dcm"
    _part10(sent, ds, DeflatedExplicitVRLittleEndian, iter([deflated[: len(deflated) // 2]]))
    with caplog.at_level(logging.INFO, logger="worker"):
        response = _send_file(scp.port, sent, ds.SOPClassUID, DeflatedExplicitVRLittleEndian)
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert response.ErrorComment == "data set cannot be decoded"
    assert f"Refused SOP Instance {ds.SOPInstanceUID}: data set cannot be decoded" in caplog.text
    assert list(scp.spool.instance_files()) == []
