"""worker.http in a running service: health, metrics, the API and its retry, STOW-RS inbound
(curl and dicomweb-client) into Orthanc, and the status page in headless Chromium.

The service is built in-process as ``ossa serve`` builds it (:func:`worker.service.
build_service`) with the HTTP server on a free port; the peers are real: a pynetdicom
listener client, DCMTK's storescp, a refusing Storage SCP, Orthanc, curl, dicomweb-client
and Chromium driven by Selenium.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from harness.peers import Orthanc, free_port, wait_until
from models.serving.predict import TwoStageClassifier
from tests.test_outbox import RefusingScp
from tests.test_service import _destination, _phantom_study, _store
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

#: Where the browser test leaves its screenshot (git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
#: Patient data the test studies carry; it must never come out of the HTTP side.
PHI = ("Secret", "SECRET-ID")


@dataclass
class Running:
    """A started service and how to reach its HTTP side."""

    service: Service
    base: str
    token: str
    token_file: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.base + path, timeout=60, **kwargs)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def start(tmp_path: Path, classifier: TwoStageClassifier) -> Iterator[Callable[..., Running]]:
    started: list[Service] = []

    def _start(
        destinations: list[DimseDestination], *, token: bool = True, max_upload_mb: int = 512,
        host: str = "127.0.0.1",
    ) -> Running:
        secret = secrets.token_hex(16)
        token_file = tmp_path / f"http-{len(started)}.token"
        if token:
            token_file.write_text(secret + "\n", encoding="utf-8")
        config = Config(
            results=ResultsConfig(secondary_capture=False),  # one object per study
            listener=ListenerConfig(port=free_port(), allowed_calling_aets=("STORESCU",)),
            study=StudyConfig(completion_timeout_s=0.5),
            storage=StorageConfig(root=tmp_path / "var"),
            delivery=DeliveryConfig(retry_initial_interval_s=0.2, retry_max_interval_s=1),
            destinations=tuple(destinations),
            http=HttpConfig(enabled=True, host=host, port=free_port(), token_file=token_file,
                            max_upload_mb=max_upload_mb),
        )
        service = build_service(config, classifier, stop_event=threading.Event(),
                                poll_interval_s=0.05, delivery_poll_interval_s=0.1)
        service.start()
        started.append(service)
        assert service.http is not None
        return Running(service, f"http://127.0.0.1:{service.http.port}", secret, token_file)

    yield _start
    for service in started:
        service.stop(deadline_s=30)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _study_delivery_state(run: Running, study_uid: str) -> str | None:
    response = run.get(f"/api/studies/{study_uid}")
    if response.status_code != 200:
        return None
    deliveries = [d for s in response.json()["senders"] for d in s["deliveries"]]
    return deliveries[0]["state"] if deliveries else None


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _multipart(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body of ``parts`` and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n"
        + part + b"\r\n"
        for part in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _curl(url: str, body: bytes, content_type: str, folder: Path, *,
          token: str | None = None, chunked: bool = False) -> tuple[int, bytes]:
    """``curl --data-binary`` a body; the HTTP status and the response body."""
    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("curl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    request, answer = folder / f"{uuid.uuid4().hex}.body", folder / f"{uuid.uuid4().hex}.out"
    request.write_bytes(body)
    command = [exe, "-sS", "-X", "POST", "--data-binary", f"@{request}", "-o", str(answer),
               "-w", "%{http_code}", "-H", f"Content-Type: {content_type}"]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    if chunked:
        command += ["-H", "Transfer-Encoding: chunked"]
    proc = subprocess.run([*command, url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout), answer.read_bytes() if answer.exists() else b""


def _foreign_sr(study_uid: str | None = None) -> Dataset:
    """A Comprehensive 3D SR Ossa did not produce (refused: 0x0122)."""
    from pydicom import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.Manufacturer = "Elsewhere"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _orthanc_destination(orthanc: Orthanc) -> DimseDestination:
    return DimseDestination(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                            port=orthanc.dicom_port, timeout_s=10)


# --- health -------------------------------------------------------------------------------


def test_healthz_is_ok_then_503_naming_a_broken_spool_or_a_closed_store(
    start: Callable[..., Running], storescp: tuple[int, Path]
) -> None:
    run = start([_destination("pacs", storescp[0])])
    response = run.get("/healthz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert set(body["checks"]) == {"listener", "model", "store", "spool"}
    assert all(check["ok"] for check in body["checks"].values())
    assert f"OSSA on 127.0.0.1:{run.service.port}" in body["checks"]["listener"]["detail"]
    assert body["destinations"] == {
        "pacs": {"deliveries": {}, "last_attempt": None, "last_outcome": None}}

    tmp = run.service.intake.spool.tmp  # a damaged spool: tmp/ is a file, nothing is written
    shutil.rmtree(tmp)
    tmp.write_bytes(b"")
    try:
        broken = run.get("/healthz")
        assert broken.status_code == 503
        assert broken.json()["failing"] == ["spool"]
        assert "not writable" in broken.json()["checks"]["spool"]["detail"]
    finally:
        tmp.unlink()
        tmp.mkdir()
    assert run.get("/healthz").status_code == 200

    run.service.intake.store.close()
    closed = run.get("/healthz")
    assert closed.status_code == 503
    assert closed.json()["failing"] == ["store"]
    assert "closed" in closed.json()["checks"]["store"]["detail"]


# --- metrics and the API --------------------------------------------------------------------


def test_metrics_and_the_api_follow_a_study_sent_through_the_listener(
    start: Callable[..., Running],
    storescp: tuple[int, Path],
    make_radiograph: Callable[..., Dataset],
) -> None:
    run = start([_destination("pacs", storescp[0])])
    before = run.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(before.text)}
    assert names and all(name.startswith("ossa_") for name in names), names
    samples = _samples(before.text)
    assert _value(samples, "ossa_instances_received_total", protocol="dimse",
                  outcome="stored") == 0
    assert _value(samples, "ossa_inference_seconds_count") == 0
    assert _value(samples, "ossa_store_up") == 1
    node = run.service.intake.store.node
    assert node and _value(samples, "ossa_node_info", node=node) == 1
    assert _value(samples, "ossa_process_resident_memory_bytes") > 0
    assert _value(samples, "ossa_deliveries", destination="pacs", state="pending") == 0

    study = _phantom_study("WRIST", True, 31, make_radiograph)
    study_uid = study[0].StudyInstanceUID
    assert _store(run.service.port, study) == [0, 0]
    assert _store(run.service.port, study[:1]) == [0]  # re-sent: a duplicate
    wait_until(lambda: _study_delivery_state(run, study_uid) == "delivered", timeout=120,
               what="the SR delivered")

    after = _samples(run.get("/metrics").text)
    assert _value(after, "ossa_instances_received_total", protocol="dimse",
                  outcome="stored") == 2
    assert _value(after, "ossa_instances_received_total", protocol="dimse",
                  outcome="duplicate") == 1
    assert _value(after, "ossa_studies", state="reported") == 1
    assert _value(after, "ossa_jobs", state="done") == 1
    assert _value(after, "ossa_jobs", state="queued") == 0
    assert _value(after, "ossa_inference_seconds_count") >= 1
    assert _value(after, "ossa_inference_images_total") == 2
    assert _value(after, "ossa_deliveries", destination="pacs", state="delivered") == 1
    assert _value(after, "ossa_deliveries_last_outcome", destination="pacs",
                  outcome="success") == 1
    assert _value(after, "ossa_oldest_pending_delivery_age_seconds", destination="pacs") == 0
    assert _value(after, "ossa_spool_bytes") > 0
    assert _value(after, "ossa_report_queue_size") == 0

    listing = run.get("/api/studies").json()
    assert listing["total"] == 1 and listing["limit"] == 50 and listing["offset"] == 0
    (row,) = listing["studies"]
    assert row["study_uid"] == study_uid and row["calling_aet"] == "STORESCU"
    assert row["state"] == "reported" and row["instances"] == 2 and row["revision"] == 1
    assert row["result"].split(" (p=")[0] in ("NORMAL", "ABNORMAL", "NOT ASSESSED")
    assert row["deliveries"] == {"delivered": 1}
    assert run.get("/api/studies?state=failed").json() == {
        "total": 0, "limit": 50, "offset": 0, "studies": []}
    assert run.get("/api/studies?limit=0").status_code == 400
    assert run.get("/api/studies?state=bogus").status_code == 400

    detail = run.get(f"/api/studies/{study_uid}").json()
    (sender,) = detail["senders"]
    assert detail["study_uid"] == study_uid and sender["state"] == "reported"
    assert [j["revision"] for j in sender["jobs"]] == [1]
    assert sender["jobs"][0]["state"] == "done" and sender["jobs"][0]["error"] is None
    (sr,) = sender["objects"]
    assert sr["kind"] == "sr" and sr["sop_class_uid"] == Comprehensive3DSRStorage
    (delivery,) = sender["deliveries"]
    assert delivery["destination"] == "pacs" and delivery["state"] == "delivered"
    assert delivery["sop_instance_uid"] == sr["sop_instance_uid"] and delivery["attempts"] == 1
    assert run.get("/api/studies/1.2.3.4.5").status_code == 404

    for text in (json.dumps(listing), json.dumps(detail), run.get("/").text,
                 run.get("/metrics").text):
        assert not any(secret in text for secret in PHI)


# --- tokens and retry -------------------------------------------------------------------------


def test_retry_needs_the_token_and_requeues_a_refused_delivery(
    start: Callable[..., Running], make_radiograph: Callable[..., Dataset]
) -> None:
    peer = RefusingScp()
    try:
        run = start([_destination("picky", peer.port, ae_title=peer.aet)])
        study = _phantom_study("HAND", False, 41, make_radiograph, n_images=1)
        study_uid = study[0].StudyInstanceUID
        assert _store(run.service.port, study) == [0]
        wait_until(lambda: _study_delivery_state(run, study_uid) == "failed", timeout=120,
                   what="the refused delivery to fail")
        (delivery,) = run.get(f"/api/studies/{study_uid}").json()["senders"][0]["deliveries"]
        assert delivery["last_outcome"] == "refused" and "0xC000" in delivery["last_detail"]

        path = f"/api/studies/{study_uid}/retry"
        unauthenticated = run.post(path)
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["www-authenticate"].startswith("Bearer")
        assert run.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert run.post(path, headers={"Authorization": f"Basic {run.token}"}).status_code == 401
        assert _study_delivery_state(run, study_uid) == "failed"

        peer.fixed.set()
        retried = run.post(path, headers=run.auth)
        assert retried.status_code == 200
        assert retried.json() == {"study_uid": study_uid, "requeued": 1}
        wait_until(lambda: _study_delivery_state(run, study_uid) == "delivered", timeout=60,
                   what="the SR delivered after the retry")
        assert len(peer.received) == 1
        assert run.post("/api/studies/1.2.3.4.5/retry", headers=run.auth).status_code == 404
    finally:
        assert peer.server is not None
        peer.server.shutdown()


def test_without_a_token_writes_are_refused_until_one_is_written_and_reads_off_loopback_need_it(
    start: Callable[..., Running], storescp: tuple[int, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = start([_destination("pacs", storescp[0])], token=False, host="0.0.0.0")
    assert "retry and STOW-RS are refused (403)" in caplog.text
    body, content_type = _multipart([b"anything"])
    for response in (
        run.post("/api/studies/1.2.3/retry", headers=run.auth),
        run.post("/dicomweb/studies", content=body,
                 headers={**run.auth, "Content-Type": content_type}),
        run.get("/api/studies", headers=run.auth),  # off loopback, reads need the token too
        run.get("/healthz"),
    ):
        assert response.status_code == 403, response.text
        assert "token" in response.json()["error"]

    run.token_file.write_text(run.token, encoding="utf-8")  # picked up without a restart
    assert run.get("/healthz").status_code == 401
    assert run.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert run.get("/healthz", headers=run.auth).status_code == 200
    assert run.get("/api/studies", headers=run.auth).json()["studies"] == []
    assert run.post("/api/studies/1.2.3/retry", headers=run.auth).status_code == 404

    rotated = secrets.token_hex(16)
    run.token_file.write_text(rotated, encoding="utf-8")
    assert run.get("/healthz", headers=run.auth).status_code == 401
    assert run.get("/healthz", headers={"Authorization": f"Bearer {rotated}"}).status_code == 200
    assert run.token not in caplog.text and rotated not in caplog.text


def test_loopback_reads_refuse_a_foreign_host_header(
    start: Callable[..., Running], storescp: tuple[int, Path]
) -> None:
    """A page elsewhere that re-binds its name to 127.0.0.1 cannot read the API."""
    run = start([_destination("pacs", storescp[0])])
    assert run.get("/api/studies").status_code == 200
    assert run.get("/api/studies", headers={"Host": "localhost:1"}).status_code == 200
    assert run.get("/api/studies", headers={"Host": "[::1]:8080"}).status_code == 200
    assert run.get("/api/studies", headers={"Host": "evil.example:8080"}).status_code == 401
    assert run.get("/api/studies", headers={"Host": "evil.example", **run.auth}
                   ).status_code == 200


# --- STOW-RS inbound ----------------------------------------------------------------------


def test_stow_rs_with_curl_stores_a_study_whose_sr_reaches_orthanc(
    start: Callable[..., Running],
    orthanc: Orthanc,
    make_radiograph: Callable[..., Dataset],
    tmp_path: Path,
) -> None:
    run = start([_orthanc_destination(orthanc)], max_upload_mb=1)
    url = run.base + "/dicomweb/studies"
    study = _phantom_study("ELBOW", True, 91, make_radiograph)
    study_uid = study[0].StudyInstanceUID
    body, content_type = _multipart([_part10(ds) for ds in study])
    assert len(body) < 1024 * 1024
    folder = tmp_path / "curl"

    assert _curl(url, body, content_type, folder)[0] == 401
    assert _curl(url, body, content_type, folder, token="wrong")[0] == 401
    status, answer = _curl(url, _part10(study[0]), "application/dicom", folder, token=run.token)
    assert status == 415 and b"multipart/related" in answer
    status, _ = _curl(url, body, content_type.replace("application/dicom", "application/json"),
                      folder, token=run.token)
    assert status == 415
    big, big_type = _multipart([_part10(study[0]), secrets.token_bytes(1024 * 1024)])
    assert _curl(url, big, big_type, folder, token=run.token)[0] == 413
    assert _curl(url, big, big_type, folder, token=run.token, chunked=True)[0] == 413
    assert run.get(f"/api/studies/{study_uid}").status_code == 404  # nothing of it was stored

    status, answer = _curl(url, body, content_type, folder, token=run.token)
    assert status == 200, answer
    response = Dataset.from_json(json.loads(answer))
    assert {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in study}
    assert "FailedSOPSequence" not in response

    sr_uids = wait_until(lambda: orthanc.sr_sop_uids(study_uid), timeout=120,
                         what="the SR of the STOW-RS study in Orthanc")
    (sender,) = run.get(f"/api/studies/{study_uid}").json()["senders"]
    assert sender["calling_aet"] == "STOW-RS" and sender["instances"] == 2
    assert [o["sop_instance_uid"] for o in sender["objects"]] == sr_uids
    metrics = _samples(run.get("/metrics").text)
    assert _value(metrics, "ossa_instances_received_total", protocol="stowrs",
                  outcome="stored") == 2

    # One good instance and one that is not DICOM: 202, the bad one in Failed SOP Sequence.
    other = _phantom_study("HAND", False, 92, make_radiograph, n_images=1)
    mixed, mixed_type = _multipart([_part10(other[0]), b"this is not a DICOM file"])
    status, answer = _curl(url, mixed, mixed_type, folder, token=run.token)
    assert status == 202, answer
    response = Dataset.from_json(json.loads(answer))
    assert [i.ReferencedSOPInstanceUID for i in response.ReferencedSOPSequence] == [
        other[0].SOPInstanceUID]
    (failed,) = response.FailedSOPSequence
    assert failed.FailureReason == 0xC000

    # Every instance refused: 409 (an SR Ossa did not write; a data set without its UIDs).
    no_study = _phantom_study("HAND", False, 93, make_radiograph, n_images=1)[0]
    del no_study.StudyInstanceUID
    sr = _foreign_sr()
    refused, refused_type = _multipart([_part10(sr), _part10(no_study)])
    status, answer = _curl(url, refused, refused_type, folder, token=run.token)
    assert status == 409, answer
    reasons = {i.ReferencedSOPInstanceUID: i.FailureReason
               for i in Dataset.from_json(json.loads(answer)).FailedSOPSequence}
    assert reasons == {sr.SOPInstanceUID: 0x0122, no_study.SOPInstanceUID: 0xA900}
    metrics = _samples(run.get("/metrics").text)
    assert _value(metrics, "ossa_instances_refused_total", protocol="stowrs",
                  reason="sop_class") == 1
    assert _value(metrics, "ossa_instances_refused_total", protocol="stowrs",
                  reason="undecodable") == 1


def test_stow_rs_with_dicomweb_client(
    start: Callable[..., Running],
    orthanc: Orthanc,
    make_radiograph: Callable[..., Dataset],
) -> None:
    run = start([_orthanc_destination(orthanc)])
    study = _phantom_study("FOREARM", False, 95, make_radiograph)
    study_uid = study[0].StudyInstanceUID

    anonymous = DICOMwebClient(url=run.base + "/dicomweb")
    with pytest.raises(requests.HTTPError) as refused:
        anonymous.store_instances(study)
    assert refused.value.response.status_code == 401

    client = DICOMwebClient(url=run.base + "/dicomweb", headers=run.auth)
    foreign = _foreign_sr()
    response = client.store_instances([*study, foreign])  # 202: stored, but for the SR
    assert {i.ReferencedSOPInstanceUID for i in response.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in study}
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == foreign.SOPInstanceUID
    assert failed.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert failed.FailureReason == 0x0122

    again = client.store_instances(study[:1])  # re-sent: acknowledged, not a new instance
    assert [i.ReferencedSOPInstanceUID for i in again.ReferencedSOPSequence] == [
        study[0].SOPInstanceUID]
    wait_until(lambda: orthanc.sr_sop_uids(study_uid), timeout=120,
               what="the SR of the dicomweb-client study in Orthanc")


# --- the status page in a real browser -------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium driven by Debian's chromedriver (Selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    if not (shutil.which("chromium") and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("chromium and chromium-driver (Debian) are not installed; run `make test`")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=DriverService(executable_path="/usr/bin/chromedriver"),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_status_page_in_chromium_lists_the_study_and_its_retry_works(
    start: Callable[..., Running], make_radiograph: Callable[..., Dataset], chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    peer = RefusingScp()
    try:
        run = start([_destination("picky", peer.port, ae_title=peer.aet)])
        study = _phantom_study("WRIST", False, 97, make_radiograph, n_images=1)
        study_uid = study[0].StudyInstanceUID
        assert _store(run.service.port, study) == [0]
        wait_until(lambda: _study_delivery_state(run, study_uid) == "failed", timeout=120,
                   what="the refused delivery to fail")

        chromium.get(run.base + "/")
        assert chromium.title == "Ossa status"
        node = run.service.intake.store.node
        assert chromium.find_element(By.ID, "node").text == f"node {node}"
        row = chromium.find_element(By.CSS_SELECTOR, f'tr.study[data-study="{study_uid}"]')
        assert study_uid in row.text and "reported" in row.text and "1 failed" in row.text
        assert row.find_element(By.CSS_SELECTOR, "td.result").text != "—"
        assert not any(secret in chromium.page_source for secret in PHI)
        ARTIFACTS.mkdir(exist_ok=True)
        assert chromium.save_screenshot(str(ARTIFACTS / "status-page-failed.png"))

        def retry_with(token: str) -> None:
            form = chromium.find_element(By.CSS_SELECTOR, f'form.retry[data-study="{study_uid}"]')
            form.find_element(By.NAME, "token").send_keys(token)
            form.find_element(By.TAG_NAME, "button").click()

        retry_with("not the token")
        (error,) = wait_until(lambda: chromium.find_elements(By.ID, "error"), timeout=30,
                              what="the page to say the token is wrong")  # type: ignore[misc]
        assert "wrong token" in error.text
        assert _study_delivery_state(run, study_uid) == "failed"

        peer.fixed.set()
        retry_with(run.token)
        (notice,) = wait_until(lambda: chromium.find_elements(By.ID, "notice"), timeout=30,
                               what="the page to confirm the retry")  # type: ignore[misc]
        assert notice.text == f"Re-queued 1 delivery of study {study_uid}."

        def delivered_on_page() -> bool:
            chromium.get(run.base + "/")
            cell = chromium.find_element(
                By.CSS_SELECTOR, f'tr.study[data-study="{study_uid}"] td.deliveries')
            return cell.text == "1 delivered"

        wait_until(delivered_on_page, timeout=60, what="the page to show the SR delivered")
        assert chromium.find_elements(By.CSS_SELECTOR, "form.retry") == []
        screenshot = ARTIFACTS / "status-page.png"
        assert chromium.save_screenshot(str(screenshot))
        print(f"status page screenshots: {ARTIFACTS / 'status-page-failed.png'}, {screenshot}")
        assert len(peer.received) == 1
    finally:
        assert peer.server is not None
        peer.server.shutdown()
