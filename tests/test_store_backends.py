"""worker.store on both backends: SQLite and a real PostgreSQL server (the ``postgres``
fixture), with leases, fencing and the nodes of a cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from harness.peers import PostgresServer
from tests.conftest import FakeClock
from worker.store import (
    STORE_FILE,
    DeliveryState,
    LeaseLostError,
    Location,
    NewObject,
    RetrievalState,
    SchemaError,
    StateStore,
    StoreError,
)
from worker.store.schema import SCHEMA_VERSION

LEASE_S = 60.0
QUIET_S = 10.0
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"

Opener = Callable[..., StateStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """A fresh store location on each backend."""
    if request.param == "sqlite":
        return Location(sqlite_path=tmp_path / STORE_FILE)
    peer: PostgresServer = request.getfixturevalue("postgres")
    return Location(url=peer.new_database())


@pytest.fixture
def opener(location: Location, clock: FakeClock) -> Iterator[Opener]:
    """Opens the store at ``location`` as a node (``opener("b")``), on the fake clock."""
    opened: list[StateStore] = []

    def open_as(node: str = "a", **kwargs: object) -> StateStore:
        kwargs.setdefault("clock", clock)
        store = StateStore(location, node=node, lease_s=LEASE_S, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_as
    for store in opened:
        store.close()


def add(store: StateStore, study: str = "1.2.3", sop: str = "1.2.3.1") -> bool:
    return store.add_instance(calling_aet="MODALITY", study_uid=study, sop_uid=sop,
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_uid=study + ".9",
                              path=f"instances/{study}/{sop}.dcm", size=100)


def sr(study: str, revision: int = 1) -> NewObject:
    return NewObject(kind="sr", sop_uid=f"{study}.77.{revision}", sop_class_uid=SR_CLASS,
                     series_uid=f"{study}.77", path=f"objects/{study}/sr{revision}.dcm")


def test_a_study_goes_through_every_state(opener: Opener, clock: FakeClock) -> None:
    """Every query of every caller, on each backend."""
    store = opener()
    assert add(store, sop="1.2.3.1") and add(store, sop="1.2.3.2")
    assert not add(store, sop="1.2.3.2")  # re-sent
    assert store.schedule_due(QUIET_S, max_queued=5) == 0  # not quiet yet
    assert store.next_due(QUIET_S) == pytest.approx(clock() + QUIET_S)
    clock.advance(QUIET_S + 1)
    assert store.schedule_due(QUIET_S, max_queued=5) == 1
    (job,) = store.claim_jobs(5)
    assert [i.sop_uid for i in job.instances] == ["1.2.3.1", "1.2.3.2"]
    assert (job.revision, job.attempt, job.predecessor) == (1, 1, None)
    store.finish_job(job.job_id, objects=[sr("1.2.3")], destinations=["PACS", "ARCHIVE"],
                     result="ABNORMAL (p=0.87)", attempt=job.attempt)
    assert store.is_own_object("1.2.3.77.1", "x") and store.is_own_object("x", "1.2.3.77")
    assert store.summary().studies == {"reported": 1}
    delivery = store.due_delivery("PACS")
    assert delivery is not None and delivery.sop_uid == "1.2.3.77.1"
    assert store.record_attempt(delivery.delivery_id, state=DeliveryState.DELIVERED,
                                outcome="success", detail="0x0000")
    archive = store.due_delivery("ARCHIVE")
    assert archive is not None
    assert store.record_attempt(archive.delivery_id, state=DeliveryState.FAILED,
                                outcome="refused", detail="0xA700")
    assert store.retry(destination="ARCHIVE") == 1
    assert store.next_attempt("ARCHIVE") == pytest.approx(clock())
    (row,) = store.list_studies()
    assert (row.state, row.instances, row.revision, row.result) == (
        "reported", 2, 1, "ABNORMAL (p=0.87)")
    assert row.deliveries == {"delivered": 1, "pending": 1}
    (detail,) = store.study_detail("1.2.3")
    assert [o.sop_uid for o in detail.objects] == ["1.2.3.77.1"]
    stats = {s.destination: s for s in store.delivery_stats()}
    assert stats["PACS"].last_outcome == "success" and stats["ARCHIVE"].last_outcome == "refused"
    # a late instance starts revision 2, which supersedes the first SR
    clock.advance(1)
    assert add(store, sop="1.2.3.3")
    clock.advance(QUIET_S + 1)
    assert store.schedule_due(QUIET_S, max_queued=5) == 1
    (second,) = store.claim_jobs(5)
    assert second.revision == 2 and second.predecessor is not None
    assert second.predecessor.sop_uid == "1.2.3.77.1"
    store.finish_job(second.job_id, objects=[sr("1.2.3", 2)], attempt=second.attempt)
    assert store.stored_bytes() == 300
    assert store.count_studies("reported") == 1
    store.ping()
    delivered = store.due_delivery("ARCHIVE")
    assert delivered is not None
    store.record_attempt(delivered.delivery_id, state=DeliveryState.DELIVERED,
                         outcome="success", detail="")
    (prunable,) = store.prunable(clock() + 1)
    assert len(prunable.paths) == 5  # three instances and two SRs
    store.delete_study(prunable.study_id)
    assert store.summary().studies == {}


def test_an_expired_lease_is_taken_over_and_the_late_finish_is_fenced(
    opener: Opener, clock: FakeClock
) -> None:
    a, b = opener("a"), opener("b")
    assert add(a)
    clock.advance(QUIET_S + 1)
    assert a.schedule_due(QUIET_S, max_queued=5) == 1
    (job,) = a.claim_jobs(5)
    assert b.claim_jobs(5) == []  # a's lease holds
    clock.advance(LEASE_S + 1)  # a stalls past its lease
    (taken,) = b.claim_jobs(5)
    assert (taken.job_id, taken.attempt) == (job.job_id, 2)
    with pytest.raises(LeaseLostError, match="no longer this node's"):
        a.finish_job(job.job_id, objects=[sr("1.2.3")], destinations=["PACS"],
                     attempt=job.attempt)
    assert a.summary().deliveries == {}  # nothing of a's finish was recorded
    b.finish_job(taken.job_id, objects=[sr("1.2.3")], destinations=["PACS"],
                 attempt=taken.attempt)
    assert b.summary().deliveries == {"PACS": {"pending": 1}}
    assert b.summary().jobs == {"done": 1}


def test_the_heartbeat_keeps_a_lease_alive(opener: Opener, clock: FakeClock) -> None:
    a, b = opener("a"), opener("b")
    a.register_node(host="host-a", pid=1, version="test")
    assert add(a)
    clock.advance(QUIET_S + 1)
    a.schedule_due(QUIET_S, max_queued=5)
    (job,) = a.claim_jobs(5)
    for _ in range(3):
        clock.advance(LEASE_S * 0.6)
        assert a.heartbeat() == 1
        assert b.claim_jobs(5) == []
    (node,) = b.nodes()
    assert (node.name, node.host, node.jobs, node.heartbeat) == ("a", "host-a", 1, clock())
    a.finish_job(job.job_id, attempt=job.attempt, error="no usable image")
    assert b.nodes()[0].jobs == 0


def test_start_up_requeues_only_this_nodes_jobs(opener: Opener, clock: FakeClock) -> None:
    a, b = opener("a"), opener("b")
    assert add(a, study="1.2.3") and add(a, study="1.2.4")
    clock.advance(QUIET_S + 1)
    assert a.schedule_due(QUIET_S, max_queued=5) == 2
    (job_a,) = a.claim_jobs(1)
    (job_b,) = b.claim_jobs(1)
    assert b.requeue_interrupted() == 1  # b restarted: its own job only
    assert a.summary().jobs == {"queued": 1, "running": 1}
    (again,) = b.claim_jobs(5)
    assert again.job_id == job_b.job_id and again.attempt == 2
    a.finish_job(job_a.job_id, objects=[sr("1.2.3")], attempt=job_a.attempt)


def test_concurrent_claims_take_each_job_once(opener: Opener, clock: FakeClock) -> None:
    """Nodes claiming at the same moment: on PostgreSQL each skips the rows another is
    claiming; on SQLite one transaction runs at a time."""
    first = opener("n0")
    for i in range(12):
        assert add(first, study=f"1.2.{i}")
    clock.advance(QUIET_S + 1)
    assert first.schedule_due(QUIET_S, max_queued=20) == 12
    nodes = [first, *(opener(f"n{i}") for i in range(1, 4))]
    taken: dict[str, list[int]] = {n.node: [] for n in nodes}
    start = threading.Barrier(len(nodes))

    def claim(node: StateStore) -> None:
        start.wait()
        while jobs := node.claim_jobs(1):
            taken[node.node].extend(j.job_id for j in jobs)

    threads = [threading.Thread(target=claim, args=(n,)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [job for jobs in taken.values() for job in jobs]
    assert sorted(every) == sorted(set(every)) and len(every) == 12


def test_a_delivery_is_sent_by_one_node_at_a_time(opener: Opener, clock: FakeClock) -> None:
    a, b = opener("a"), opener("b")
    a.register_node(host="host-a", pid=1, version="test")
    assert add(a)
    clock.advance(QUIET_S + 1)
    a.schedule_due(QUIET_S, max_queued=5)
    (job,) = a.claim_jobs(5)
    a.finish_job(job.job_id, objects=[sr("1.2.3")], destinations=["PACS"], attempt=job.attempt)
    sending = a.due_delivery("PACS")
    assert sending is not None
    assert b.due_delivery("PACS") is None  # a is sending it
    assert [(n.name, n.deliveries) for n in a.nodes()] == [("a", 1)]
    clock.advance(LEASE_S + 1)  # a died mid-send
    again = b.due_delivery("PACS")
    assert again is not None and again.delivery_id == sending.delivery_id
    assert not a.record_attempt(sending.delivery_id, state=DeliveryState.DELIVERED,
                                outcome="success", detail="")  # a woke up: not its own
    assert b.record_attempt(again.delivery_id, state=DeliveryState.DELIVERED,
                            outcome="success", detail="")
    assert b.summary().deliveries == {"PACS": {"delivered": 1}}
    assert b.study_detail("1.2.3")[0].deliveries[0].attempts == 1


def test_one_node_polls_a_source_per_interval_and_keeps_its_watermark(
    opener: Opener, clock: FakeClock,
) -> None:
    a, b = opener("a"), opener("b")
    assert a.claim_poll("archive", 30.0) == (True, None)  # first poll: no watermark yet
    assert b.claim_poll("archive", 30.0) == (False, None)  # a polls; not due for b
    started = a.now()
    a.finish_poll("archive", outcome="success", detail="2 found", watermark=started)
    clock.advance(10)
    assert b.claim_poll("archive", 30.0) == (False, None)  # polled 10 s ago
    clock.advance(21)
    assert b.claim_poll("archive", 30.0) == (True, started)  # b's turn, from a's watermark
    b.finish_poll("archive", outcome="unreachable", detail="down")  # the watermark stays
    clock.advance(31)
    assert a.claim_poll("archive", 30.0) == (True, started)
    clock.advance(LEASE_S + 31)  # a died while polling: its claim lapses
    assert b.claim_poll("archive", 30.0) == (True, started)
    (row,) = b.sources()
    assert row.name == "archive" and row.polled_by == "b" and row.last_outcome == "unreachable"


def test_a_retrieval_is_queued_once_leased_to_one_node_and_fenced(
    opener: Opener, clock: FakeClock,
) -> None:
    a, b = opener("a"), opener("b")
    assert a.note_study("archive", "1.2.3", 2)
    assert not b.note_study("archive", "1.2.3", 2)  # pending already
    taken = a.due_retrieval(("archive",))
    assert taken is not None and taken.study_uid == "1.2.3" and taken.requested_by == "poll"
    assert b.due_retrieval(("archive",)) is None  # a holds it
    assert b.due_retrieval(("other",)) is None
    clock.advance(LEASE_S + 1)  # a died mid-retrieval
    again = b.due_retrieval(("archive",))
    assert again is not None and again.retrieval_id == taken.retrieval_id
    assert not a.record_retrieval(taken.retrieval_id, state=RetrievalState.DONE,
                                  outcome="success", detail="", retrieved=2)  # fenced
    assert b.record_retrieval(again.retrieval_id, state=RetrievalState.DONE,
                              outcome="success", detail="2 stored", retrieved=2, expected=2)
    assert not a.note_study("archive", "1.2.3", 2)  # done and unchanged
    assert a.note_study("archive", "1.2.3", 3)  # a new instance in the archive
    row = a.retrieval("archive", "1.2.3")  # its retries start anew
    assert row is not None and row.state == RetrievalState.PENDING and row.attempts == 0
    # a failure that needs an operator, then `ossa retry --source`
    got = a.due_retrieval(("archive",))
    assert got is not None
    a.record_retrieval(got.retrieval_id, state=RetrievalState.FAILED, outcome="refused",
                       detail="HTTP 401", retrieved=0)
    assert not a.note_study("archive", "1.2.3", 4)  # a failed one waits for the operator
    assert [r.last_detail for r in a.troubled_retrievals()] == ["HTTP 401"]
    assert a.retry_retrievals(source="archive") == 1
    row = a.retrieval("archive", "1.2.3")
    assert row is not None and row.state == RetrievalState.PENDING and row.attempts == 0


def test_a_study_waits_for_its_pending_retrieval(opener: Opener, clock: FakeClock) -> None:
    a = opener("a")
    a.request_retrieval("archive", "1.2.3", requested_by="cli")
    a.add_instance(calling_aet="archive", study_uid="1.2.3", sop_uid="1.2.3.1",
                   sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_uid="1.2.3.9",
                   path="instances/archive/1.2.3/1.dcm", size=100, source="archive")
    clock.advance(QUIET_S + 1)
    assert a.schedule_due(QUIET_S, max_queued=5) == 0  # still retrieving
    got = a.due_retrieval(("archive",))
    assert got is not None
    a.record_retrieval(got.retrieval_id, state=RetrievalState.DONE, outcome="success",
                       detail="", retrieved=1)
    assert a.schedule_due(QUIET_S, max_queued=5) == 1
    (job,) = a.claim_jobs(5)
    assert job.source == "archive"


def test_a_newer_schema_is_refused(location: Location, opener: Opener) -> None:
    opener().close()
    if location.postgres:
        assert location.url is not None
        with psycopg.connect(location.url, autocommit=True) as db:
            db.execute("UPDATE ossa_schema SET version = %s", (SCHEMA_VERSION + 1,))
    else:
        import sqlite3

        assert location.sqlite_path is not None
        db = sqlite3.connect(location.sqlite_path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        opener()


# --- PostgreSQL only ---------------------------------------------------------------------


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.new_database()


def test_nodes_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    stores: list[StateStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one(i: int) -> None:
        start.wait()
        try:
            stores.append(StateStore(Location(url=pg_url), node=f"n{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == [] and len(stores) == 4
        with psycopg.connect(pg_url, autocommit=True) as db:
            assert db.execute("SELECT version FROM ossa_schema").fetchall() == [
                (SCHEMA_VERSION,)]
    finally:
        for store in stores:
            store.close()


def test_one_node_at_a_time_holds_a_singleton(pg_url: str) -> None:
    with StateStore(Location(url=pg_url), node="a") as a, \
            StateStore(Location(url=pg_url), node="b") as b:
        with a.db.singleton("retention") as got_a:
            assert got_a
            with b.db.singleton("retention") as got_b:
                assert not got_b
            with b.db.singleton("something else") as other:
                assert other
        with b.db.singleton("retention") as got_b:
            assert got_b


def test_times_are_the_database_servers_not_the_nodes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock is ten minutes fast records the server's time: the quiet time,
    leases and retries of a cluster do not depend on its nodes' clocks."""
    with StateStore(Location(url=pg_url), node="skewed") as store:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 600)
        assert add(store)
        with psycopg.connect(pg_url, autocommit=True) as db:
            (server,) = db.execute("SELECT EXTRACT(EPOCH FROM now())::float8").fetchone()
        (row,) = store.list_studies()
        assert abs(row.last_received - server) < 30
        assert store.schedule_due(QUIET_S, max_queued=5) == 0  # not quiet on the server


def test_a_server_restart_gives_store_errors_then_recovers(
    postgres: PostgresServer, pg_url: str
) -> None:
    with StateStore(Location(url=pg_url), node="a") as store:
        assert add(store, sop="1.2.3.1")
        postgres.stop("immediate")
        try:
            with pytest.raises(StoreError):
                add(store, sop="1.2.3.2")
            with pytest.raises(StoreError):
                store.ping()
        finally:
            postgres.start()
        assert add(store, sop="1.2.3.2")  # the pool dropped its dead connections
        assert store.summary().instances == {"stored": 2}


def test_health_fails_while_the_database_is_down_and_recovers(
    postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    """``/healthz``'s checks: the store check fails (503) while PostgreSQL is down."""
    from worker.http.health import HealthProbe
    from worker.spool import Spool

    with StateStore(Location(url=pg_url), node="a") as store:
        probe = HealthProbe(store, Spool(tmp_path, node="a"),
                            listener=lambda: (True, "listening"), model=lambda: (True, "m"))
        assert probe.run().ok
        postgres.stop("fast")
        try:
            health = probe.run()
            assert not health.ok and health.failing == ["store"]
            assert "state store query failed" in health.checks["store"].detail
        finally:
            postgres.start()
        assert probe.run().ok


def test_an_unreachable_server_is_a_store_error() -> None:
    from harness.peers import free_port

    url = f"postgresql://ossa@127.0.0.1:{free_port()}/ossa"
    with pytest.raises(StoreError, match="cannot connect"):
        StateStore(Location(url=url), node="a")
