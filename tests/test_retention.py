"""worker.retention: finished studies past retention lose their files, then their rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, ComputedRadiographyImageStorage

from tests.conftest import FakeClock
from worker.retention import prune
from worker.spool import Spool
from worker.store import STORE_FILE, DeliveryState, NewObject, StateStore

DAY_S = 86400.0
QUIET_S = 30.0




@dataclass
class Root:
    """A storage root with its store, spool and clock."""

    store: StateStore
    spool: Spool
    clock: FakeClock


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Root]:
    clock = FakeClock()
    with StateStore(tmp_path / STORE_FILE, clock=clock) as store:
        yield Root(store, Spool(tmp_path), clock)


def receive(root: Root, study: str, sops: tuple[str, ...] = ("1",)) -> list[str]:
    """Write and record instances ``<study>.<n>``; return their paths."""
    paths = []
    for n in sops:
        sop = f"{study}.{n}"
        path = root.spool.instance_path("CR_ROOM", study, sop)
        root.spool.write(path, b"instance")
        root.store.add_instance(calling_aet="CR_ROOM", study_uid=study, sop_uid=sop,
                                sop_class_uid=ComputedRadiographyImageStorage,
                                series_uid=f"{study}.100", path=path, size=8)
        paths.append(path)
    return paths


def report(root: Root, study: str, *, destinations: tuple[str, ...] = ("PACS",),
           error: str | None = None) -> str | None:
    """Run the study's job to the end; return the SR's path (None for a failed job)."""
    root.clock.now += QUIET_S
    assert root.store.schedule_due(QUIET_S, max_queued=10) == 1
    (job,) = root.store.claim_jobs(1)
    if error is not None:
        root.store.finish_job(job.job_id, error=error)
        return None
    sop = f"{study}.999"
    path = root.spool.object_path(study, sop)
    root.spool.write(path, b"sr")
    root.store.finish_job(job.job_id, objects=[NewObject(
        kind="sr", sop_uid=sop, sop_class_uid=Comprehensive3DSRStorage,
        series_uid=f"{study}.900", path=path)], destinations=destinations)
    return path


def deliver_all(root: Root, destination: str = "PACS",
                state: DeliveryState = DeliveryState.DELIVERED) -> None:
    while (delivery := root.store.due_delivery(destination)) is not None:
        root.store.record_attempt(delivery.delivery_id, state=state, outcome="done", detail="")


def row_counts(store: StateStore) -> dict[str, int]:
    with closing(sqlite3.connect(store.path)) as db:
        return {
            table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("studies", "jobs", "job_instances", "instances", "objects",
                          "deliveries")
        }


def test_old_finished_study_loses_files_and_rows(root: Root) -> None:
    paths = receive(root, "1.2.3", ("1", "2"))
    sr = report(root, "1.2.3")
    assert sr is not None
    deliver_all(root)
    assert row_counts(root.store) == {"studies": 1, "jobs": 1, "job_instances": 2,
                                      "instances": 2, "objects": 1, "deliveries": 1}

    root.clock.now += 7 * DAY_S - 1
    assert prune(root.store, root.spool, retention_days=7) == 0
    assert all(root.spool.exists(p) for p in [*paths, sr])

    root.clock.now += 2
    assert prune(root.store, root.spool, retention_days=7) == 1
    assert not any(root.spool.exists(p) for p in [*paths, sr])
    assert list(root.spool.instances.iterdir()) == []  # empty folders went too
    assert list(root.spool.objects.iterdir()) == []
    assert row_counts(root.store) == dict.fromkeys(
        ("studies", "jobs", "job_instances", "instances", "objects", "deliveries"), 0)
    assert root.store.summary().studies == {}
    assert prune(root.store, root.spool, retention_days=7) == 0


def test_pending_delivery_keeps_a_study(root: Root) -> None:
    receive(root, "1.2.3")
    report(root, "1.2.3", destinations=("PACS", "ARCHIVE"))
    deliver_all(root, "PACS")
    delivery = root.store.due_delivery("ARCHIVE")
    assert delivery is not None
    root.store.record_attempt(delivery.delivery_id, state=DeliveryState.PENDING,
                              outcome="refused", detail="", next_attempt=root.clock.now + 60)
    root.clock.now += 30 * DAY_S
    assert prune(root.store, root.spool, retention_days=7) == 0
    assert root.store.summary().studies == {"reported": 1}
    assert len(list(root.spool.instance_files())) == 1

    deliver_all(root, "ARCHIVE")
    assert prune(root.store, root.spool, retention_days=7) == 1
    assert root.store.summary().studies == {}


def test_failed_study_and_given_up_deliveries_are_finished(root: Root) -> None:
    receive(root, "1.2.3")
    report(root, "1.2.3", error="no usable image")
    receive(root, "1.2.4")
    report(root, "1.2.4")
    deliver_all(root, state=DeliveryState.FAILED)
    assert root.store.summary().studies == {"failed": 1, "reported": 1}
    root.clock.now += 8 * DAY_S
    assert prune(root.store, root.spool, retention_days=7) == 2
    assert list(root.spool.instance_files()) == []
    assert root.store.summary().deliveries == {}


def test_only_the_old_study_goes(root: Root) -> None:
    old = receive(root, "1.2.3")
    report(root, "1.2.3", destinations=())
    root.clock.now += 6 * DAY_S
    recent = receive(root, "1.2.4")
    report(root, "1.2.4", destinations=())
    receiving = receive(root, "1.2.5")  # never reported: not finished
    root.clock.now += 2 * DAY_S
    assert prune(root.store, root.spool, retention_days=7) == 1
    assert not root.spool.exists(old[0])
    assert root.spool.exists(recent[0]) and root.spool.exists(receiving[0])
    assert root.store.summary().studies == {"reported": 1, "receiving": 1}
    assert root.store.instance_paths() == {recent[0], receiving[0]}


def test_a_late_instance_makes_an_old_study_young_again(root: Root) -> None:
    receive(root, "1.2.3", ("1",))
    report(root, "1.2.3", destinations=())
    root.clock.now += 10 * DAY_S
    receive(root, "1.2.3", ("2",))  # receiving again: not finished
    assert prune(root.store, root.spool, retention_days=7) == 0
    report(root, "1.2.3", destinations=())
    assert prune(root.store, root.spool, retention_days=7) == 0  # changed just now
    assert root.store.summary().jobs == {"done": 2}


def test_zero_retention_keeps_everything(root: Root) -> None:
    paths = receive(root, "1.2.3")
    report(root, "1.2.3", destinations=())
    root.clock.now += 10_000 * DAY_S
    assert prune(root.store, root.spool, retention_days=0) == 0
    assert root.spool.exists(paths[0])
    assert root.store.summary().studies == {"reported": 1}
    assert prune(root.store, root.spool, retention_days=1) == 1


def test_prune_of_files_already_gone_still_removes_the_rows(root: Root) -> None:
    """A crash after the files went and before the rows did: the next prune finishes it."""
    paths = receive(root, "1.2.3")
    sr = report(root, "1.2.3", destinations=())
    assert sr is not None
    for path in (*paths, sr):
        root.spool.remove(path)
    root.clock.now += 8 * DAY_S
    (study,) = root.store.prunable(root.clock.now - 7 * DAY_S)
    assert study.study_uid == "1.2.3"
    assert sorted(study.paths) == sorted([*paths, sr])
    assert prune(root.store, root.spool, retention_days=7) == 1
    assert row_counts(root.store)["studies"] == 0
