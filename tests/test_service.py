"""worker.service in-process: listener → state store → pipeline → outbox → a real storescp."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE

from dicom_io.synthetic import StudyIdentity
from harness.peers import free_port, wait_until
from models.datasets.phantom import render_study
from models.serving.predict import TwoStageClassifier
from tests.conftest import dciodvfy_errors, evidence_sop_uids
from worker.config import (
    Config,
    DeliveryConfig,
    DimseDestination,
    HttpConfig,
    ListenerConfig,
    ResultsConfig,
    StorageConfig,
    StudyConfig,
)
from worker.service import Service, build_service
from worker.store import StateStore


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


def _destination(name: str, port: int, *, ae_title: str = "STORESCP",
                 timeout_s: float = 5) -> DimseDestination:
    return DimseDestination(
        name=name, ae_title=ae_title, host="127.0.0.1", port=port, timeout_s=timeout_s
    )


@pytest.fixture
def start_service(
    tmp_path: Path, classifier: TwoStageClassifier
) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def _start(
        destinations: list[DimseDestination], *, completion_s: float = 0.5,
        secondary_capture: bool = False,
    ) -> Service:
        config = Config(
            results=ResultsConfig(secondary_capture=secondary_capture),
            listener=ListenerConfig(port=free_port(), allowed_calling_aets=("STORESCU",)),
            study=StudyConfig(completion_timeout_s=completion_s),
            storage=StorageConfig(root=tmp_path / "var"),
            delivery=DeliveryConfig(retry_initial_interval_s=0.2, retry_max_interval_s=1),
            destinations=tuple(destinations),
            http=HttpConfig(enabled=False),  # tests/test_http.py covers it
        )
        service = build_service(
            config, classifier, stop_event=threading.Event(), poll_interval_s=0.05,
            delivery_poll_interval_s=0.1,
        )
        service.start()
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop(deadline_s=30)


def _store(port: int, datasets: list[Dataset], calling: str = "STORESCU",
           sop_class: str = ComputedRadiographyImageStorage) -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _delivered(service: Service, destination: str = "pacs") -> int:
    return service.intake.store.summary().deliveries.get(destination, {}).get("delivered", 0)


def test_two_studies_each_get_one_sr(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pacs_port, pacs_dir = storescp
    service = start_service([_destination("pacs", pacs_port)])
    wrist = _phantom_study("WRIST", True, 11, make_radiograph)
    hand = _phantom_study("HAND", False, 12, make_radiograph, n_images=1)
    assert _store(service.port, wrist + hand) == [0, 0, 0]

    wait_until(lambda: _delivered(service) == 2, timeout=120, what="both SRs delivered")
    srs = sorted(pacs_dir.iterdir())
    assert len(srs) == 2
    by_study = {pydicom.dcmread(p).StudyInstanceUID: pydicom.dcmread(p) for p in srs}
    assert set(by_study) == {wrist[0].StudyInstanceUID, hand[0].StudyInstanceUID}
    for sources in (wrist, hand):
        sr = by_study[sources[0].StudyInstanceUID]
        assert evidence_sop_uids(sr) == {ds.SOPInstanceUID for ds in sources}
        assert "PredecessorDocumentsSequence" not in sr
    summary = service.intake.store.summary()
    assert summary.studies == {"reported": 2} and summary.jobs == {"done": 2}
    assert wrist[0].StudyInstanceUID in caplog.text and hand[0].SOPInstanceUID in caplog.text
    assert "Secret" not in caplog.text and "SECRET-ID" not in caplog.text


def test_study_received_before_a_restart_is_reported_after_it(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
) -> None:
    pacs_port, pacs_dir = storescp
    first = start_service([_destination("pacs", pacs_port)], completion_s=3600)
    study = _phantom_study("ELBOW", False, 21, make_radiograph)
    assert _store(first.port, study) == [0, 0]
    assert first.stop(deadline_s=30) == 0

    with StateStore.in_root(first.intake.spool.root) as store:
        assert store.summary().studies == {"receiving": 1}  # remembered, not yet due
    second = start_service([_destination("pacs", pacs_port)], completion_s=0.2)
    wait_until(lambda: _delivered(second) == 1, timeout=120, what="the SR after restart")
    assert evidence_sop_uids(pydicom.dcmread(next(pacs_dir.iterdir()))) == {
        ds.SOPInstanceUID for ds in study
    }


def test_late_instance_gets_a_second_sr_naming_the_first_as_predecessor(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
    tmp_path: Path,
) -> None:
    pacs_port, pacs_dir = storescp
    service = start_service([_destination("pacs", pacs_port)])
    first, late = _phantom_study("WRIST", False, 51, make_radiograph)
    assert _store(service.port, [first]) == [0]
    wait_until(lambda: _delivered(service) == 1, timeout=120, what="the first SR")
    sr1 = pydicom.dcmread(next(pacs_dir.iterdir()))

    assert _store(service.port, [first]) == [0]  # re-sent: not a new instance
    assert _store(service.port, [late]) == [0]
    wait_until(lambda: _delivered(service) == 2, timeout=120, what="the second SR")
    sr2_path = next(p for p in pacs_dir.iterdir() if pydicom.dcmread(p).SOPInstanceUID
                    != sr1.SOPInstanceUID)
    sr2 = pydicom.dcmread(sr2_path)
    assert sr2.StudyInstanceUID == sr1.StudyInstanceUID
    assert evidence_sop_uids(sr2) == {first.SOPInstanceUID, late.SOPInstanceUID}
    assert int(sr1.InstanceNumber) == 1 and int(sr2.InstanceNumber) == 2
    (study_ref,) = sr2.PredecessorDocumentsSequence
    (series_ref,) = study_ref.ReferencedSeriesSequence
    (sop_ref,) = series_ref.ReferencedSOPSequence
    assert study_ref.StudyInstanceUID == sr1.StudyInstanceUID
    assert series_ref.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert sop_ref.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert sop_ref.ReferencedSOPClassUID == sr1.SOPClassUID
    assert dciodvfy_errors(sr2_path) == []
    assert service.intake.store.summary().jobs == {"done": 2}
    assert len(list(pacs_dir.iterdir())) == 2  # the re-sent instance started nothing


def test_own_sr_forwarded_back_is_acknowledged_and_not_reported(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pacs_port, pacs_dir = storescp
    service = start_service([_destination("pacs", pacs_port)], completion_s=0.2)
    assert _store(service.port, _phantom_study("HAND", True, 61, make_radiograph, 1)) == [0]
    wait_until(lambda: _delivered(service) == 1, timeout=120, what="the SR")
    sr = pydicom.dcmread(next(pacs_dir.iterdir()))

    assert _store(service.port, [sr], sop_class=Comprehensive3DSRStorage) == [0]
    assert f"Acknowledged SOP Instance {sr.SOPInstanceUID}" in caplog.text
    summary = service.intake.store.summary()
    assert summary.instances == {"stored": 1} and summary.studies == {"reported": 1}
    assert summary.jobs == {"done": 1}


def test_secondary_captures_go_out_with_the_sr_and_are_not_reprocessed(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pacs_port, pacs_dir = storescp
    service = start_service([_destination("pacs", pacs_port)], secondary_capture=True)
    study = _phantom_study("WRIST", True, 81, make_radiograph, n_images=2)
    assert _store(service.port, study) == [0, 0]
    wait_until(lambda: service.intake.store.summary().jobs == {"done": 1}, timeout=120,
               what="the study reported")
    summary = service.intake.store.summary()
    total = summary.deliveries["pacs"].get("pending", 0) + _delivered(service)
    assert total >= 2  # the SR and a secondary capture per assessed image
    wait_until(lambda: _delivered(service) == total, timeout=60, what="every object delivered")
    received = [pydicom.dcmread(p) for p in pacs_dir.iterdir()]
    captures = [ds for ds in received if ds.SOPClassUID == SecondaryCaptureImageStorage]
    assert len([ds for ds in received if ds.Modality == "SR"]) == 1
    assert len(captures) == total - 1
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in captures} <= {
        ds.SOPInstanceUID for ds in study}

    # A PACS forwarding the secondary capture back: acknowledged, not a new image.
    assert _store(service.port, captures[:1], sop_class=SecondaryCaptureImageStorage) == [0]
    assert f"Acknowledged SOP Instance {captures[0].SOPInstanceUID}" in caplog.text
    assert service.intake.store.summary().instances == {"stored": 2}


def test_blackholed_destination_does_not_delay_another(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
) -> None:
    pacs_port, pacs_dir = storescp
    with socket.socket() as blackhole:  # accepts TCP connections, never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        hole_port = blackhole.getsockname()[1]
        service = start_service([
            _destination("hole", hole_port, ae_title="HOLE", timeout_s=60),
            _destination("pacs", pacs_port),
        ])
        assert _store(service.port, _phantom_study("FOREARM", False, 71, make_radiograph)) == [0, 0]
        wait_until(lambda: _delivered(service) == 1, timeout=120, what="the SR at the good peer")
        assert len(list(pacs_dir.iterdir())) == 1
        hole = service.intake.store.summary().deliveries["hole"]
        assert hole == {"pending": 1}  # its first attempt is still waiting for the blackhole
        second = _phantom_study("ELBOW", True, 72, make_radiograph, 1)
        assert _store(service.port, second) == [0]
        wait_until(lambda: _delivered(service) == 2, timeout=120, what="a second SR meanwhile")


def test_real_nema_wg04_cr_gets_a_valid_sr(
    start_service: Callable[..., Service],
    storescp: tuple[int, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real 15-bit MONOCHROME1 CR from pydicom-data goes through the whole service."""
    from pydicom.data import get_testdata_file

    caplog.set_level(logging.INFO)
    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    pacs_port, pacs_dir = storescp
    service = start_service([_destination("pacs", pacs_port)])
    assert _store(service.port, [source]) == [0]
    wait_until(lambda: _delivered(service) == 1, timeout=120, what="the SR")
    sr_path = next(pacs_dir.iterdir())
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert evidence_sop_uids(sr) == {source.SOPInstanceUID}
    assert dciodvfy_errors(sr_path) == []
    assert source.SOPInstanceUID in caplog.text
    assert str(source.PatientName) not in caplog.text
    assert source.PatientID not in caplog.text


def test_calling_ae_not_allowed_is_rejected(
    start_service: Callable[..., Service], storescp: tuple[int, Path]
) -> None:
    service = start_service([_destination("pacs", storescp[0])])
    ae = AE(ae_title="WRONG")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", service.port, ae_title="OSSA")
    assert assoc.is_rejected
