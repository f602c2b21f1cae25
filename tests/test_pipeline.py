"""worker.pipeline: classify and report stages over a real state store and the test bundle."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import JPEGBaseline8Bit

from dicom_io.derived import encode_file
from dicom_io.sr import study_finding
from dicom_io.synthetic import StudyIdentity
from models.datasets.phantom import render_study
from models.serving.predict import TwoStageClassifier
from tests.conftest import FakeClock, dciodvfy_errors, evidence_sop_uids
from worker.pipeline import Classified, ClassifyStage, ReportStage, Scheduler, study_result
from worker.spool import Spool
from worker.store import STORE_FILE, StateStore


@dataclass
class Stages:
    store: StateStore
    spool: Spool
    clock: FakeClock
    out: queue.Queue[Classified | None]
    stop: threading.Event
    classify: ClassifyStage
    report: ReportStage

    def receive(self, datasets: list[Dataset], *, calling_aet: str = "CR1") -> None:
        for ds in datasets:
            path = self.spool.instance_path(calling_aet, ds.StudyInstanceUID, ds.SOPInstanceUID)
            data = encode_file(ds)
            self.spool.write(path, data)
            self.store.add_instance(calling_aet=calling_aet, study_uid=ds.StudyInstanceUID,
                                    sop_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                                    series_uid=ds.SeriesInstanceUID, path=path, size=len(data))

    def classify_all(self) -> list[Classified]:
        self.clock.advance(60)
        Scheduler(self.store, 10, max_queued=16).run_once()
        self.classify.run_once()
        items = []
        while not self.out.empty():
            item = self.out.get_nowait()
            assert item is not None
            items.append(item)
        return items


@pytest.fixture
def stages(tmp_path: Path, classifier: TwoStageClassifier) -> Iterator[Stages]:
    clock = FakeClock()
    spool = Spool(tmp_path)
    out: queue.Queue[Classified | None] = queue.Queue(maxsize=4)
    stop = threading.Event()
    with StateStore(tmp_path / STORE_FILE, clock=clock) as store:
        yield Stages(
            store, spool, clock, out, stop,
            ClassifyStage(store, spool, classifier, out, stop, captures=True),
            ReportStage(store, spool, classifier.taxonomy, classifier.algorithm, ["pacs"]),
        )


def _wrist(make: Callable[..., Dataset], identity: StudyIdentity, seed: int = 5,
           n: int = 1) -> list[Dataset]:
    study = render_study("WRIST", True, seed, n_images=n)
    return [make(identity, image=np.round(im * 255).astype(np.uint8), instance_number=i + 1)
            for i, im in enumerate(study.images)]


def _identity() -> StudyIdentity:
    return StudyIdentity(patient_id="P1", patient_name="Doe^J", accession_number="A1",
                         body_part="WRIST")


def test_out_of_scope_and_undecodable_images_are_reported_as_not_assessed(
    stages: Stages, make_radiograph: Callable[..., Dataset], tmp_path: Path
) -> None:
    identity = _identity()
    wrist, chest, broken = _wrist(make_radiograph, identity, n=3)
    chest.BodyPartExamined = "CHEST"
    broken.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # bytes that are no JPEG
    broken.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    stages.receive([wrist, chest, broken])

    (item,) = stages.classify_all()
    assert item.prediction is not None
    by_uid = dict(zip([ds.SOPInstanceUID for ds in item.study.sources],
                      item.prediction.images, strict=True))
    assert by_uid[wrist.SOPInstanceUID].assessed
    assert not by_uid[chest.SOPInstanceUID].assessed
    assert "Body Part Examined CHEST is outside the assessed scope" in by_uid[
        chest.SOPInstanceUID].reason
    assert not by_uid[broken.SOPInstanceUID].assessed
    assert "pixel data could not be decoded" in by_uid[broken.SOPInstanceUID].reason
    # The assessed image's rendering is kept for its secondary capture; the others have none.
    images = dict(zip([ds.SOPInstanceUID for ds in item.study.sources], item.study.images,
                      strict=True))
    assert images[wrist.SOPInstanceUID] is not None and images[chest.SOPInstanceUID] is None
    # The sources kept for the report are headers: no radiograph's pixels stay in memory.
    assert all("PixelData" not in ds for ds in item.study.sources)

    obj = stages.report.handle(item)
    assert obj is not None
    sr = pydicom.dcmread(stages.spool.path(obj.path))
    assert evidence_sop_uids(sr) == {wrist.SOPInstanceUID, chest.SOPInstanceUID,
                                     broken.SOPInstanceUID}
    text = "\n".join(str(e.value) for e in sr.iterall() if e.keyword == "TextValue")
    assert "Not assessed: Body Part Examined CHEST" in text
    assert "Not assessed: pixel data could not be decoded" in text
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode_file(sr))
    assert dciodvfy_errors(path) == []


def test_study_with_only_out_of_scope_images_is_not_assessed_without_the_model(
    stages: Stages, make_radiograph: Callable[..., Dataset]
) -> None:
    chest = _wrist(make_radiograph, _identity())[0]
    chest.BodyPartExamined = "PELVIS"
    stages.receive([chest])
    (item,) = stages.classify_all()
    assert item.prediction is not None and item.prediction.verdict == "NOT ASSESSED"
    obj = stages.report.handle(item)
    assert obj is not None
    assert study_finding(pydicom.dcmread(stages.spool.path(obj.path))) is None
    assert stages.store.summary().deliveries == {"pacs": {"pending": 1}}


def test_study_of_unreadable_files_fails_without_an_sr(stages: Stages) -> None:
    path = stages.spool.instance_path("CR1", "1.2.3", "1.2.3.4")
    stages.spool.write(path, b"not DICOM at all")
    stages.store.add_instance(calling_aet="CR1", study_uid="1.2.3", sop_uid="1.2.3.4",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_uid="1.2.3.5",
                              path=path, size=16)
    (item,) = stages.classify_all()
    assert item.prediction is None and item.study.skipped == ["1.2.3.4"]
    assert stages.report.handle(item) is None
    summary = stages.store.summary()
    assert summary.studies == {"failed": 1} and summary.deliveries == {}


def test_a_full_hand_over_queue_stops_the_stage_and_keeps_the_job_running(
    stages: Stages, make_radiograph: Callable[..., Dataset]
) -> None:
    for seed in range(5):  # five studies, a queue of four
        identity = _identity()
        stages.receive(_wrist(make_radiograph, identity, seed=seed))
    stages.stop.set()  # stopping: the stage must not block on the full queue
    items = stages.classify_all()
    assert len(items) == 4
    assert stages.store.summary().jobs == {"running": 5}
    assert stages.store.requeue_interrupted() == 5  # what the next start does


def test_secondary_capture_per_assessed_image_recorded_with_the_sr(
    stages: Stages, make_radiograph: Callable[..., Dataset], classifier: TwoStageClassifier,
    tmp_path: Path,
) -> None:
    identity = _identity()
    wrist, chest = _wrist(make_radiograph, identity, n=2)
    chest.BodyPartExamined = "CHEST"
    stages.receive([wrist, chest])
    (item,) = stages.classify_all()
    report = ReportStage(stages.store, stages.spool, classifier.taxonomy, classifier.algorithm,
                         ["pacs"], captures=True)
    assert report.handle(item) is not None
    summary = stages.store.summary()
    assert summary.deliveries == {"pacs": {"pending": 2}}  # the SR and one SC (not the chest)
    (sc_path,) = [p for p in (tmp_path / "objects").rglob("*.dcm")
                  if pydicom.dcmread(p).Modality != "SR"]
    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.BurnedInAnnotation == "YES" and sc.Manufacturer == "Ossa"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == wrist.SOPInstanceUID
    assert sc.StudyInstanceUID == wrist.StudyInstanceUID
    assert dciodvfy_errors(sc_path) == []
    assert stages.store.is_own_object(sc.SOPInstanceUID, sc.SeriesInstanceUID)


def test_inference_time_is_observed_and_the_result_recorded_with_the_job(
    stages: Stages, make_radiograph: Callable[..., Dataset], classifier: TwoStageClassifier
) -> None:
    from worker.http.metrics import Metrics

    metrics = Metrics()
    stages.classify.metrics = metrics
    stages.receive(_wrist(make_radiograph, _identity(), n=2))
    (item,) = stages.classify_all()
    assert metrics.registry.get_sample_value("ossa_inference_seconds_count") == 1
    assert metrics.registry.get_sample_value("ossa_inference_images_total") == 2
    assert (metrics.registry.get_sample_value("ossa_inference_seconds_sum") or 0) > 0
    assert stages.report.handle(item) is not None
    assert item.prediction is not None
    (row,) = stages.store.list_studies()
    assert row.result == study_result(item.prediction)
    assert row.result.startswith(item.prediction.verdict + " (p=")


def test_the_scheduler_knows_when_the_next_study_is_due(
    stages: Stages, make_radiograph: Callable[..., Dataset]
) -> None:
    scheduler = Scheduler(stages.store, 10, max_queued=1)
    assert scheduler.seconds_until_due() is None
    stages.receive([make_radiograph()])
    stages.clock.advance(4)
    assert scheduler.seconds_until_due() == pytest.approx(6)
    stages.receive([make_radiograph(_identity())])
    stages.clock.advance(7)
    assert scheduler.run_once() == 1  # the first; the second waits for room (max_queued=1)
    assert scheduler.seconds_until_due() == pytest.approx(3)
    stages.clock.advance(4)
    assert scheduler.run_once() == 0
    assert scheduler.seconds_until_due() == pytest.approx(-1)  # due, but the queue is full
