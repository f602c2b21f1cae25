"""worker.store and worker.schema: the SQLite state store, with an injected clock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComputedRadiographyImageStorage

from dicom_io.synthetic import StudyIdentity
from harness.peers import wait_until
from tests.conftest import T0, FakeClock
from worker.intake import Intake, Received
from worker.spool import Spool
from worker.store import (
    STORE_FILE,
    ClaimedJob,
    DeliveryState,
    FailedDelivery,
    InstanceFile,
    NewObject,
    ObjectRef,
    StateStore,
    StoreError,
    schema,
)
from worker.store.schema import SCHEMA_VERSION, SchemaError, migrate

QUIET_S = 30.0
SR_SERIES = "1.2.826.0.1.3680043.10.511.9"






@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[StateStore]:
    with StateStore(tmp_path / STORE_FILE, clock=clock) as opened:
        yield opened


def add(
    store: StateStore,
    study: str = "1.2.3",
    sop: str = "1.2.3.1",
    *,
    aet: str = "MODALITY",
    series: str = "1.2.3.100",
) -> bool:
    """Record an instance with a path as the spool would name it."""
    return store.add_instance(
        calling_aet=aet,
        study_uid=study,
        sop_uid=sop,
        sop_class_uid=ComputedRadiographyImageStorage,
        series_uid=series,
        path=f"instances/{aet}/{study}/{sop}.dcm",
        size=1000,
    )


def sr(study: str = "1.2.3", n: int = 1) -> NewObject:
    """The SR a job over ``study`` would produce (revision ``n``)."""
    return NewObject(
        kind="sr",
        sop_uid=f"{SR_SERIES}.{n}",
        sop_class_uid=Comprehensive3DSRStorage,
        series_uid=SR_SERIES,
        path=f"objects/{study}/{SR_SERIES}.{n}.dcm",
    )


def schedule(store: StateStore, clock: FakeClock, *, max_queued: int = 10) -> int:
    """Move the clock past the quiet time and schedule."""
    clock.now += QUIET_S
    return store.schedule_due(QUIET_S, max_queued=max_queued)


def claim_one(store: StateStore) -> ClaimedJob:
    (job,) = store.claim_jobs(10)
    return job


def report(
    store: StateStore,
    clock: FakeClock,
    study: str = "1.2.3",
    *,
    n: int = 1,
    destinations: tuple[str, ...] = ("PACS",),
) -> ClaimedJob:
    """Take ``study`` (already received) through scheduling, claim and a finished SR."""
    assert schedule(store, clock) == 1
    job = claim_one(store)
    store.finish_job(job.job_id, objects=[sr(study, n)], destinations=destinations)
    return job


def raw(path: Path) -> closing[sqlite3.Connection]:
    """A plain connection to the database file, closed on exit (autocommit)."""
    return closing(sqlite3.connect(path, isolation_level=None))


def raw_count(path: Path, table: str) -> int:
    with raw(path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# --- schema -------------------------------------------------------------------------------


def test_fresh_database_gets_current_schema_in_wal_mode(tmp_path: Path) -> None:
    with StateStore.in_root(tmp_path / "root") as store:
        assert store.path == tmp_path / "root" / STORE_FILE
    db = sqlite3.connect(tmp_path / "root" / STORE_FILE)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"studies", "jobs", "instances", "job_instances", "objects", "deliveries",
                          "nodes", "sources", "retrievals"}
    finally:
        db.close()


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with raw(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        StateStore(path)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        db.close()


def test_reopening_keeps_data_and_migrations_are_idempotent(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / STORE_FILE
    with StateStore(path, clock=clock) as store:
        assert add(store)
    with StateStore(path, clock=clock) as store:  # migrate() finds the current version
        assert store.summary().instances == {"stored": 1}
        assert store.summary().studies == {"receiving": 1}
        assert not add(store)  # the same instance is still known
    db = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(db) == SCHEMA_VERSION  # nothing to do
        assert migrate(db) == SCHEMA_VERSION
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1
    finally:
        db.close()


def test_migrate_reports_the_version_it_found(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "fresh.sqlite3", isolation_level=None)
    try:
        assert migrate(db) == 0
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_a_failing_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / STORE_FILE
    StateStore(path).close()
    broken = "CREATE TABLE extra (id INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            migrate(db)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "extra" not in names
        assert not db.in_transaction
    finally:
        db.close()


def test_two_processes_creating_the_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    """``ossa status`` opening a fresh store while the service creates it: one of them
    migrates, the other finds the schema in place instead of failing on CREATE TABLE."""
    path = tmp_path / STORE_FILE
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")  # the "service", mid-migration

    statements: list[str] = []
    outcome: list[object] = []
    other = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    other.set_trace_callback(statements.append)

    def open_other() -> None:
        try:
            outcome.append(migrate(other))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=open_other)
    thread.start()
    try:
        # The other connection has read version 0 and waits for the write lock.
        wait_until(lambda: "BEGIN IMMEDIATE" in statements, timeout=10,
                   what="the second connection to wait for the write lock")
        for migration in schema.MIGRATIONS:
            for statement in migration.split(";"):
                if statement.strip():
                    holder.execute(statement)
        holder.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        holder.execute("COMMIT")
        thread.join(timeout=30)
    finally:
        holder.close()
    assert not thread.is_alive()
    other.close()
    assert outcome == [0]
    with StateStore(path) as store:
        assert store.summary().studies == {}


def test_busy_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout_s must be > 0, got 0"):
        StateStore(tmp_path / STORE_FILE, busy_timeout_s=0)


# --- assembly and quiet time -------------------------------------------------------------


def test_studies_are_assembled_per_calling_aet_and_study_uid(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, "1.2.3", "1.2.3.1", aet="CR_ROOM")
    assert add(store, "1.2.3", "1.2.3.2", aet="CR_ROOM")
    assert add(store, "1.2.3", "1.2.3.1", aet="DX_ROOM")  # same UIDs, another sender
    assert store.summary().studies == {"receiving": 2}
    assert store.summary().instances == {"stored": 3}
    assert schedule(store, clock) == 2
    jobs = {job.calling_aet: job for job in store.claim_jobs(10)}
    assert set(jobs) == {"CR_ROOM", "DX_ROOM"}
    assert [i.sop_uid for i in jobs["CR_ROOM"].instances] == ["1.2.3.1", "1.2.3.2"]
    assert jobs["DX_ROOM"].instances == (
        InstanceFile("1.2.3.1", "instances/DX_ROOM/1.2.3/1.2.3.1.dcm"),
    )
    assert {job.study_uid for job in jobs.values()} == {"1.2.3"}
    assert {job.revision for job in jobs.values()} == {1}


def test_next_due_is_the_quietest_receiving_study_plus_the_timeout(
    store: StateStore, clock: FakeClock
) -> None:
    assert store.next_due(QUIET_S) is None
    assert add(store, study="1.2.3", sop="1.2.3.1")
    clock.now = T0 + 5
    assert add(store, study="1.2.4", sop="1.2.4.1")
    assert store.next_due(QUIET_S) == T0 + QUIET_S
    clock.now = T0 + 6
    assert add(store, study="1.2.3", sop="1.2.3.2")  # the first study is quiet again later
    assert store.next_due(QUIET_S) == T0 + 5 + QUIET_S
    assert schedule(store, clock) == 2
    assert store.next_due(QUIET_S) is None  # queued studies are no longer waited for


def test_quiet_time_starts_again_with_each_new_instance(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, sop="1.2.3.1")
    clock.now = T0 + QUIET_S - 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 0
    assert add(store, sop="1.2.3.2")  # a new instance at T0 + 29
    clock.now = T0 + QUIET_S + 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 0
    clock.now = T0 + 2 * QUIET_S - 2
    assert store.schedule_due(QUIET_S, max_queued=10) == 0
    clock.now = T0 + 2 * QUIET_S - 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 1
    assert store.summary().studies == {"queued": 1}
    assert store.summary().jobs == {"queued": 1}
    assert [i.sop_uid for i in claim_one(store).instances] == ["1.2.3.1", "1.2.3.2"]


def test_a_resent_instance_does_not_restart_the_quiet_time(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, sop="1.2.3.1")
    clock.now = T0 + QUIET_S - 1
    assert not add(store, sop="1.2.3.1")
    clock.now = T0 + QUIET_S
    assert store.schedule_due(QUIET_S, max_queued=10) == 1


def test_quiet_time_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / STORE_FILE
    with StateStore(path, clock=clock) as store:
        assert add(store)
        clock.now = T0 + 10
        assert store.schedule_due(QUIET_S, max_queued=10) == 0
    with StateStore(path, clock=clock) as store:
        clock.now = T0 + QUIET_S - 1
        assert store.schedule_due(QUIET_S, max_queued=10) == 0
        clock.now = T0 + QUIET_S
        assert store.schedule_due(QUIET_S, max_queued=10) == 1


def test_a_study_interrupted_by_a_restart_waits_a_whole_quiet_time_after_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / STORE_FILE
    with StateStore(path, clock=clock) as store:
        assert add(store)  # at T0; the service dies
    with StateStore(path, clock=clock) as store:
        restart = T0 + QUIET_S - 5  # back before the study was due
        clock.now = T0 + QUIET_S
        assert store.next_due(QUIET_S, quiet_since=restart) == restart + QUIET_S
        assert store.schedule_due(QUIET_S, max_queued=10, quiet_since=restart) == 0
        clock.now = restart + QUIET_S
        assert store.schedule_due(QUIET_S, max_queued=10, quiet_since=restart) == 1


def test_back_pressure_caps_queued_jobs(store: StateStore, clock: FakeClock) -> None:
    for n in range(5):
        clock.now = T0 + n
        assert add(store, f"1.2.{n}", f"1.2.{n}.1")
    clock.now = T0 + 100
    assert store.schedule_due(QUIET_S, max_queued=2) == 2
    assert store.summary().jobs == {"queued": 2}
    assert store.summary().studies == {"queued": 2, "receiving": 3}
    assert store.schedule_due(QUIET_S, max_queued=2) == 0
    assert [job.study_uid for job in store.claim_jobs(1)] == ["1.2.0"]  # oldest first
    assert store.schedule_due(QUIET_S, max_queued=2) == 1
    assert store.summary().jobs == {"queued": 2, "running": 1}
    assert [job.study_uid for job in store.claim_jobs(10)] == ["1.2.1", "1.2.2"]
    assert store.schedule_due(QUIET_S, max_queued=2) == 2
    assert store.schedule_due(QUIET_S, max_queued=0) == 0
    assert store.summary().jobs == {"queued": 2, "running": 3}


# --- revisions ----------------------------------------------------------------------------


def test_resent_instance_of_a_reported_study_starts_nothing(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    report(store, clock)
    assert store.summary().studies == {"reported": 1}
    assert not add(store)
    assert store.summary().studies == {"reported": 1}
    clock.now += 10 * QUIET_S
    assert store.schedule_due(QUIET_S, max_queued=10) == 0
    assert store.claim_jobs(10) == []
    assert store.summary().jobs == {"done": 1}


def test_late_instance_starts_revision_two_superseding_the_first_sr(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, sop="1.2.3.1")
    first = report(store, clock, destinations=("PACS",))
    assert first.revision == 1 and first.predecessor is None

    clock.now += 3600
    assert add(store, sop="1.2.3.2")
    assert store.summary().studies == {"receiving": 1}
    clock.now += QUIET_S - 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 0
    clock.now += 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 1
    second = claim_one(store)
    assert second.job_id != first.job_id
    assert second.revision == 2
    assert [i.sop_uid for i in second.instances] == ["1.2.3.1", "1.2.3.2"]
    assert second.predecessor == ObjectRef(
        study_uid="1.2.3",
        series_uid=SR_SERIES,
        sop_class_uid=Comprehensive3DSRStorage,
        sop_uid=f"{SR_SERIES}.1",
    )
    store.finish_job(second.job_id, objects=[sr(n=2)], destinations=("PACS",))
    assert store.summary().studies == {"reported": 1}
    assert store.summary().jobs == {"done": 2}
    assert store.summary().deliveries == {"PACS": {"pending": 2}}


def test_instance_arriving_while_processing_makes_the_study_receiving_again(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, sop="1.2.3.1")
    assert schedule(store, clock) == 1
    job = claim_one(store)
    assert store.summary().studies == {"processing": 1}
    assert add(store, sop="1.2.3.2")
    assert store.summary().studies == {"processing": 1}
    store.finish_job(job.job_id, objects=[sr()], destinations=("PACS",))
    assert store.summary().studies == {"receiving": 1}  # not reported: one is not covered
    assert schedule(store, clock) == 1
    late = claim_one(store)
    assert late.revision == 2
    assert [i.sop_uid for i in late.instances] == ["1.2.3.1", "1.2.3.2"]
    assert late.predecessor is not None and late.predecessor.sop_uid == f"{SR_SERIES}.1"


def test_new_instance_cancels_a_queued_job_and_joins_the_next(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, sop="1.2.3.1")
    assert schedule(store, clock) == 1
    assert store.summary().jobs == {"queued": 1}
    assert add(store, sop="1.2.3.2")
    assert store.summary().jobs == {}
    assert store.summary().studies == {"receiving": 1}
    assert store.claim_jobs(10) == []
    clock.now += QUIET_S - 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 0
    clock.now += 1
    assert store.schedule_due(QUIET_S, max_queued=10) == 1
    job = claim_one(store)
    assert job.revision == 1
    assert job.predecessor is None
    assert [i.sop_uid for i in job.instances] == ["1.2.3.1", "1.2.3.2"]
    assert store.summary().jobs == {"running": 1}


def test_interrupted_job_is_queued_and_claimed_again(store: StateStore, clock: FakeClock) -> None:
    assert add(store, sop="1.2.3.1")
    assert add(store, sop="1.2.3.2")
    assert schedule(store, clock) == 1
    job = claim_one(store)
    assert store.summary().jobs == {"running": 1}
    assert store.claim_jobs(10) == []

    assert store.requeue_interrupted() == 1
    assert store.summary().jobs == {"queued": 1}
    assert store.summary().studies == {"queued": 1}
    again = claim_one(store)
    assert again == replace(job, attempt=2)  # claimed once more: a new fencing token
    assert store.requeue_interrupted() == 1
    assert store.requeue_interrupted() == 0


def test_failed_job_fails_the_study_and_delivers_nothing(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    assert schedule(store, clock) == 1
    job = claim_one(store)
    store.finish_job(job.job_id, error="no usable image")
    summary = store.summary()
    assert summary.studies == {"failed": 1}
    assert summary.jobs == {"failed": 1}
    assert summary.deliveries == {}
    assert store.due_delivery("PACS") is None
    with raw(store.path) as db:
        assert db.execute("SELECT error FROM jobs").fetchall() == [("no usable image",)]

    # A new instance gives the failed study another run; there is no SR to supersede.
    assert add(store, sop="1.2.3.9")
    assert store.summary().studies == {"receiving": 1}
    assert schedule(store, clock) == 1
    retry = claim_one(store)
    assert retry.revision == 2 and retry.predecessor is None


# --- outbox ------------------------------------------------------------------------------


def test_finished_job_queues_one_delivery_per_object_and_destination(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    report(store, clock, destinations=("PACS", "ARCHIVE"))
    finished_at = clock.now
    assert store.summary().deliveries == {"PACS": {"pending": 1}, "ARCHIVE": {"pending": 1}}
    delivery = store.due_delivery("PACS")
    assert delivery is not None
    assert delivery.destination == "PACS"
    assert delivery.study_uid == "1.2.3"
    assert delivery.sop_uid == f"{SR_SERIES}.1"
    assert delivery.path == f"objects/1.2.3/{SR_SERIES}.1.dcm"
    assert delivery.attempts == 0
    assert delivery.queued_at == finished_at
    archive = store.due_delivery("ARCHIVE")
    assert archive is not None and archive.delivery_id != delivery.delivery_id
    assert store.due_delivery("ELSEWHERE") is None
    assert store.next_attempt("PACS") == finished_at
    assert store.next_attempt("ELSEWHERE") is None


def test_due_delivery_is_the_oldest_for_that_destination(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, "1.2.3", "1.2.3.1")
    report(store, clock, "1.2.3", n=1, destinations=("PACS",))
    clock.now += 5
    assert add(store, "1.2.4", "1.2.4.1")
    report(store, clock, "1.2.4", n=2, destinations=("PACS", "ARCHIVE"))
    first = store.due_delivery("PACS")
    assert first is not None and first.study_uid == "1.2.3"
    archive = store.due_delivery("ARCHIVE")
    assert archive is not None and archive.study_uid == "1.2.4"
    store.record_attempt(first.delivery_id, state=DeliveryState.DELIVERED, outcome="success",
                         detail="")
    second = store.due_delivery("PACS")
    assert second is not None and second.study_uid == "1.2.4"


def test_pending_attempt_hides_the_delivery_until_its_next_attempt(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    report(store, clock)
    delivery = store.due_delivery("PACS")
    assert delivery is not None
    retry_at = clock.now + 60
    store.record_attempt(delivery.delivery_id, state=DeliveryState.PENDING, outcome="refused",
                         detail="association rejected", next_attempt=retry_at)
    assert store.due_delivery("PACS") is None
    assert store.next_attempt("PACS") == retry_at
    assert store.summary().next_attempts == {"PACS": retry_at}
    clock.now = retry_at - 0.5
    assert store.due_delivery("PACS") is None
    clock.now = retry_at
    again = store.due_delivery("PACS")
    assert again is not None
    assert again.delivery_id == delivery.delivery_id
    assert again.attempts == 1
    assert again.queued_at == delivery.queued_at


def test_delivered_and_failed_end_a_delivery_for_good(store: StateStore, clock: FakeClock) -> None:
    assert add(store)
    report(store, clock, destinations=("PACS", "ARCHIVE"))
    pacs, archive = store.due_delivery("PACS"), store.due_delivery("ARCHIVE")
    assert pacs is not None and archive is not None
    clock.now += 1
    store.record_attempt(pacs.delivery_id, state=DeliveryState.DELIVERED, outcome="success",
                         detail="")
    store.record_attempt(archive.delivery_id, state=DeliveryState.FAILED, outcome="rejected",
                         detail="0xA700 out of resources")
    clock.now += 10_000
    assert store.due_delivery("PACS") is None
    assert store.due_delivery("ARCHIVE") is None
    assert store.next_attempt("PACS") is None
    before = store.summary()
    assert before.deliveries == {"PACS": {"delivered": 1}, "ARCHIVE": {"failed": 1}}

    # An attempt recorded against a delivery that is no longer pending changes nothing.
    store.record_attempt(pacs.delivery_id, state=DeliveryState.FAILED, outcome="late",
                         detail="stale worker")
    store.record_attempt(archive.delivery_id, state=DeliveryState.DELIVERED, outcome="late",
                         detail="stale worker")
    store.record_attempt(archive.delivery_id, state=DeliveryState.PENDING, outcome="late",
                         detail="stale worker", next_attempt=clock.now)
    after = store.summary()
    assert after.deliveries == before.deliveries
    assert after.failed == before.failed
    assert after.failed[0].attempts == 1
    assert after.failed[0].last_outcome == "rejected"


def test_finishing_a_job_twice_does_not_duplicate_objects_or_deliveries(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    job = report(store, clock, destinations=("PACS", "ARCHIVE"))
    store.finish_job(job.job_id, objects=[sr()], destinations=("PACS", "ARCHIVE"))
    assert store.summary().deliveries == {"PACS": {"pending": 1}, "ARCHIVE": {"pending": 1}}
    assert raw_count(store.path, "objects") == 1
    assert raw_count(store.path, "deliveries") == 2
    assert store.summary().jobs == {"done": 1}


# --- retry -------------------------------------------------------------------------------


def _two_failed_studies(store: StateStore, clock: FakeClock) -> None:
    """Studies 1.2.3 and 1.2.4, each with an SR whose PACS and ARCHIVE deliveries failed."""
    for n, study in enumerate(("1.2.3", "1.2.4"), start=1):
        assert add(store, study, f"{study}.1")
        report(store, clock, study, n=n, destinations=("PACS", "ARCHIVE"))
    for destination in ("PACS", "ARCHIVE"):
        while (delivery := store.due_delivery(destination)) is not None:
            store.record_attempt(delivery.delivery_id, state=DeliveryState.FAILED,
                                 outcome="refused", detail="connection refused")
    assert store.summary().deliveries == {"PACS": {"failed": 2}, "ARCHIVE": {"failed": 2}}


def test_retry_by_study_requeues_its_failed_deliveries_now(
    store: StateStore, clock: FakeClock
) -> None:
    _two_failed_studies(store, clock)
    clock.now += 3600
    assert store.retry(study_uid="1.2.4") == 2
    assert store.summary().deliveries == {
        "PACS": {"failed": 1, "pending": 1},
        "ARCHIVE": {"failed": 1, "pending": 1},
    }
    delivery = store.due_delivery("PACS")
    assert delivery is not None
    assert delivery.study_uid == "1.2.4"
    assert delivery.queued_at == clock.now  # the give-up clock starts again
    assert delivery.attempts == 1
    assert store.next_attempt("PACS") == clock.now
    assert {f.study_uid for f in store.summary().failed} == {"1.2.3"}


def test_retry_by_destination_only_touches_that_destination(
    store: StateStore, clock: FakeClock
) -> None:
    _two_failed_studies(store, clock)
    clock.now += 60
    assert store.retry(destination="ARCHIVE") == 2
    assert store.summary().deliveries == {"PACS": {"failed": 2}, "ARCHIVE": {"pending": 2}}
    assert store.due_delivery("PACS") is None
    assert store.due_delivery("ARCHIVE") is not None
    assert store.retry(destination="NOWHERE") == 0


def test_retry_by_study_and_destination_selects_both(store: StateStore, clock: FakeClock) -> None:
    _two_failed_studies(store, clock)
    assert store.retry(study_uid="1.2.3", destination="PACS") == 1
    delivery = store.due_delivery("PACS")
    assert delivery is not None and delivery.study_uid == "1.2.3"
    assert store.due_delivery("ARCHIVE") is None


def test_retry_makes_pending_deliveries_of_the_selection_due_now(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    report(store, clock)
    delivery = store.due_delivery("PACS")
    assert delivery is not None
    store.record_attempt(delivery.delivery_id, state=DeliveryState.PENDING, outcome="refused",
                         detail="", next_attempt=clock.now + 3600)
    clock.now += 5
    assert store.due_delivery("PACS") is None
    assert store.retry(study_uid="1.2.3") == 1
    due = store.due_delivery("PACS")
    assert due is not None
    assert due.queued_at == delivery.queued_at  # still pending: its give-up clock runs on
    assert store.next_attempt("PACS") == clock.now


def test_retry_all_failed_leaves_delivered_and_pending_alone(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    report(store, clock, destinations=("PACS", "ARCHIVE", "BACKUP"))
    pacs, archive, backup = (store.due_delivery(d) for d in ("PACS", "ARCHIVE", "BACKUP"))
    assert pacs is not None and archive is not None and backup is not None
    store.record_attempt(pacs.delivery_id, state=DeliveryState.DELIVERED, outcome="success",
                         detail="")
    store.record_attempt(archive.delivery_id, state=DeliveryState.FAILED, outcome="refused",
                         detail="")
    store.record_attempt(backup.delivery_id, state=DeliveryState.PENDING, outcome="refused",
                         detail="", next_attempt=clock.now + 600)
    clock.now += 60
    assert store.retry(all_failed=True) == 1
    assert store.summary().deliveries == {
        "PACS": {"delivered": 1},
        "ARCHIVE": {"pending": 1},
        "BACKUP": {"pending": 1},
    }
    assert store.next_attempt("BACKUP") == clock.now + 540  # untouched
    archive_again = store.due_delivery("ARCHIVE")
    assert archive_again is not None and archive_again.queued_at == clock.now
    assert store.retry(all_failed=True) == 0


def test_retry_needs_a_selector(store: StateStore) -> None:
    with pytest.raises(ValueError, match="study_uid, destination or all_failed"):
        store.retry()
    with pytest.raises(ValueError):
        store.retry(study_uid="", destination="")


# --- status ------------------------------------------------------------------------------


def test_summary_counts_states_and_lists_failed_deliveries(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, "1.2.3", "1.2.3.1")
    assert add(store, "1.2.3", "1.2.3.2")
    report(store, clock, "1.2.3", n=1, destinations=("PACS", "ARCHIVE"))
    assert add(store, "1.2.4", "1.2.4.1")
    assert schedule(store, clock) == 1
    failing = claim_one(store)
    store.finish_job(failing.job_id, error="no usable image")
    assert add(store, "1.2.5", "1.2.5.1")

    pacs = store.due_delivery("PACS")
    assert pacs is not None
    clock.now += 7
    failed_at = clock.now
    store.record_attempt(pacs.delivery_id, state=DeliveryState.FAILED, outcome="rejected",
                         detail="status 0xA700")

    summary = store.summary()
    assert summary.studies == {"reported": 1, "failed": 1, "receiving": 1}
    assert summary.jobs == {"done": 1, "failed": 1}
    assert summary.instances == {"stored": 4}
    assert summary.deliveries == {"PACS": {"failed": 1}, "ARCHIVE": {"pending": 1}}
    assert summary.failed == (
        FailedDelivery(
            study_uid="1.2.3",
            sop_uid=f"{SR_SERIES}.1",
            destination="PACS",
            attempts=1,
            last_attempt=failed_at,
            last_outcome="rejected",
            last_detail="status 0xA700",
        ),
    )
    assert set(summary.next_attempts) == {"ARCHIVE"}


def test_record_attempt_keeps_details_short(store: StateStore, clock: FakeClock) -> None:
    assert add(store)
    report(store, clock)
    delivery = store.due_delivery("PACS")
    assert delivery is not None
    store.record_attempt(delivery.delivery_id, state=DeliveryState.FAILED, outcome="rejected",
                         detail="x" * 5000)
    (failed,) = store.summary().failed
    assert failed.last_detail == "x" * 500


def test_store_holds_no_patient_data(
    tmp_path: Path, clock: FakeClock, make_radiograph: Callable[..., Dataset]
) -> None:
    identity = StudyIdentity(patient_id="PID-98765", patient_name="Zanzibar^Quentin",
                             accession_number="ACC-55555", body_part="WRIST")
    ds = make_radiograph(identity)
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert b"Zanzibar^Quentin" in data  # the bytes do carry it

    root = tmp_path / "root"
    with StateStore.in_root(root, clock=clock) as store:
        intake = Intake(Spool(root), store)
        received = Received(
            calling_aet="CR_ROOM",
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
        )
        intake.accept(received, data)
        report(store, clock, ds.StudyInstanceUID)
        delivery = store.due_delivery("PACS")
        assert delivery is not None
        store.record_attempt(delivery.delivery_id, state=DeliveryState.FAILED,
                             outcome="rejected", detail="refused")
        summary = store.summary()
    assert summary.failed[0].study_uid == ds.StudyInstanceUID
    assert "Zanzibar" not in repr(summary)
    files = sorted(root.glob(f"{STORE_FILE}*"))
    assert root / STORE_FILE in files
    for file in files:
        content = file.read_bytes()
        for secret in (b"Zanzibar", b"Quentin", b"PID-98765", b"ACC-55555"):
            assert secret not in content, f"{secret!r} found in {file.name}"
    assert ds.StudyInstanceUID.encode() in (root / STORE_FILE).read_bytes()


def test_own_objects_are_recognised_by_sop_uid_or_series(
    store: StateStore, clock: FakeClock
) -> None:
    assert not store.is_own_object(f"{SR_SERIES}.1", SR_SERIES)
    assert add(store)
    report(store, clock)
    assert store.is_own_object(f"{SR_SERIES}.1", "9.9.9")
    assert store.is_own_object("9.9.9.1", SR_SERIES)  # another object of Ossa's series
    assert not store.is_own_object("9.9.9.1", "9.9.9")
    assert not store.is_own_object("1.2.3.1", "1.2.3.100")  # a received instance is not ours


def test_lost_instances_leave_later_jobs(store: StateStore, clock: FakeClock) -> None:
    assert add(store, sop="1.2.3.1")
    assert add(store, sop="1.2.3.2")
    assert store.instance_paths() == {
        "instances/MODALITY/1.2.3/1.2.3.1.dcm",
        "instances/MODALITY/1.2.3/1.2.3.2.dcm",
    }
    store.mark_lost("instances/MODALITY/1.2.3/1.2.3.1.dcm")
    assert store.summary().instances == {"stored": 1, "lost": 1}
    assert store.stored_files() == [("instances/MODALITY/1.2.3/1.2.3.2.dcm", "instance")]
    assert len(store.instance_paths()) == 2  # lost rows are still known
    assert schedule(store, clock) == 1
    job = claim_one(store)
    assert [i.sop_uid for i in job.instances] == ["1.2.3.2"]
    store.finish_job(job.job_id, objects=[sr()], destinations=())
    assert sorted(store.stored_files()) == [
        ("instances/MODALITY/1.2.3/1.2.3.2.dcm", "instance"),
        (f"objects/1.2.3/{SR_SERIES}.1.dcm", "sr"),
    ]


# --- concurrency -------------------------------------------------------------------------


def test_second_store_on_the_same_file_sees_the_first_ones_writes(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / STORE_FILE
    with StateStore(path, clock=clock) as service, StateStore(path, clock=clock) as status:
        assert add(service)
        assert status.summary().instances == {"stored": 1}
        report(service, clock)
        assert status.summary().studies == {"reported": 1}
        pacs = service.due_delivery("PACS")
        assert pacs is not None
        service.record_attempt(pacs.delivery_id, state=DeliveryState.FAILED, outcome="x",
                               detail="")
        assert status.retry(all_failed=True) == 1  # `ossa retry` from another process
        due = service.due_delivery("PACS")
        assert due is not None and due.delivery_id == pacs.delivery_id


def test_a_write_waits_for_another_writer_then_succeeds(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / STORE_FILE
    with StateStore(path, clock=clock, busy_timeout_s=30) as store:
        statements: list[str] = []
        # Private, for synchronisation only: see when the store's write has begun waiting.
        for pooled in list(store.db._pool.queue):
            pooled.set_trace_callback(statements.append)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute(
            "UPDATE studies SET updated = 0"  # any write: the lock is what matters
        )
        results: list[object] = []

        def write() -> None:
            try:
                results.append(add(store))
            except Exception as exc:
                results.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            wait_until(lambda: "BEGIN IMMEDIATE" in statements, timeout=10,
                       what="the store's write to wait for the lock")
            assert results == []
            assert thread.is_alive()
            holder.execute("COMMIT")
            thread.join(timeout=30)
        finally:
            holder.close()
        assert not thread.is_alive()
        assert results == [True]
        assert store.summary().instances == {"stored": 1}


def test_a_write_gives_up_after_its_busy_timeout(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / STORE_FILE
    with StateStore(path, clock=clock, busy_timeout_s=0.05) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked"):
                add(store)
            assert store.summary().studies == {}  # readers are not blocked (WAL)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert add(store)
        assert store.summary().studies == {"receiving": 1}


def test_resent_instance_whose_file_was_lost_is_reported_again(tmp_path: Path) -> None:
    clock = FakeClock()
    with StateStore(tmp_path / "state.sqlite3", clock=clock) as store:
        for sop in ("1.2.3.1", "1.2.3.2"):
            assert store.add_instance(calling_aet="A", study_uid="1.2.3", sop_uid=sop,
                                      sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                      series_uid="1.2.3.9", path=f"p/{sop}", size=1)
        store.mark_lost("p/1.2.3.2")
        clock.now += 100
        assert store.schedule_due(10, max_queued=4) == 1
        (job,) = store.claim_jobs(4)
        assert [i.sop_uid for i in job.instances] == ["1.2.3.1"]
        store.finish_job(job.job_id)
        assert store.add_instance(calling_aet="A", study_uid="1.2.3", sop_uid="1.2.3.2",
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                  series_uid="1.2.3.9", path="p/1.2.3.2", size=1)
        clock.now += 100
        assert store.schedule_due(10, max_queued=4) == 1
        (again,) = store.claim_jobs(4)
        assert again.revision == 2
        assert [i.sop_uid for i in again.instances] == ["1.2.3.1", "1.2.3.2"]


# --- reads for the status page and the API --------------------------------------------------


def test_a_version_1_store_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with raw(path) as db:
        for statement in schema.MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO studies (calling_aet, study_uid, state, first_received,"
                   " last_received, updated) VALUES ('CR', '1.2.3', 'reported', 1, 2, 3)")
        db.execute("INSERT INTO jobs (study_id, revision, state, created) VALUES (1, 1, 'done', 2)")
    with StateStore(path) as store:
        (row,) = store.list_studies()
        assert row.study_uid == "1.2.3" and row.revision == 1 and row.result is None
    with raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert {"result", "owner", "lease_until", "attempt"} <= {
            r[1] for r in db.execute("PRAGMA table_info(jobs)")}


def test_finish_job_records_the_result_shown_for_the_study(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store)
    assert schedule(store, clock) == 1
    job = claim_one(store)
    store.finish_job(job.job_id, objects=[sr()], destinations=("PACS",),
                     result="ABNORMAL (p=0.87)")
    (row,) = store.list_studies()
    assert row.result == "ABNORMAL (p=0.87)" and row.state == "reported"
    assert add(store, sop="1.2.3.2")  # a late instance: the first result stands meanwhile
    (row,) = store.list_studies()
    assert row.state == "receiving" and row.result == "ABNORMAL (p=0.87)"
    assert schedule(store, clock) == 1
    second = claim_one(store)
    store.finish_job(second.job_id, objects=[sr(n=2)], destinations=("PACS",),
                     result="NORMAL (p=0.10)")
    (row,) = store.list_studies()
    assert row.result == "NORMAL (p=0.10)" and row.revision == 2


def test_list_studies_newest_first_paged_and_by_state(store: StateStore, clock: FakeClock) -> None:
    for i in range(5):
        clock.advance(1)
        assert add(store, f"1.2.{i}", f"1.2.{i}.1")
    assert add(store, "1.2.0", "1.2.0.1", aet="OTHER")  # the same study from another sender
    report_first = [r.study_uid for r in store.list_studies()]
    assert report_first == ["1.2.0", "1.2.4", "1.2.3", "1.2.2", "1.2.1", "1.2.0"]
    assert [r.study_uid for r in store.list_studies(limit=2, offset=1)] == ["1.2.4", "1.2.3"]
    assert store.list_studies(offset=10) == []
    assert store.count_studies() == 6
    assert schedule(store, clock) == 6
    for job in store.claim_jobs(2):
        store.finish_job(job.job_id, error="no usable image")
    failed = store.list_studies(state="failed")
    assert len(failed) == 2 == store.count_studies("failed")
    assert all(r.state == "failed" and r.instances == 1 for r in failed)
    with pytest.raises(ValueError, match="limit and offset must be >= 0"):
        store.list_studies(limit=-1)


def test_study_detail_lists_jobs_objects_and_deliveries_per_sender(
    store: StateStore, clock: FakeClock
) -> None:
    assert add(store, "1.2.3", "1.2.3.1")
    assert add(store, "1.2.3", "1.2.3.2")
    report(store, clock, destinations=("PACS", "ARCHIVE"))
    pacs = store.due_delivery("PACS")
    assert pacs is not None
    clock.advance(3)
    store.record_attempt(pacs.delivery_id, state=DeliveryState.FAILED, outcome="refused",
                         detail="status 0xC000")
    assert add(store, "1.2.3", "1.2.3.1", aet="OTHER")

    details = store.study_detail("1.2.3")
    assert [d.study.calling_aet for d in details] == ["MODALITY", "OTHER"]
    first = details[0]
    assert first.study.instances == 2 and first.study.state == "reported"
    assert first.study.deliveries == {"failed": 1, "pending": 1}
    (job,) = first.jobs
    assert job.revision == 1 and job.state == "done" and job.error is None
    (obj,) = first.objects
    assert obj.kind == "sr" and obj.sop_uid == f"{SR_SERIES}.1" and obj.revision == 1
    archive, failed = first.deliveries
    assert (archive.destination, archive.state, archive.attempts) == ("ARCHIVE", "pending", 0)
    assert (failed.destination, failed.state, failed.attempts) == ("PACS", "failed", 1)
    assert failed.last_outcome == "refused" and failed.last_detail == "status 0xC000"
    assert failed.last_attempt == clock.now
    other = details[1]
    assert other.study.state == "receiving" and other.jobs == () and other.deliveries == ()
    assert store.study_detail("9.9.9") == []


def test_delivery_stats_by_destination(store: StateStore, clock: FakeClock) -> None:
    assert add(store, "1.2.3", "1.2.3.1")
    report(store, clock, destinations=("PACS", "ARCHIVE"))
    queued_at = clock.now
    assert add(store, "1.2.4", "1.2.4.1")
    clock.advance(10)
    report(store, clock, "1.2.4", n=2, destinations=("PACS", "ARCHIVE"))
    first = store.due_delivery("PACS")
    assert first is not None
    store.record_attempt(first.delivery_id, state=DeliveryState.DELIVERED, outcome="success",
                         detail="0x0000")
    clock.advance(5)
    second = store.due_delivery("PACS")
    assert second is not None
    store.record_attempt(second.delivery_id, state=DeliveryState.PENDING, outcome="unreachable",
                         detail="connection refused", next_attempt=clock.now + 60)

    pacs, archive = sorted(store.delivery_stats(), key=lambda s: s.destination != "PACS")
    assert pacs.destination == "PACS"
    assert pacs.states == {"delivered": 1, "pending": 1}
    assert pacs.outcomes == {"success": 1, "unreachable": 1}
    assert pacs.last_attempt == clock.now and pacs.last_outcome == "unreachable"
    assert pacs.last_detail == "connection refused"
    assert pacs.oldest_pending == queued_at + QUIET_S + 10
    assert archive.states == {"pending": 2} and archive.outcomes == {}
    assert archive.oldest_pending == queued_at and archive.last_attempt is None


def test_stored_bytes_and_ping(tmp_path: Path, clock: FakeClock) -> None:
    store = StateStore(tmp_path / STORE_FILE, clock=clock)
    assert store.stored_bytes() == 0
    assert add(store, "1.2.3", "1.2.3.1") and add(store, "1.2.3", "1.2.3.2")
    assert store.stored_bytes() == 2000
    store.mark_lost("instances/MODALITY/1.2.3/1.2.3.1.dcm")
    assert store.stored_bytes() == 1000
    store.ping()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.ping()
