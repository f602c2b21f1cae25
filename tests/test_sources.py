"""Sources against a real Orthanc (DICOMweb plugin and DIMSE) used as the archive.

Studies are uploaded over Orthanc's REST API, with no forwarding rule: Ossa finds them by
polling QIDO-RS, retrieves them with WADO-RS (or C-GET/C-MOVE on demand), reports them and
stores its SR and captures back by STOW-RS. An HTTP proxy between Ossa and Orthanc stops
Orthanc for real at a chosen request (the "archive stopped mid-retrieval" case).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from dicom_io.derived import encode_file
from dicom_io.synthetic import StudyIdentity, radiograph_dataset
from dicom_io.transfer_syntax import TRANSFER_SYNTAXES
from harness.config import write_config
from harness.peers import PostgresServer, free_port, wait_until
from models.datasets.phantom import render_study
from models.serving.predict import TwoStageClassifier
from tests.conftest import dciodvfy_errors
from tests.test_sr import (
    DCIODVFY_SUMMARY,
    INVALID_IDENTIFIERS,
    INVALID_VALUES,
    identifier_errors,
)
from tests.test_stow import ORTHANC_PASSWORD, ORTHANC_USER, AuthOrthanc, secret_file
from worker.cli import main
from worker.config import (
    Config,
    DicomwebSource,
    DimseSource,
    StowRsDestination,
    load_config,
)
from worker.service import Service, build_service
from worker.sources.demand import analysis_state
from worker.store import RetrievalState, StateStore

SOURCE = "archive"


class Archive(AuthOrthanc):
    """The test's archive: Orthanc with HTTP Basic authentication."""

    def upload(self, ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> None:
        """Store ``ds`` in ``syntax`` through Orthanc's REST API (no DICOMweb, no DIMSE)."""
        ds = ds.copy()
        if syntax == RLELossless:
            ds.compress(RLELossless)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        token = base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            self.url + "/instances", data=encode_file(ds),
            headers={"Content-Type": "application/dicom", "Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["Status"] in ("Success", "AlreadyStored")

    def instances_of(self, study_uid: str) -> list[dict[str, str]]:
        """Simplified tags of every instance Orthanc holds in a study."""
        found = []
        for study in self.get("/studies"):
            tags = self.get(f"/studies/{study}")
            if tags["MainDicomTags"].get("StudyInstanceUID") != study_uid:
                continue
            for instance in self.get(f"/studies/{study}/instances"):
                found.append(self.get(f"/instances/{instance['ID']}/simplified-tags"))
        return found

    def produced(self, study_uid: str, modality: str) -> list[str]:
        """SOP Instance UIDs of Ossa's objects (``SR`` or ``OT`` captures) in a study."""
        return [t["SOPInstanceUID"] for t in self.instances_of(study_uid)
                if t.get("Modality") == modality and t.get("Manufacturer") == "Ossa"]

    def _orthanc_id(self, sop_uid: str) -> str:
        (orthanc_id,) = [i for i in self.get("/instances")
                         if self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                         == sop_uid]
        return str(orthanc_id)

    def _call(self, method: str, path: str) -> bytes:
        token = base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()
        request = urllib.request.Request(self.url + path, method=method,
                                         headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def file(self, sop_uid: str) -> bytes:
        """The file Orthanc holds for an instance."""
        return self._call("GET", f"/instances/{self._orthanc_id(sop_uid)}/file")

    def delete(self, sop_uid: str) -> None:
        """Delete an instance from Orthanc."""
        self._call("DELETE", f"/instances/{self._orthanc_id(sop_uid)}")


@pytest.fixture(scope="module")
def listener_port() -> int:
    """The port of the Ossa listener, which Orthanc knows as modality OSSA (C-MOVE)."""
    return free_port()


@pytest.fixture
def archive(tmp_path_factory: pytest.TempPathFactory, listener_port: int) -> Iterator[Archive]:
    """An empty archive for each test: a poll finds every study the archive holds, and a
    later test's service (a new state store) would report an earlier test's studies again."""
    peer = Archive(tmp_path_factory.mktemp("archive"), listener_port)
    yield peer
    peer.stop()


class Proxy:
    """An HTTP proxy to Orthanc that calls ``before(n, path)`` ahead of forwarding the n-th
    WADO-RS request of an instance: the test then stops Orthanc, or deletes the instance,
    for real, at that moment."""

    def __init__(self, archive: Archive, before: Callable[[int, str], None]) -> None:
        self.archive, self.before, self.seen = archive, before, 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if "/instances/" in self.path:
                    with proxy.lock:
                        proxy.seen += 1
                        proxy.before(proxy.seen, self.path)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.archive.http_port,
                                                      timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection")}
                    upstream.request("GET", self.path, headers=headers)
                    answer = upstream.getresponse()
                    body = answer.read()
                except OSError:
                    self.close_connection = True  # the client sees the connection drop
                    return
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length",
                                           "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _study(bone: str, seed: int, n_images: int = 2, **identity: str) -> list[Dataset]:
    rendered = render_study(bone, seed % 2 == 1, seed, n_images=n_images)
    who = StudyIdentity(patient_id=identity.get("patient_id", f"PID-{seed}"),
                        patient_name="Archive^Patient", accession_number=f"ACC{seed}",
                        body_part=bone)
    series = generate_uid()
    return [radiograph_dataset(np.round(image * 255).astype(np.uint8), who,
                               series_instance_uid=series, instance_number=i + 1)
            for i, image in enumerate(rendered.images)]


def _secret(directory: Path, password: str = ORTHANC_PASSWORD) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return secret_file(directory, password)


def _config_toml(tmp_path: Path, archive: Archive, listener_port: int, *, url: str,
                 secret: Path, poll_interval_s: float, dimse: dict[str, Any] | None = None,
                 **overrides: Any) -> Path:
    """A config.toml as an admin writes one, from the example (``write_config``): a DICOMweb
    source whose results go back to it (STOW-RS), and a DIMSE source on the same Orthanc
    (with ``dimse``'s keys added); ``overrides`` are further sections."""
    access = {"auth": "basic", "username": ORTHANC_USER, "secret_file": secret}
    return write_config(
        tmp_path / "config.toml",
        listener={"ae_title": "OSSA", "port": listener_port,
                  "allowed_calling_aets": ["ORTHANC"]},
        study={"completion_timeout_s": 0.5},
        delivery={"retry_initial_interval_s": 0.3, "retry_max_interval_s": 1.0},
        results={"secondary_capture": True},
        destinations=[{"name": SOURCE, "type": "stowrs", "url": f"{archive.url}/dicom-web",
                       **access}],
        sources=[
            {"name": SOURCE, "type": "dicomweb", "url": url, **access,
             "poll_interval_s": poll_interval_s, "results_to": SOURCE},
            {"name": "pacs", "type": "dimse", "ae_title": archive.aet, "host": "127.0.0.1",
             "port": archive.dicom_port, **(dimse or {})},
        ],
        **overrides,
    )


@pytest.fixture
def serve(classifier: TwoStageClassifier) -> Iterator[Callable[[Path], Service]]:
    """Start the service of a config.toml, in process; stopped at the end of the test."""
    started: list[Service] = []

    def _start(path: Path) -> Service:
        config = load_config(path)
        service = build_service(config, classifier, stop_event=threading.Event(),
                                poll_interval_s=0.05, delivery_poll_interval_s=0.1)
        service.start()
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop(deadline_s=30)


class _Records(logging.Handler):
    """Keeps the records it handles."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _reported(store: StateStore, study_uid: str) -> bool:
    details = store.study_detail(study_uid)
    return bool(details) and all(d.study.state == "reported" for d in details) and all(
        d.state == "delivered" for detail in details for d in detail.deliveries)


def test_polled_studies_are_retrieved_reported_and_stored_back_once(
    tmp_path: Path, archive: Archive, listener_port: int, serve: Callable[[Path], Service],
) -> None:
    """Three studies in three transfer syntaxes are found by polling, a fourth uploaded
    between two polls too; each gets exactly one SR (and its captures) in the archive, by
    STOW-RS, and later polls (which see Ossa's own objects there) report nothing again."""
    studies = [_study("WRIST", 1), _study("HAND", 2), _study("ELBOW", 3)]
    for instances, syntax in zip(studies, (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                           RLELossless), strict=True):
        for ds in instances:
            archive.upload(ds, syntax)
    path = _config_toml(tmp_path, archive, listener_port, url=f"{archive.url}/dicom-web",
                        secret=_secret(tmp_path / "secrets"), poll_interval_s=0.5)
    service = serve(path)
    store = service.intake.store
    uids = [s[0].StudyInstanceUID for s in studies]
    wait_until(lambda: all(_reported(store, u) for u in uids), timeout=120,
               what="the polled studies reported and their objects stored back")
    late = _study("SHOULDER", 4)
    for ds in late:
        archive.upload(ds)
    uids.append(late[0].StudyInstanceUID)
    wait_until(lambda: _reported(store, uids[-1]), timeout=60,
               what="the study uploaded between two polls reported")
    # Ossa's objects in the archive change each study's instance count: the next polls
    # retrieve the studies again, find nothing new, and report nothing again.
    polls = store.sources()[0].last_poll
    def settled(uid: str) -> bool:
        row = store.retrieval(SOURCE, uid)
        return (row is not None and row.state == RetrievalState.DONE
                and row.expected == len(archive.instances_of(uid)))

    wait_until(lambda: all(settled(u) for u in uids)
               and (store.sources()[0].last_poll or 0) > (polls or 0) + 1.0,
               timeout=60, what="polls that see Ossa's objects in the archive")
    for u, instances in zip(uids, [*studies, late], strict=True):
        (detail,) = store.study_detail(u)
        assert len(archive.produced(u, "SR")) == 1, u
        # one capture an assessed image, each stored once
        captures = sorted(o.sop_uid for o in detail.objects if o.kind == "sc")
        assert 1 <= len(captures) <= len(instances)
        assert sorted(archive.produced(u, "OT")) == captures, u
        assert detail.study.source == SOURCE and detail.study.calling_aet == SOURCE
        assert [j.revision for j in detail.jobs] == [1]
        assert {d.destination for d in detail.deliveries} == {SOURCE}
    retrieved = store.retrieval(SOURCE, uids[1])
    assert retrieved is not None and retrieved.requested_by == "poll"


def test_archive_stopped_mid_retrieval_is_retried_and_nothing_is_duplicated(
    tmp_path: Path, archive: Archive, listener_port: int, serve: Callable[[Path], Service],
) -> None:
    """Orthanc stops at the second instance of a study: the retrieval fails (connection),
    is retried with backoff once Orthanc is back, skips the instance it already holds and
    the study is reported once, with every instance."""
    instances = _study("FOREARM", 5, n_images=3)
    for ds in instances:
        archive.upload(ds)
    proxy = Proxy(archive, lambda n, _: archive.stop() if n == 2 else None)
    try:
        path = _config_toml(tmp_path, archive, listener_port, url=proxy.url,
                            secret=_secret(tmp_path / "secrets"), poll_interval_s=0)
        service = serve(path)
        store = service.intake.store
        uid = instances[0].StudyInstanceUID
        assert main(["analyze", "--config", str(path), "--source", SOURCE, "--study", uid]) == 0
        wait_until(lambda: (r := store.retrieval(SOURCE, uid)) is not None and r.attempts >= 1,
                   timeout=60, what="the interrupted attempt recorded")
        interrupted = store.retrieval(SOURCE, uid)
        assert interrupted is not None and interrupted.state == RetrievalState.PENDING
        assert interrupted.last_outcome in ("aborted", "unreachable")
        assert len(store.held_sop_uids(SOURCE, uid)) == 1  # the first instance is held
        archive.start()
        wait_until(lambda: _reported(store, uid), timeout=90, what="the study reported")
    finally:
        proxy.close()
        if archive.proc.poll() is not None:
            archive.start()
    done = store.retrieval(SOURCE, uid)
    assert done is not None and done.state == RetrievalState.DONE and done.attempts >= 2
    (detail,) = store.study_detail(uid)
    assert detail.study.instances == 3 and [j.revision for j in detail.jobs] == [1]
    assert len(archive.produced(uid, "SR")) == 1
    assert proxy.seen >= 4  # the second instance asked again, the third once


def test_an_instance_deleted_after_the_listing_is_left_out_and_the_rest_reported(
    tmp_path: Path, archive: Archive, listener_port: int, serve: Callable[[Path], Service],
) -> None:
    """The archive deletes an instance between the QIDO-RS listing and its WADO-RS request:
    Orthanc answers 404, that instance is counted refused and the study's other instances
    are retrieved and reported, once."""
    instances = _study("HAND", 11, n_images=3)
    for ds in instances:
        archive.upload(ds)
    deleted: list[str] = []

    def delete_first(n: int, path: str) -> None:
        if n == 1:
            deleted.append(path.rsplit("/", 1)[-1])
            archive.delete(deleted[0])

    proxy = Proxy(archive, delete_first)
    try:
        path = _config_toml(tmp_path, archive, listener_port, url=proxy.url,
                            secret=_secret(tmp_path / "secrets"), poll_interval_s=0)
        service = serve(path)
        store = service.intake.store
        uid = instances[0].StudyInstanceUID
        assert main(["analyze", "--config", str(path), "--source", SOURCE, "--study", uid,
                     "--wait", "120"]) == 0
    finally:
        proxy.close()
    done = store.retrieval(SOURCE, uid)
    assert done is not None and done.state == RetrievalState.DONE and done.attempts == 1
    assert done.retrieved == 2 and "1 refused" in (done.last_detail or "")
    (detail,) = store.study_detail(uid)
    assert detail.study.instances == 2 and [j.revision for j in detail.jobs] == [1]
    assert deleted[0] not in store.held_sop_uids(SOURCE, uid)
    wait_until(lambda: _reported(store, uid), timeout=60, what="the results delivered")
    assert len(archive.produced(uid, "SR")) == 1


def test_wrong_password_fails_with_its_status_then_retries_once_fixed(
    tmp_path: Path, archive: Archive, listener_port: int, serve: Callable[[Path], Service],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With a wrong password the poll and an on-demand retrieval fail with HTTP 401, shown by
    ``ossa status``; once the secret file is fixed the next poll succeeds and ``ossa retry
    --source`` brings the study in, reported once."""
    instances = _study("FINGER", 6)
    for ds in instances:
        archive.upload(ds)
    secret = _secret(tmp_path / "secrets", "wrong-password")
    path = _config_toml(tmp_path, archive, listener_port, url=f"{archive.url}/dicom-web",
                        secret=secret, poll_interval_s=0.5)
    service = serve(path)
    store = service.intake.store
    uid = instances[0].StudyInstanceUID
    assert main(["analyze", "--config", str(path), "--source", SOURCE, "--study", uid,
                 "--wait", "60"]) == 1
    failed = store.retrieval(SOURCE, uid)
    assert failed is not None and failed.state == RetrievalState.FAILED
    assert failed.last_outcome == "refused" and "HTTP 401" in (failed.last_detail or "")
    wait_until(lambda: (store.sources()[0].last_outcome == "refused"), timeout=30,
               what="a poll refused")
    capsys.readouterr()
    assert main(["status", "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"study {uid} from {SOURCE}: failed" in shown and "HTTP 401" in shown
    assert "last poll" in shown and "refused" in shown

    secret.write_text(ORTHANC_PASSWORD + "\n", encoding="utf-8")  # the admin fixes it
    wait_until(lambda: store.sources()[0].last_outcome == "success", timeout=30,
               what="a poll with the right password")
    assert main(["retry", "--config", str(path), "--source", SOURCE]) == 0
    wait_until(lambda: _reported(store, uid), timeout=90, what="the study reported")
    assert len(archive.produced(uid, "SR")) == 1
    assert analysis_state(store, SOURCE, uid).stage == "reported"


def test_analyze_on_demand_keeps_identifiers_and_writes_valid_objects(
    tmp_path: Path, archive: Archive, listener_port: int, serve: Callable[[Path], Service],
) -> None:
    """``POST /api/analyze`` pulls a study whose header the archive holds with invalid
    values of each VR kind (Orthanc keeps them as uploaded): the SR and the captures stored
    back pass dciodvfy but for the invalid identifiers, which reach the SR byte for byte."""
    instances = _study("WRIST", 7)
    # (a lowercase Body Part Examined is left out of the objects, and the image then not
    # assessed: tests/test_sr.py has it; here every image should get its capture)
    raw = {k: v for k, (v, _) in INVALID_VALUES.items() if k != "BodyPartExamined"}
    raw |= INVALID_IDENTIFIERS
    for ds in instances:
        for keyword, value in raw.items():
            if keyword in ds:
                del ds[keyword]
            setattr(ds, keyword, value)
        archive.upload(ds)
    token = tmp_path / "token"
    token.write_text("t0ken-for-tests\n", encoding="utf-8")
    path = _config_toml(tmp_path, archive, listener_port, url=f"{archive.url}/dicom-web",
                        secret=_secret(tmp_path / "secrets"), poll_interval_s=0,
                        http={"enabled": True, "port": free_port(), "token_file": token})
    service = serve(path)
    assert service.http is not None
    uid = instances[0].StudyInstanceUID
    base = f"http://127.0.0.1:{service.http.port}"
    request = urllib.request.Request(
        base + "/api/analyze", data=json.dumps({"source": SOURCE, "study": uid}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer t0ken-for-tests"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
        location = response.headers["Location"]
    store = service.intake.store
    wait_until(lambda: _reported(store, uid), timeout=90, what="the study reported")
    with urllib.request.urlopen(base + location, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["stage"] == "reported" and answer["result"]
    with urllib.request.urlopen(base + "/", timeout=30) as response:
        page = response.read().decode()
    assert '<table id="sources">' in page and f"<td>{SOURCE}</td>" in page

    (sr_uid,) = archive.produced(uid, "SR")
    captures = archive.produced(uid, "OT")
    assert captures
    for sop_uid in [sr_uid, *captures]:
        path_out = tmp_path / f"{sop_uid}.dcm"
        path_out.write_bytes(archive.file(sop_uid))
        errors = [e for e in dciodvfy_errors(path_out) if e != DCIODVFY_SUMMARY]
        assert errors == identifier_errors(errors), (sop_uid, errors)
        written = pydicom.dcmread(path_out)
        for keyword, value in INVALID_IDENTIFIERS.items():
            assert written.get_item(keyword).value == value.encode(), keyword


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_analyze_over_dimse_c_get_and_c_move(
    retrieve: str, tmp_path: Path, archive: Archive, listener_port: int,
    serve: Callable[[Path], Service],
) -> None:
    """``ossa analyze`` against Orthanc's DIMSE port: C-GET brings the instances on Ossa's
    own association; C-MOVE has Orthanc send them to Ossa's listener (it knows Ossa as
    modality OSSA). Either way the study is reported once and its results go to the
    source's ``results_to``."""
    instances = _study("HUMERUS", 8 if retrieve == "c-get" else 9)
    for ds in instances:
        archive.upload(ds)
    path = _config_toml(tmp_path, archive, listener_port, url=f"{archive.url}/dicom-web",
                        secret=_secret(tmp_path / "secrets"), poll_interval_s=0,
                        dimse={"retrieve": retrieve, "results_to": SOURCE})
    config = load_config(path)
    assert isinstance(config.sources[1], DimseSource) and config.sources[1].retrieve == retrieve
    service = serve(path)
    store = service.intake.store
    uid = instances[0].StudyInstanceUID
    assert main(["analyze", "--config", str(path), "--source", "pacs", "--study", uid,
                 "--wait", "120"]) == 0
    (detail,) = store.study_detail(uid)
    assert detail.study.source == "pacs" and detail.study.instances == len(instances)
    assert detail.study.calling_aet == ("pacs" if retrieve == "c-get" else archive.aet)
    assert {d.destination for d in detail.deliveries} == {SOURCE}
    wait_until(lambda: _reported(store, uid), timeout=60, what="the results delivered")
    assert len(archive.produced(uid, "SR")) == 1


def test_an_instance_ossa_cannot_decode_is_asked_for_again_in_explicit_vr(
    tmp_path: Path, archive: Archive, listener_port: int, serve: Callable[[Path], Service],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On an install without an RLE decoder (the syntax left out of what admission takes),
    the archive's RLE copy is refused with 0xC122 and asked for again in Explicit VR Little
    Endian, which Orthanc transcodes: the study is reported all the same."""
    monkeypatch.setattr("worker.admission.TRANSFER_SYNTAXES",
                        tuple(t for t in TRANSFER_SYNTAXES if t != RLELossless))
    instances = _study("ELBOW", 30)
    for ds in instances:
        archive.upload(ds, RLELossless)
    path = _config_toml(tmp_path, archive, listener_port, url=f"{archive.url}/dicom-web",
                        secret=_secret(tmp_path / "secrets"), poll_interval_s=0)
    service = serve(path)
    uid = instances[0].StudyInstanceUID
    # On the retrievers' own logger: ``main`` configures the root logger's handlers afresh,
    # which takes caplog's away.
    seen = _Records()
    retrievers = logging.getLogger("worker.sources.retrievers")
    retrievers.addHandler(seen)
    monkeypatch.setattr(retrievers, "level", logging.INFO)
    try:
        assert main(["analyze", "--config", str(path), "--source", SOURCE, "--study", uid,
                     "--wait", "120"]) == 0
    finally:
        retrievers.removeHandler(seen)
    store = service.intake.store
    paths = [str(r[0]) for r in store.db.read("SELECT path FROM instances")]
    assert len(paths) == len(instances)
    for relative in paths:
        stored = pydicom.dcmread(service.intake.spool.path(relative), stop_before_pixels=True)
        assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    asked_again = [r for r in seen.records if "again in Explicit VR Little Endian" in
                   r.getMessage()]
    assert len(asked_again) == len(instances)


def test_two_nodes_on_postgresql_poll_in_turn_and_report_each_study_once(
    tmp_path: Path, archive: Archive, postgres: PostgresServer,
    serve: Callable[[Path], Service],
) -> None:
    """Two nodes share a PostgreSQL store and a storage root, both configured with the same
    polled source: one node polls per interval, either retrieves, and each study is
    retrieved, reported and stored back once."""
    bones = ("WRIST", "HAND", "ELBOW", "FINGER", "FOREARM", "SHOULDER")
    studies = [_study(bone, 40 + i) for i, bone in enumerate(bones)]
    for instances in studies:
        for ds in instances:
            archive.upload(ds)
    database = postgres.new_database()
    root = tmp_path / "shared"
    secret = _secret(tmp_path / "secrets")
    services = []
    for node in ("n1", "n2"):
        path = _config_toml(tmp_path / node, archive, free_port(),
                            url=f"{archive.url}/dicom-web", secret=secret, poll_interval_s=0.3,
                            storage={"root": root, "database": database},
                            node={"name": node, "lease_s": 5})
        services.append(serve(path))
    store = services[0].intake.store
    uids = [s[0].StudyInstanceUID for s in studies]
    wait_until(lambda: all(_reported(store, u) for u in uids), timeout=180,
               what="every study reported by the two nodes")
    for uid, instances in zip(uids, studies, strict=True):
        (detail,) = store.study_detail(uid)
        assert [j.revision for j in detail.jobs] == [1]
        assert detail.study.instances == len(instances)
        assert len(archive.produced(uid, "SR")) == 1
    retrievals = store.db.read("SELECT study_uid, COUNT(*) FROM retrievals GROUP BY study_uid")
    assert all(int(n) == 1 for _, n in retrievals) and len(retrievals) >= len(uids)
    assert [n.name for n in store.nodes()] == ["n1", "n2"]


def test_config_names_sources_and_routes_their_results(tmp_path: Path) -> None:
    """``results_to`` must name destinations; a study from a source goes there only."""
    destination = StowRsDestination(name="a", type="stowrs", url="http://x/dicom-web")
    other = StowRsDestination(name="b", type="stowrs", url="http://y/dicom-web")
    source = DicomwebSource.model_validate(
        {"name": "src", "type": "dicomweb", "url": "http://x/dicom-web", "results_to": "a"})
    config = Config(destinations=(destination, other), sources=(source,))
    assert config.results_to("src") == ("a",)
    assert config.results_to(None) == ("a", "b")
    with pytest.raises(ValueError, match="results_to names no destination"):
        Config(destinations=(destination,),
               sources=(source.model_copy(update={"results_to": ("nope",)}),))
