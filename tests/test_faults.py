"""Faults (issue 12): ``kill -9`` at random points, a full disk, a destination that fails.

- ``kill -9`` of ``ossa serve`` again and again while studies are received, assembled,
  classified and delivered to Orthanc: every acknowledged instance is on disk and in the
  state store at every kill, and in the end every study has exactly one SR, once in
  Orthanc (a study a kill interrupted waits a whole quiet time after the restart for the
  re-sent remainder, so it is never reported without it).
- A full storage root (a small tmpfs): "Out of Resources", no partial file, the service
  stays up, and takes the same instances once space is freed; the same when SQLite is the
  one that finds the disk full, and when ``TMPDIR`` (where pynetdicom stages a data set as
  it arrives) is full.
- A destination that is down, rejects the association or answers "Out of Resources":
  backoff, a ``failed`` delivery in ``ossa status --json``, nothing lost, ``ossa retry``.
  (``tests/test_outbox.py`` has the minute-long outage, ``kill -9`` between sending and
  recording, and the permanent refusal ``0xC000``.)

``OSSA_SOAK=1`` (``make soak``) runs 100 kills instead of 20.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
)
from pynetdicom import AE, evt

from dicom_io.derived import encode_file
from dicom_io.synthetic import StudyIdentity
from harness.config import write_config
from harness.peers import Orthanc, free_port, wait_until
from tests.conftest import OSSA, Served, echo
from worker.admission import StoreStatus
from worker.intake import Intake, Received
from worker.spool import Spool
from worker.store import StateStore, StoreError

logger = logging.getLogger(__name__)

SOAK = os.environ.get("OSSA_SOAK") == "1"
#: kill -9 iterations: at least 20 (issue 12), 100 in the soak run.
KILLS = 100 if SOAK else 20
PHASES = ("receiving", "assembling", "inferring", "delivering")
#: Quiet time before a study is classified. It counts from the service's start at the
#: earliest, so the re-send of what a kill interrupted arrives within it however long the
#: restart took.
COMPLETION_S = 3.0
INSTANCES_PER_STUDY = 3


# --- helpers -------------------------------------------------------------------------------


def _write_config(
    folder: Path, port: int, bundle: Path, destinations: list[tuple[str, str, int]], *,
    root: Path | str = "var", completion_s: float = COMPLETION_S,
    delivery: dict[str, float] | None = None,
) -> Path:
    """A ``config.toml`` in ``folder`` (the example's, :func:`harness.config.write_config`);
    each destination is ``(name, AE title, port)``; one object per study: the SR."""
    return write_config(
        folder / "config.toml",
        listener={"port": port, "allowed_calling_aets": ["STORESCU"]},
        study={"completion_timeout_s": completion_s},
        storage={"root": root},
        model={"bundle": bundle},
        results={"secondary_capture": False},
        delivery=delivery or {"retry_initial_interval_s": 1, "retry_max_interval_s": 4},
        destinations=[{"name": name, "type": "dimse", "ae_title": aet, "host": "127.0.0.1",
                       "port": dest_port, "timeout_s": 5}
                      for name, aet, dest_port in destinations],
    )


def _query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
    """Rows of a read on the state store (its own connection, closed at once)."""
    connection = sqlite3.connect(db, timeout=30)
    try:
        return list(connection.execute(sql, params).fetchall())
    finally:
        connection.close()


def _status_json(config: Path) -> dict[str, Any]:
    proc = subprocess.run([OSSA, "status", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _scu(timeout_s: float = 10.0) -> AE:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    return ae


def _store(port: int, datasets: list[Dataset]) -> list[int | None]:
    """C-STORE ``datasets`` in one association: each status, None where none came back."""
    assoc = _scu().associate("127.0.0.1", port, ae_title="OSSA")
    if not assoc.is_established:
        return [None] * len(datasets)
    try:
        statuses = []
        for ds in datasets:
            answer = assoc.send_c_store(ds) if assoc.is_established else Dataset()
            statuses.append(int(answer.Status) if "Status" in answer else None)
        return statuses
    finally:
        if assoc.is_established:
            assoc.release()


def _study(make: Callable[..., Dataset], n: int = INSTANCES_PER_STUDY) -> list[Dataset]:
    identity = StudyIdentity(patient_id="FAULT-PID", patient_name="Fault^Patient",
                             accession_number="F1", body_part="WRIST")
    return [make(identity, instance_number=i + 1) for i in range(n)]


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- kill -9 at random points --------------------------------------------------------------


@dataclass
class StudySender:
    """Sends 3-image studies to Ossa from a thread, one association each, and re-sends
    every instance that was not acknowledged (the sender's side of C-STORE: an instance
    without a success status is not stored)."""

    port: int
    make: Callable[..., Dataset]
    rng: random.Random
    up: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    in_flight: threading.Event = field(default_factory=threading.Event)
    new_studies: bool = True
    studies: dict[str, list[Dataset]] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    unacked: list[Dataset] = field(default_factory=list)
    #: Studies one of whose instances went unacknowledged at some kill.
    interrupted_studies: set[str] = field(default_factory=set)
    #: Associations a kill cut off with instances still unacknowledged.
    interrupted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.up.wait(0.1):
                continue
            with self.lock:
                batch, self.unacked = self.unacked, []
            if not batch and self.new_studies:
                batch = _study(self.make)
                self.studies[batch[0].StudyInstanceUID] = batch
            if not batch:
                self.stop.wait(0.05)
                continue
            self._send(batch)
            self.stop.wait(self.rng.uniform(0.1, 0.6))  # pacing between studies

    def _send(self, batch: list[Dataset]) -> None:
        assoc = _scu().associate("127.0.0.1", self.port, ae_title="OSSA")
        if not assoc.is_established:
            with self.lock:
                self.unacked.extend(batch)
            self.stop.wait(0.05)
            return
        self.in_flight.set()
        missed = []
        try:
            for ds in batch:
                answer = assoc.send_c_store(ds) if assoc.is_established else Dataset()
                if int(answer.get("Status", -1)) == 0:
                    with self.lock:
                        self.acked.add(ds.SOPInstanceUID)
                else:
                    missed.append(ds)
                self.stop.wait(self.rng.uniform(0.02, 0.25))  # widens the receiving window
        finally:
            if assoc.is_established:
                assoc.release()
            with self.lock:
                self.unacked.extend(missed)
                if missed:
                    self.interrupted += 1
                    self.interrupted_studies.update(ds.StudyInstanceUID for ds in missed)
            self.in_flight.clear()


def _phases_in_store(db: Path) -> set[str]:
    """What the service was doing when it died, as its state store says."""
    phases = set()
    if _query(db, "SELECT 1 FROM studies WHERE state IN ('receiving', 'queued') LIMIT 1"):
        phases.add("assembling")
    if _query(db, "SELECT 1 FROM jobs WHERE state = 'running' LIMIT 1"):
        phases.add("inferring")
    if _query(db, "SELECT 1 FROM deliveries WHERE state = 'pending' LIMIT 1"):
        phases.add("delivering")
    return phases


def _reached(phase: str, sender: StudySender, db: Path) -> bool:
    if phase == "receiving":
        return sender.in_flight.is_set()
    return phase in _phases_in_store(db)


def _await_phase(phase: str, sender: StudySender, db: Path, timeout: float) -> bool:
    """Poll (tightly: classifying a study takes a fraction of a second) until ``phase``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reached(phase, sender, db):
            return True
        time.sleep(0.005)
    return False


def _check_acknowledged_on_disk(db: Path, root: Path, acked: set[str]) -> None:
    """Every acknowledged instance has its row (stored) and its file."""
    rows = {str(sop): str(path) for sop, path in _query(
        db, "SELECT sop_uid, path FROM instances WHERE state = 'stored'")}
    missing = acked - set(rows)
    assert not missing, f"acknowledged but not in the store: {sorted(missing)[:3]}"
    absent = [sop for sop in acked if not (root / rows[sop]).is_file()]
    assert not absent, f"acknowledged but not in the spool: {absent[:3]}"


@pytest.mark.integration
def test_kill_9_at_random_points_loses_nothing_and_reports_each_study_once(
    tmp_path: Path, trained_bundle: Path, orthanc: Orthanc, ossa_port: int,
    serve: Callable[[Path, int], Served], make_radiograph: Callable[..., Dataset],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed = int(os.environ.get("OSSA_FAULTS_SEED", random.SystemRandom().randrange(2**32)))
    logger.info("kill -9 test: seed %d (OSSA_FAULTS_SEED=%d repeats it), %d kills", seed,
                seed, KILLS)
    rng = random.Random(seed)
    tmpdir = tmp_path / "tmpdir"  # where pynetdicom stages received data sets
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    config = _write_config(tmp_path, ossa_port, trained_bundle,
                           [("pacs", orthanc.aet, orthanc.dicom_port)])
    root, db = tmp_path / "var", tmp_path / "var" / "state.sqlite3"
    sender = StudySender(ossa_port, make_radiograph, random.Random(rng.random()))
    thread = threading.Thread(target=sender.run, name="study-sender", daemon=True)
    thread.start()
    targets = [p for _ in range(-(-KILLS // len(PHASES)))
               for p in rng.sample(PHASES, len(PHASES))][:KILLS]
    hits: list[set[str]] = []
    started = time.monotonic()
    try:
        for target in targets:
            served = serve(config, ossa_port)
            sender.up.set()
            reached = _await_phase(target, sender, db, timeout=20)
            time.sleep(rng.uniform(0.0, 0.1))  # the random kill point
            before = sender.interrupted
            served.kill()
            sender.up.clear()
            wait_until(lambda: not sender.in_flight.is_set(), timeout=30,
                       what="the sender to notice the kill")
            hit = _phases_in_store(db) | ({"receiving"} if sender.interrupted > before else set())
            hits.append(hit)
            logger.info("kill %d: aimed at %s (%s), hit %s", len(hits), target,
                        "reached" if reached else "not reached", sorted(hit))
            with sender.lock:
                acked = set(sender.acked)
            _check_acknowledged_on_disk(db, root, acked)

        # The last start: re-send what is still unacknowledged, then let everything finish.
        sender.new_studies = False
        served = serve(config, ossa_port)
        sender.up.set()
        wait_until(lambda: not sender.unacked and not sender.in_flight.is_set(), timeout=120,
                   what="every instance re-sent and acknowledged")

        def settled() -> bool:
            busy = _query(db, "SELECT COUNT(*) FROM studies WHERE state != 'reported'")[0][0]
            pending = _query(db, "SELECT COUNT(*) FROM deliveries WHERE state != 'delivered'")
            return busy == 0 and pending[0][0] == 0

        wait_until(settled, timeout=180, what="every study reported and delivered")
        assert served.stop() == 0
    finally:
        sender.stop.set()
        thread.join(timeout=30)
    elapsed = time.monotonic() - started

    # Every phase was hit, and every acknowledged instance is on disk and in the store.
    counts = {phase: sum(phase in hit for hit in hits) for phase in PHASES}
    logger.info("kill -9 test: seed %d, %d kills in %.0f s, phases hit %s", seed, len(hits),
                elapsed, counts)
    assert all(counts.values()), f"seed {seed}: a phase was never hit: {counts}"
    every_sop = {ds.SOPInstanceUID for batch in sender.studies.values() for ds in batch}
    assert sender.acked == every_sop
    _check_acknowledged_on_disk(db, root, sender.acked)

    # Every study: one done job over all its instances (never one for a part of them), one
    # SR, delivered once, and exactly that SR in Orthanc.
    revisions: dict[int, int] = {}
    for study_uid, batch in sender.studies.items():
        ((study_id,),) = _query(db, "SELECT id FROM studies WHERE study_uid = ?", (study_uid,))
        jobs = _query(db, "SELECT id, state FROM jobs WHERE study_id = ? ORDER BY revision",
                      (study_id,))
        assert [state for _, state in jobs] == ["done"] * len(jobs), f"seed {seed}: {jobs}"
        sets = [frozenset(str(s) for (s,) in _query(
            db, "SELECT i.sop_uid FROM job_instances ji JOIN instances i"
            " ON i.id = ji.instance_id WHERE ji.job_id = ?", (job_id,))) for job_id, _ in jobs]
        assert all(a < b for a, b in itertools.pairwise(sets)), (
            f"seed {seed}: study {study_uid} reported twice for the same instances")
        assert sets and sets[-1] == {ds.SOPInstanceUID for ds in batch}
        srs = sorted(str(s) for (s,) in _query(
            db, "SELECT sop_uid FROM objects WHERE study_id = ? AND kind = 'sr'", (study_id,)))
        assert len(srs) == len(jobs)
        deliveries = _query(
            db, "SELECT d.state FROM deliveries d JOIN objects o ON o.id = d.object_id"
            " WHERE o.study_id = ?", (study_id,))
        assert [s for (s,) in deliveries] == ["delivered"] * len(srs)
        assert sorted(orthanc.sr_sop_uids(study_uid)) == srs, f"seed {seed}: {study_uid}"
        assert len(jobs) == 1, f"seed {seed}: study {study_uid} reported {len(jobs)} times"
        revisions[len(jobs)] = revisions.get(len(jobs), 0) + 1
    leftovers = len(list(tmpdir.iterdir()))
    logger.info("kill -9 test: %d studies, %d instances; SRs per study %s; %d association(s)"
                " cut off; %d partial file(s) left in TMPDIR by kills", len(sender.studies),
                len(every_sop), revisions, sender.interrupted, leftovers)
    print(f"seed={seed} kills={len(hits)} elapsed={elapsed:.0f}s phases={counts}"
          f" studies={len(sender.studies)} srs_per_study={revisions}"
          f" cut_off={sender.interrupted} tmpdir_leftovers={leftovers}")


# --- a full disk ---------------------------------------------------------------------------


def _can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (the service runs in the test's namespace)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    return None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount small tmpfs file systems (``small_fs("name", "16m")``); unmounted in teardown."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    mounted: list[Path] = []

    def _mount(name: str, size: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(target)], check=True, capture_output=True, timeout=30)
        mounted.append(target)
        return target

    yield _mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _fill(folder: Path, name: str = "filler.bin", keep: int = 0) -> Path:
    """Write ``name`` until the file system is full; then free ``keep`` bytes again."""
    path = folder / name
    chunk = b"\0" * (64 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            os.write(fd, chunk)  # unbuffered: what fitted is written, nothing left to flush
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if keep:
        os.truncate(path, max(0, path.stat().st_size - keep))
    return path


STORE_FILES = {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"}


@pytest.mark.integration
def test_full_storage_root_answers_out_of_resources_and_recovers(
    tmp_path: Path, trained_bundle: Path, orthanc: Orthanc, ossa_port: int,
    serve: Callable[[Path, int], Served], make_radiograph: Callable[..., Dataset],
    small_fs: Callable[[str, str], Path],
) -> None:
    root = small_fs("root", "16m")
    config = _write_config(tmp_path / "run", ossa_port, trained_bundle,
                           [("pacs", orthanc.aet, orthanc.dicom_port)], root=root,
                           completion_s=1.0)
    served = serve(config, ossa_port)
    study = _study(make_radiograph)
    study_uid = study[0].StudyInstanceUID
    db = root / "state.sqlite3"

    # 1. The spool cannot write the file.
    filler = _fill(root)
    assert _store(ossa_port, study) == [StoreStatus.OUT_OF_RESOURCES] * len(study)
    assert echo(ossa_port, "STORESCU").returncode == 0  # still up
    assert [f for f in _files_under(root) if f not in STORE_FILES] == ["filler.bin"]
    log = served.text()
    for ds in study:
        assert f"Could not store SOP Instance {ds.SOPInstanceUID}" in log
    assert not _query(db, "SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,))

    # 2. Room for the file, not for SQLite's write-ahead log: the commit finds the disk full.
    filler.unlink()
    size = len(encode_file(study[0]))
    _fill(root, keep=(size + 4095) // 4096 * 4096)
    assert _store(ossa_port, study[:1]) == [StoreStatus.OUT_OF_RESOURCES]
    assert "database or disk is full" in served.text()
    assert [f for f in _files_under(root) if f not in STORE_FILES] == ["filler.bin"]
    assert echo(ossa_port, "STORESCU").returncode == 0

    # 3. Space freed: the same instances are accepted, classified and reported.
    filler.unlink()
    assert _store(ossa_port, study) == [StoreStatus.SUCCESS] * len(study)
    sr_uids = wait_until(lambda: orthanc.sr_sop_uids(study_uid), timeout=120,
                         what="the SR in Orthanc")
    assert len(sr_uids) == 1  # type: ignore[arg-type]
    assert served.stop() == 0
    assert not [p for p in (root / "tmp").rglob("*") if p.is_file()]
    assert "Fault^Patient" not in served.text() and "FAULT-PID" not in served.text()


@pytest.mark.integration
def test_full_tmpdir_aborts_the_association_and_leaves_nothing_behind(
    tmp_path: Path, trained_bundle: Path, orthanc: Orthanc, ossa_port: int,
    serve: Callable[[Path, int], Served], make_radiograph: Callable[..., Dataset],
    small_fs: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom writes a data set to ``TMPDIR`` as it arrives; when that fails it aborts
    the association (no C-STORE status: the sender must send again). Ossa removes the
    partial file and serves the next association normally."""
    tmpdir = small_fs("tmpdir", "1m")
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    config = _write_config(tmp_path / "run", ossa_port, trained_bundle,
                           [("pacs", orthanc.aet, orthanc.dicom_port)], completion_s=1.0)
    root = tmp_path / "run" / "var"
    served = serve(config, ossa_port)
    study = _study(make_radiograph)
    study_uid = study[0].StudyInstanceUID

    # The first data set makes the service's tempfile module settle on TMPDIR: at its first
    # use it skips a directory it cannot write to (here it would take /tmp).
    assert _store(ossa_port, study[:1]) == [StoreStatus.SUCCESS]
    others = {p.name for p in tmpdir.iterdir()}  # not Ossa's (DCMTK's .ses, say)
    filler = _fill(tmpdir)
    assert _store(ossa_port, study[1:2]) == [None]  # aborted, no status
    wait_until(lambda: {p.name for p in tmpdir.iterdir()} == others | {filler.name},
               timeout=30, what="the partial data set removed from TMPDIR")
    assert "partial data set" in served.text()
    assert echo(ossa_port, "STORESCU").returncode == 0
    assert not _query(root / "state.sqlite3", "SELECT 1 FROM instances WHERE sop_uid = ?",
                      (study[1].SOPInstanceUID,))
    assert len([f for f in _files_under(root) if f.startswith("instances/")]) == 1
    assert not [p for p in (root / "tmp").rglob("*") if p.is_file()]

    filler.unlink()
    assert _store(ossa_port, study) == [StoreStatus.SUCCESS] * len(study)
    wait_until(lambda: orthanc.sr_sop_uids(study_uid), timeout=120, what="the SR in Orthanc")
    assert served.stop() == 0
    assert {p.name for p in tmpdir.iterdir()} == others


# --- unit tests of the fixes -----------------------------------------------------------------


def test_commit_that_fails_is_rolled_back_and_the_store_keeps_working(tmp_path: Path) -> None:
    """A COMMIT that fails (SQLITE_FULL on a full disk; here a deferred foreign key) must
    not leave the pooled connection inside its transaction, holding the write lock."""
    store = StateStore(tmp_path / "state.sqlite3", busy_timeout_s=1)
    with pytest.raises(StoreError, match="FOREIGN KEY"), store.db.tx() as db:
        db.execute("PRAGMA defer_foreign_keys = ON")
        db.execute("INSERT INTO jobs (study_id, revision, state, created) VALUES (999, 1,"
                   " 'queued', 0)")
    assert store.add_instance(calling_aet="A", study_uid="1.2", sop_uid="1.2.3",
                              sop_class_uid=ComputedRadiographyImageStorage,
                              series_uid="1.2.4", path="p", size=1)
    other = sqlite3.connect(tmp_path / "state.sqlite3", timeout=1)
    other.execute("UPDATE studies SET updated = 1")  # the write lock is free
    other.commit()
    other.close()
    store.close()


def _received(sop_uid: str = "1.2.3") -> Received:
    return Received(calling_aet="STORESCU", study_uid="1.2", series_uid="1.2.4",
                    sop_uid=sop_uid, sop_class_uid=ComputedRadiographyImageStorage)


def test_instance_not_recorded_leaves_no_file(tmp_path: Path) -> None:
    """A file whose row cannot be committed is removed: the next start would otherwise
    register an instance that the sender was told was not stored."""
    spool = Spool(tmp_path)
    store = StateStore.in_root(tmp_path)
    intake = Intake(spool, store)
    full = StoreError("database or disk is full")
    with mock.patch.object(store, "add_instance", side_effect=full), \
            pytest.raises(StoreError):
        intake.accept(_received(), b"DICM-bytes")
    assert list(spool.instance_files()) == [] and not list(spool.tmp.iterdir())


def test_failed_record_of_a_resent_instance_keeps_the_stored_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    store = StateStore.in_root(tmp_path)
    intake = Intake(spool, store)
    intake.accept(_received(), b"first copy")
    full = StoreError("database or disk is full")
    with mock.patch.object(store, "add_instance", side_effect=full), \
            pytest.raises(StoreError):
        intake.accept(_received(), b"second copy")
    (path,) = spool.instance_files()
    assert spool.path(path).read_bytes() == b"second copy"  # an acknowledged instance's file


def test_partial_data_set_of_an_aborted_association_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_radiograph: Callable[..., Dataset],
) -> None:
    """A sender that aborts inside a C-STORE data set leaves pynetdicom's temporary file;
    the service's sweep removes it once the association has ended."""
    import numpy as np

    from worker.config import ListenerConfig
    from worker.service import InterruptedReceives, build_ae

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmpdir))  # where pynetdicom stages it
    monkeypatch.setattr("pynetdicom._config.STORE_RECV_CHUNKED_DATASET", True)
    from pynetdicom.dimse_messages import C_STORE_RQ

    encode = C_STORE_RQ.encode_msg

    def first_fragments(self: C_STORE_RQ, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return itertools.islice(encode(self, *args, **kwargs), 3)  # then the sender stalls

    monkeypatch.setattr(C_STORE_RQ, "encode_msg", first_fragments)
    sweeper = InterruptedReceives()
    ae = build_ae(ListenerConfig(port=free_port(), allowed_calling_aets=("STORESCU",),
                                 max_pdu_size=4096))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=sweeper.handlers())
    try:
        scu = _scu()
        scu.maximum_pdu_size = 4096
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="OSSA")
        assert assoc.is_established
        big = make_radiograph(image=np.zeros((512, 512), dtype=np.uint8))
        sending = threading.Thread(target=assoc.send_c_store, args=(big,), daemon=True)
        sending.start()
        wait_until(lambda: list(tmpdir.iterdir()), timeout=10,
                   what="a partial data set on the server")
        assoc.abort()  # the sending thread returns on its own (DIMSE timeout)
        removed = wait_until(sweeper.sweep, timeout=10, what="the sweep of the ended association")
        assert removed == 1 and not list(tmpdir.iterdir())
    finally:
        server.shutdown()


# --- a destination down, rejecting the association, or out of resources --------------------


class FlakyScp:
    """A Storage SCP for the SR on a fixed port: down, rejecting every association, or
    answering "Out of Resources" until :meth:`heal`; then it stores."""

    aet = "FLAKY"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.received: list[str] = []
        self.healed = threading.Event()
        self.server: Any = None
        if mode != "down":
            self._start()

    def _start(self) -> None:
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(Comprehensive3DSRStorage)
        if self.mode == "reject" and not self.healed.is_set():
            ae.require_calling_aet = ["SOMEONE_ELSE"]  # A-ASSOCIATE-RJ for OSSA
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._handle)])

    def _handle(self, event: evt.Event) -> int:
        if not self.healed.is_set():
            return int(StoreStatus.OUT_OF_RESOURCES)
        self.received.append(str(event.dataset.SOPInstanceUID))
        return int(StoreStatus.SUCCESS)

    def heal(self) -> None:
        self.healed.set()
        if self.server is not None:
            self.server.shutdown()
        self._start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["down", "reject", "out_of_resources"])
def test_failing_destination_backs_off_fails_visibly_and_retry_delivers(
    mode: str, tmp_path: Path, trained_bundle: Path, make_radiograph: Callable[..., Dataset],
    serve: Callable[[Path, int], Served],
) -> None:
    peer = FlakyScp(mode)
    port = free_port()
    config = _write_config(
        tmp_path, port, trained_bundle, [("flaky", peer.aet, peer.port)], completion_s=0.5,
        delivery={"retry_initial_interval_s": 0.5, "retry_max_interval_s": 2,
                  "give_up_after_s": 4},
    )
    db = tmp_path / "var" / "state.sqlite3"
    served = serve(config, port)
    try:
        study = _study(make_radiograph, 2)
        assert _store(port, study) == [StoreStatus.SUCCESS] * 2
        attempts: dict[int, float] = {}  # attempt number -> wait it was given

        def observe() -> bool:
            rows = _query(db, "SELECT state, attempts, last_attempt, next_attempt FROM"
                          " deliveries")
            if rows and rows[0][1] and rows[0][0] == "pending":
                attempts.setdefault(int(rows[0][1]), float(rows[0][3]) - float(rows[0][2]))
            return bool(rows) and rows[0][0] == "failed"

        wait_until(observe, timeout=120, what="the delivery to fail after its retries")
        ((_state, count, outcome, detail, sr_uid, sr_path),) = _query(
            db, "SELECT d.state, d.attempts, d.last_outcome, d.last_detail, o.sop_uid, o.path"
            " FROM deliveries d JOIN objects o ON o.id = d.object_id")
        # Backoff: the waits double (0.5, 1, 2, 2 s, each jittered to between half and all).
        assert count >= 3 and len(attempts) >= 2, attempts
        for n, wait in attempts.items():
            base = min(2.0, 0.5 * 2 ** (n - 1))
            assert base / 2 - 0.05 <= wait <= base + 0.05, (n, wait)
        assert max(attempts.values()) > attempts[min(attempts)]
        expected = {"down": "unreachable", "reject": "rejected",
                    "out_of_resources": "refused"}[mode]
        assert outcome == expected, detail
        status = _status_json(config)
        assert status["deliveries"] == {"flaky": {"failed": 1}}
        (failed,) = status["failed"]
        assert failed["sop_uid"] == sr_uid and failed["attempts"] == count
        assert failed["study_uid"] == study[0].StudyInstanceUID
        assert (tmp_path / "var" / sr_path).is_file()  # nothing lost

        peer.heal()
        retried = subprocess.run([OSSA, "retry", "--destination", "flaky", "--config",
                                  str(config)], capture_output=True, text=True, timeout=60)
        assert retried.returncode == 0 and "1 delivery re-queued" in retried.stdout
        wait_until(lambda: _query(db, "SELECT state FROM deliveries")[0][0] == "delivered",
                   timeout=60, what="the SR delivered after `ossa retry`")
        assert peer.received == [sr_uid]
    finally:
        assert served.stop() == 0
        peer.close()
