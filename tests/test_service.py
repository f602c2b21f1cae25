"""worker.service in-process: listener → spool → assembly → job → SR to a real storescp."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_io.synthetic import StudyIdentity
from models.phantom import render_study
from models.predict import TwoStageClassifier
from tests.conftest import dciodvfy_errors, evidence_sop_uids, free_port, wait_until
from worker.assembly import StudyAssembler
from worker.config import DimseDestination, ListenerConfig
from worker.dispatch import Dispatcher
from worker.jobs import StudyProcessor
from worker.service import Service
from worker.spool import Spool


@dataclass
class Running:
    service: Service
    spool: Spool


def _phantom_study(
    bone: str, abnormal: bool, seed: int, make: Callable[..., Dataset], n_images: int = 2
) -> list[Dataset]:
    study = render_study(bone, abnormal, seed, n_images=n_images)
    identity = StudyIdentity(
        patient_id="SECRET-ID-77",
        patient_name="Secret^Patient",
        accession_number="A1",
        body_part=bone,
    )
    return [
        make(identity, image=np.round(image * 255).astype(np.uint8), instance_number=i + 1)
        for i, image in enumerate(study.images)
    ]


@pytest.fixture
def start_service(
    tmp_path: Path, classifier: TwoStageClassifier
) -> Iterator[Callable[..., Running]]:
    started: list[Service] = []

    def _start(destination_port: int, *, completion_s: float = 0.5) -> Running:
        stop = threading.Event()
        listener = ListenerConfig(port=free_port(), allowed_calling_aets=("STORESCU",))
        spool = Spool(tmp_path / "var")
        dispatcher = Dispatcher(
            [
                DimseDestination(
                    name="pacs",
                    ae_title="STORESCP",
                    host="127.0.0.1",
                    port=destination_port,
                    timeout_s=5,
                )
            ],
            calling_ae_title="OSSA",
            attempts=2,
            backoff_s=0.05,
            stop=stop,
        )
        service = Service(
            listener,
            spool,
            StudyAssembler(completion_s),
            StudyProcessor(classifier, dispatcher),
            stop_event=stop,
            poll_interval_s=0.05,
        )
        service.start()
        started.append(service)
        return Running(service, spool)

    yield _start
    for service in started:
        service.stop(deadline_s=30)


def _store(port: int, datasets: list[Dataset], calling: str = "STORESCU") -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_two_studies_each_get_one_sr(
    start_service: Callable[..., Running],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pacs_port, pacs_dir = storescp
    running = start_service(pacs_port)
    wrist = _phantom_study("WRIST", True, 11, make_radiograph)
    hand = _phantom_study("HAND", False, 12, make_radiograph, n_images=1)
    assert _store(running.service.port, wrist + hand) == [0, 0, 0]

    wait_until(
        lambda: len(list(running.spool.done.iterdir())) == 2,
        timeout=120,
        what="both jobs to finish",
    )
    srs = sorted(pacs_dir.iterdir())
    assert len(srs) == 2
    by_study = {pydicom.dcmread(p).StudyInstanceUID: pydicom.dcmread(p) for p in srs}
    assert set(by_study) == {wrist[0].StudyInstanceUID, hand[0].StudyInstanceUID}
    for sources in (wrist, hand):
        sr = by_study[sources[0].StudyInstanceUID]
        assert evidence_sop_uids(sr) == {ds.SOPInstanceUID for ds in sources}
    assert list(running.spool.failed.iterdir()) == []
    assert wrist[0].StudyInstanceUID in caplog.text and hand[0].SOPInstanceUID in caplog.text
    assert "Secret" not in caplog.text and "SECRET-ID" not in caplog.text


def test_unfinished_study_is_resumed_after_restart(
    start_service: Callable[..., Running],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
) -> None:
    pacs_port, pacs_dir = storescp
    first = start_service(pacs_port, completion_s=3600)
    study = _phantom_study("ELBOW", False, 21, make_radiograph)
    assert _store(first.service.port, study) == [0, 0]
    assert first.service.stop(deadline_s=30) == 0
    assert first.spool.incoming_studies() == [study[0].StudyInstanceUID]

    second = start_service(pacs_port, completion_s=0.2)
    wait_until(lambda: list(pacs_dir.iterdir()), timeout=120, what="the SR after restart")
    wait_until(lambda: list(second.spool.done.iterdir()), timeout=30, what="the job to finish")


def test_undeliverable_sr_is_kept_in_failed(
    start_service: Callable[..., Running], make_radiograph: Callable[..., Dataset]
) -> None:
    running = start_service(free_port())  # nothing listens there
    study = _phantom_study("FINGER", True, 31, make_radiograph, n_images=1)
    assert _store(running.service.port, study) == [0]
    failed = wait_until(
        lambda: list(running.spool.failed.iterdir()), timeout=120, what="the job to fail"
    )
    job_dir = failed[0]  # type: ignore[index]
    assert "pacs" in (job_dir / "error.txt").read_text()
    srs = list((job_dir / "sr").glob("*.dcm"))
    assert len(srs) == 1
    assert pydicom.dcmread(srs[0]).StudyInstanceUID == study[0].StudyInstanceUID


def test_unreadable_file_in_spool_is_skipped(
    start_service: Callable[..., Running],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
) -> None:
    pacs_port, pacs_dir = storescp
    running = start_service(pacs_port, completion_s=0.5)
    study = _phantom_study("SHOULDER", False, 41, make_radiograph, n_images=1)
    corrupt = running.spool.incoming / study[0].StudyInstanceUID / "1.2.3.999.dcm"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not dicom at all")
    assert _store(running.service.port, study) == [0]
    sr_file = wait_until(lambda: list(pacs_dir.iterdir()), timeout=120, what="the SR")
    sr = pydicom.dcmread(sr_file[0])  # type: ignore[index]
    assert evidence_sop_uids(sr) == {study[0].SOPInstanceUID}


def test_calling_ae_not_allowed_is_rejected(
    start_service: Callable[..., Running], storescp: tuple[int, Path]
) -> None:
    running = start_service(storescp[0])
    ae = AE(ae_title="WRONG")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", running.service.port, ae_title="OSSA")
    assert assoc.is_rejected


def test_real_nema_wg04_cr_gets_a_valid_sr(
    start_service: Callable[..., Running],
    storescp: tuple[int, Path],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A real 15-bit MONOCHROME1 CR from pydicom-data goes through the whole service."""
    from pydicom.data import get_testdata_file

    caplog.set_level(logging.INFO)
    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    pacs_port, pacs_dir = storescp
    running = start_service(pacs_port)
    assert _store(running.service.port, [source]) == [0]
    sr_files = wait_until(lambda: list(pacs_dir.iterdir()), timeout=120, what="the SR")
    sr_path = sr_files[0]  # type: ignore[index]
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert evidence_sop_uids(sr) == {source.SOPInstanceUID}
    assert dciodvfy_errors(sr_path) == []
    assert source.SOPInstanceUID in caplog.text
    assert str(source.PatientName) not in caplog.text
    assert source.PatientID not in caplog.text
