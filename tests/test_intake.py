"""worker.intake: accepting instances, recognising Ossa's own objects, start-up reconciliation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_io.derived import MANUFACTURER
from dicom_io.synthetic import StudyIdentity
from tests.conftest import FakeClock
from worker.intake import (
    OWN_OBJECT_SOP_CLASSES,
    RADIOGRAPH_SOP_CLASSES,
    STORAGE_SOP_CLASSES,
    UNKNOWN_AET,
    Accepted,
    Intake,
    Kind,
    Received,
)
from worker.spool import Spool
from worker.store import STORE_FILE, InstanceFile, NewObject, StateStore

QUIET_S = 30.0


@pytest.fixture
def intake(tmp_path: Path, clock: FakeClock) -> Iterator[Intake]:
    with StateStore(tmp_path / STORE_FILE, clock=clock) as store:
        yield Intake(Spool(tmp_path), store)


def received_of(ds: Dataset, calling_aet: str = "CR_ROOM", manufacturer: str = "") -> Received:
    return Received(
        calling_aet=calling_aet,
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        manufacturer=manufacturer,
    )


def file_bytes(ds: Dataset, source_aet: str | None = None) -> bytes:
    """``ds`` as a DICOM file, its File Meta naming ``source_aet`` as the sender."""
    if source_aet is not None:
        ds.file_meta.SourceApplicationEntityTitle = source_aet
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def claim_after_quiet_time(intake: Intake, clock: FakeClock) -> list[tuple[str, tuple[str, ...]]]:
    """Schedule and claim every study: ``(calling AE, SOP UIDs)`` per job."""
    clock.now += QUIET_S
    intake.store.schedule_due(QUIET_S, max_queued=10)
    return [
        (job.calling_aet, tuple(i.sop_uid for i in job.instances))
        for job in intake.store.claim_jobs(10)
    ]


def test_accept_stores_then_recognises_a_resent_instance(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    data = file_bytes(ds, "CR_ROOM")
    received = received_of(ds)
    assert intake.accept(received, data) is Accepted.STORED
    path = intake.spool.instance_path("CR_ROOM", ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert intake.spool.path(path).read_bytes() == data
    assert intake.store.summary().instances == {"stored": 1}

    clock.now += 5
    assert intake.accept(received, data) is Accepted.DUPLICATE
    assert intake.store.summary().instances == {"stored": 1}
    assert list(intake.spool.instance_files()) == [path]
    assert claim_after_quiet_time(intake, clock) == [("CR_ROOM", (ds.SOPInstanceUID,))]


def test_the_same_instance_from_another_sender_is_another_study(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    data = file_bytes(ds)
    assert intake.accept(received_of(ds, "CR_ROOM"), data) is Accepted.STORED
    assert intake.accept(received_of(ds, "DX_ROOM"), data) is Accepted.STORED
    assert len(list(intake.spool.instance_files())) == 2
    assert sorted(claim_after_quiet_time(intake, clock)) == [
        ("CR_ROOM", (ds.SOPInstanceUID,)),
        ("DX_ROOM", (ds.SOPInstanceUID,)),
    ]


def test_failed_write_records_nothing(
    intake: Intake, make_radiograph: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("worker.spool.os.fsync", boom)
    ds = make_radiograph()
    with pytest.raises(OSError, match="No space left"):
        intake.accept(received_of(ds), file_bytes(ds))
    assert intake.store.summary().instances == {}
    assert list(intake.spool.instance_files()) == []


def _record_sr(intake: Intake, clock: FakeClock, study_uid: str) -> NewObject:
    """Report a study with one SR of Ossa's; return the SR."""
    clock.now += QUIET_S
    assert intake.store.schedule_due(QUIET_S, max_queued=10) == 1
    (job,) = intake.store.claim_jobs(1)
    sr = NewObject(kind="sr", sop_uid=generate_uid(), sop_class_uid=Comprehensive3DSRStorage,
                   series_uid=generate_uid(), path=f"objects/{study_uid}/sr.dcm")
    intake.store.finish_job(job.job_id, objects=[sr], destinations=("PACS",))
    return sr


def test_own_objects_are_recognised_by_sop_uid_series_or_manufacturer(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    intake.accept(received_of(ds), file_bytes(ds))
    sr = _record_sr(intake, clock, ds.StudyInstanceUID)

    def forwarded(sop_uid: str, series_uid: str, manufacturer: str = "Other Vendor") -> Received:
        return Received(calling_aet="PACS", study_uid=ds.StudyInstanceUID,
                        series_uid=series_uid, sop_uid=sop_uid,
                        sop_class_uid=Comprehensive3DSRStorage, manufacturer=manufacturer)

    assert intake.is_own_object(forwarded(sr.sop_uid, generate_uid()))
    assert intake.is_own_object(forwarded(generate_uid(), sr.series_uid))
    assert MANUFACTURER == "Ossa"
    assert intake.is_own_object(forwarded(generate_uid(), generate_uid(), MANUFACTURER))
    assert not intake.is_own_object(forwarded(generate_uid(), generate_uid()))
    assert not intake.is_own_object(forwarded(generate_uid(), generate_uid(), "Ossa phantom"))
    assert not intake.is_own_object(received_of(ds))  # a received radiograph is not ours


def test_sop_class_tables() -> None:
    assert RADIOGRAPH_SOP_CLASSES == (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        SecondaryCaptureImageStorage,
    )
    assert OWN_OBJECT_SOP_CLASSES == (
        Comprehensive3DSRStorage,
        ComprehensiveSRStorage,
        EnhancedSRStorage,
        BasicTextSRStorage,
        SecondaryCaptureImageStorage,
    )
    # Negotiated once each; no multi-frame secondary capture.
    assert STORAGE_SOP_CLASSES == RADIOGRAPH_SOP_CLASSES + OWN_OBJECT_SOP_CLASSES[:4]


def test_classify_checks_own_objects_first(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    intake.accept(received_of(ds), file_bytes(ds))
    sr = _record_sr(intake, clock, ds.StudyInstanceUID)

    def received(sop_class: str, *, sop_uid: str = "", series_uid: str = "",
                 manufacturer: str = "Film Digitizer Inc") -> Received:
        return Received(calling_aet="PACS", study_uid=ds.StudyInstanceUID,
                        series_uid=series_uid or generate_uid(), sop_uid=sop_uid or generate_uid(),
                        sop_class_uid=sop_class, manufacturer=manufacturer)

    sc = SecondaryCaptureImageStorage
    assert intake.classify(received(sc, manufacturer=MANUFACTURER)) is Kind.OWN_OBJECT
    assert intake.classify(received(sc, series_uid=sr.series_uid)) is Kind.OWN_OBJECT
    assert intake.classify(received(sc)) is Kind.RADIOGRAPH  # a digitised film
    assert intake.classify(received(Comprehensive3DSRStorage, sop_uid=sr.sop_uid)) \
        is Kind.OWN_OBJECT
    assert intake.classify(received(Comprehensive3DSRStorage)) is Kind.NOT_READ
    # A CR is never taken for an object of Ossa's, whatever its Manufacturer says.
    cr = received(ComputedRadiographyImageStorage, manufacturer=MANUFACTURER)
    assert intake.classify(cr) is Kind.RADIOGRAPH
    assert intake.classify(received(DigitalXRayImageStorageForProcessing)) is Kind.RADIOGRAPH
    assert intake.classify(received("1.2.840.10008.5.1.4.1.1.2")) is Kind.NOT_READ  # CT


def test_reconcile_registers_a_file_without_a_row_from_its_header(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = make_radiograph()
    # A crash between the durable write and the commit of its row.
    path = intake.spool.instance_path("STORESCU", ds.StudyInstanceUID, ds.SOPInstanceUID)
    intake.spool.write(path, file_bytes(ds, "STORESCU"))
    (intake.spool.tmp / "crashed.part").write_bytes(b"half")
    assert intake.store.instance_paths() == set()

    with caplog.at_level(logging.WARNING, logger="worker.intake"):
        assert intake.reconcile() == (1, 0)
    assert list(intake.spool.tmp.iterdir()) == []
    assert intake.store.instance_paths() == {path}
    assert ds.SOPInstanceUID in caplog.text
    assert "Doe" not in caplog.text and "PID-123" not in caplog.text

    clock.now += QUIET_S
    assert intake.store.schedule_due(QUIET_S, max_queued=10) == 1
    (job,) = intake.store.claim_jobs(1)
    assert job.calling_aet == "STORESCU"
    assert job.study_uid == ds.StudyInstanceUID
    assert job.instances == (InstanceFile(ds.SOPInstanceUID, path),)

    assert intake.reconcile() == (0, 0)  # now the disk and the store agree


def test_reconcile_without_a_source_ae_title_records_unknown(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    path = intake.spool.instance_path("CR_ROOM", ds.StudyInstanceUID, ds.SOPInstanceUID)
    intake.spool.write(path, file_bytes(ds))
    assert intake.reconcile() == (1, 0)
    assert claim_after_quiet_time(intake, clock) == [(UNKNOWN_AET, (ds.SOPInstanceUID,))]


def test_reconcile_marks_a_row_without_its_file_lost(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    identity = StudyIdentity(patient_id="PID-123", patient_name="Doe^Jane",
                             accession_number="ACC1", body_part="WRIST")
    first = make_radiograph(identity, instance_number=1)
    second = make_radiograph(identity, instance_number=2)
    assert first.StudyInstanceUID == second.StudyInstanceUID
    for ds in (first, second):
        assert intake.accept(received_of(ds), file_bytes(ds, "CR_ROOM")) is Accepted.STORED
    gone = intake.spool.instance_path("CR_ROOM", first.StudyInstanceUID, first.SOPInstanceUID)
    intake.spool.path(gone).unlink()

    with caplog.at_level(logging.ERROR, logger="worker.intake"):
        assert intake.reconcile() == (0, 1)
    assert gone in caplog.text
    assert intake.store.summary().instances == {"stored": 1, "lost": 1}
    assert claim_after_quiet_time(intake, clock) == [("CR_ROOM", (second.SOPInstanceUID,))]
    assert intake.reconcile() == (0, 0)  # already known lost: not counted again


def test_reconcile_counts_a_missing_object_of_ours_as_lost(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    ds = make_radiograph()
    intake.accept(received_of(ds), file_bytes(ds))
    _record_sr(intake, clock, ds.StudyInstanceUID)  # its file was never written
    assert intake.reconcile() == (0, 1)
    assert intake.store.summary().instances == {"stored": 1}


def test_reconcile_skips_an_unreadable_file(
    intake: Intake, clock: FakeClock, make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    junk = intake.spool.instance_path("CR_ROOM", "1.2.3", "1.2.3.4")
    intake.spool.write(junk, b"this is not DICOM at all")
    ds = make_radiograph()
    good = intake.spool.instance_path("CR_ROOM", ds.StudyInstanceUID, ds.SOPInstanceUID)
    intake.spool.write(good, file_bytes(ds, "CR_ROOM"))

    with caplog.at_level(logging.ERROR, logger="worker.intake"):
        assert intake.reconcile() == (1, 0)
    assert f"Cannot register spool file {junk}" in caplog.text
    assert intake.store.instance_paths() == {good}
    assert intake.spool.exists(junk)  # left for a person to look at
    assert claim_after_quiet_time(intake, clock) == [("CR_ROOM", (ds.SOPInstanceUID,))]


def test_reconcile_skips_a_file_without_uids(
    intake: Intake, make_radiograph: Callable[..., Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_radiograph()
    del ds.StudyInstanceUID
    path = intake.spool.instance_path("CR_ROOM", "1.2.3", ds.SOPInstanceUID)
    intake.spool.write(path, file_bytes(ds, "CR_ROOM"))
    with caplog.at_level(logging.ERROR, logger="worker.intake"):
        assert intake.reconcile() == (0, 0)
    assert "AttributeError" in caplog.text
    assert intake.store.instance_paths() == set()
