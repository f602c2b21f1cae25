"""A cluster (issue 18): three ``ossa serve`` nodes on one PostgreSQL and one shared storage
root, a DCMTK ``storescp +uf`` destination (it keeps every copy it receives).

Thirty studies of three instances are sent round-robin, some split across nodes; a sender
re-sends what was not acknowledged to the next node, as a PACS with several destinations
would. Meanwhile, at seeded moments: ``kill -9`` of a node while it receives, of a node
that has just claimed a job, of one classifying a job, and of one holding a delivery
(between sending and recording); each killed node is restarted; PostgreSQL is restarted mid-run;
one node runs ten minutes fast (libfaketime). In the end: every acknowledged instance is
on disk and in the store, every study has exactly one SR (one SOP Instance UID) at the
destination, covering all its instances, and a job was only ever taken over from a node
that had been killed (no job had two live leases).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_io.synthetic import StudyIdentity
from harness.config import write_config
from harness.peers import PostgresServer, free_port, wait_until
from tests.conftest import Served, evidence_sop_uids, running_storescp
from worker.admission import StoreStatus

logger = logging.getLogger(__name__)

NODES = 3
STUDIES = 30
INSTANCES = 3
LEASE_S = 3.0
#: Quiet time: longer than a kill, a re-send to another node and the PostgreSQL restart,
#: so that a study is never reported without an instance that was being re-sent.
COMPLETION_S = 8.0


def _write_config(folder: Path, *, name: str, port: int, bundle: Path, database: str,
                  root: Path, destination_port: int) -> Path:
    return write_config(
        folder / "config.toml",
        listener={"port": port, "allowed_calling_aets": ["STORESCU"]},
        study={"completion_timeout_s": COMPLETION_S},
        storage={"root": root, "database": database},
        node={"name": name, "lease_s": LEASE_S},
        model={"bundle": bundle},
        results={"secondary_capture": False},
        delivery={"retry_initial_interval_s": 1, "retry_max_interval_s": 2},
        destinations=[{"name": "storescp", "type": "dimse", "ae_title": "STORESCP",
                       "host": "127.0.0.1", "port": destination_port, "timeout_s": 5}],
    )


def _libfaketime() -> str:
    """Debian's libfaketime (package faketime)."""
    import glob

    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        pytest.fail("faketime (Debian) is not installed; run `make test`")
    return found[0]


@dataclass
class Node:
    name: str
    port: int
    config: Path
    prefix: tuple[str, ...] = ()
    served: Served | None = None

    def start(self) -> None:
        self.served = Served(self.config, self.port, prefix=self.prefix)

    def kill(self) -> None:
        assert self.served is not None
        self.served.kill()
        self.served = None

    @property
    def up(self) -> bool:
        return self.served is not None


def _scu() -> AE:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    return ae


@dataclass
class Sender:
    """Sends the studies' instances, each to its node, and re-sends every instance that was
    not acknowledged to the next node that is up."""

    nodes: list[Node]
    plan: list[tuple[Dataset, int]]  # (instance, node index) in sending order
    rng: random.Random
    acked: set[str] = field(default_factory=set)
    acked_at: dict[str, float] = field(default_factory=dict)  # SOP Instance UID -> monotonic
    statuses: list[int | None] = field(default_factory=list)
    in_flight: dict[int, bool] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        queue = list(self.plan)
        while queue and not self.stop.is_set():
            ds, target = queue.pop(0)
            for step in range(NODES):
                index = (target + step) % NODES
                if self.nodes[index].up and self._send(ds, index):
                    break
            else:
                queue.insert(0, (ds, target))  # no node took it: again, shortly
                self.stop.wait(0.2)
            self.stop.wait(self.rng.uniform(0.02, 0.15))
        self.done.set()

    def _send(self, ds: Dataset, index: int) -> bool:
        node = self.nodes[index]
        assoc = _scu().associate("127.0.0.1", node.port, ae_title="OSSA")
        if not assoc.is_established:
            return False
        self.in_flight[index] = True
        try:
            answer = assoc.send_c_store(ds) if assoc.is_established else Dataset()
            status = int(answer.Status) if "Status" in answer else None
        finally:
            self.in_flight[index] = False
            if assoc.is_established:
                assoc.release()
        with self.lock:
            self.statuses.append(status)
            if status == 0:
                self.acked.add(str(ds.SOPInstanceUID))
                self.acked_at.setdefault(str(ds.SOPInstanceUID), time.monotonic())
        return status == 0


def _rows(url: str, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
        return list(db.execute(sql, params).fetchall())


def _rows_or_none(url: str, sql: str) -> list[Any] | None:
    try:
        return _rows(url, sql)
    except psycopg.OperationalError:
        return None


def _kill_holder(nodes: list[Node], url: str, sql: str, what: str, killed: list[str],
                 timeout: float, delay: float = 0.0) -> str | None:
    """Kill the node that the query names (owner of a claim) as soon as one does, or
    ``delay`` seconds later (its classification under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows_or_none(url, sql) or []
        for (owner,) in rows:
            node = next((n for n in nodes if n.name == owner and n.up), None)
            if node is not None:
                time.sleep(delay)
                node.kill()
                killed.append(node.name)
                logger.info("cluster test: killed %s %s", node.name, what)
                return node.name
        time.sleep(0.01)
    logger.info("cluster test: no node seen %s within %.0f s", what, timeout)
    return None


@pytest.mark.integration
def test_three_nodes_on_one_postgresql_report_each_study_once_whatever_dies(
    tmp_path: Path, trained_bundle: Path, postgres: PostgresServer,
    make_radiograph: Callable[..., Dataset],
) -> None:
    seed = int(os.environ.get("OSSA_CLUSTER_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    logger.info("cluster test: seed %d (OSSA_CLUSTER_SEED repeats it)", seed)
    url = postgres.new_database()
    root = tmp_path / "shared-root"
    out = tmp_path / "destination"
    with running_storescp(out, "+uf") as destination_port:
        nodes = []
        for i in range(NODES):
            name, port = f"node{i + 1}", free_port()
            config = _write_config(tmp_path / name, name=name, port=port,
                                   bundle=trained_bundle, database=url, root=root,
                                   destination_port=destination_port)
            # the third node's clock is ten minutes fast (libfaketime preloaded by env, which
            # execs: the faketime wrapper would fork, and a kill -9 would miss the node)
            prefix = ("env", f"LD_PRELOAD={_libfaketime()}", "FAKETIME=+10m") if i == 2 else ()
            nodes.append(Node(name, port, config, prefix))
        for node in nodes:
            node.start()

        studies: dict[str, list[Dataset]] = {}
        plan: list[tuple[Dataset, int]] = []
        for s in range(STUDIES):
            identity = StudyIdentity(patient_id=f"CLUSTER-{s}", patient_name="Cluster^Test",
                                     accession_number=f"C{s}", body_part="WRIST")
            batch = [make_radiograph(identity, instance_number=k + 1) for k in range(INSTANCES)]
            studies[str(batch[0].StudyInstanceUID)] = batch
            split = s % 4 == 1  # a quarter of the studies go to every node
            plan += [(ds, (s + k) % NODES if split else s % NODES) for k, ds in enumerate(batch)]
        sender = Sender(nodes, plan, random.Random(rng.random()))
        thread = threading.Thread(target=sender.run, name="cluster-sender", daemon=True)
        killed: list[str] = []
        thread.start()
        try:
            # kill -9 while receiving
            victim = rng.randrange(NODES)
            wait_until(lambda: sender.in_flight.get(victim), timeout=60,
                       what=f"{nodes[victim].name} to receive")
            time.sleep(rng.uniform(0, 0.05))
            nodes[victim].kill()
            killed.append(nodes[victim].name)
            time.sleep(1)
            nodes[victim].start()
            # kill -9 of a node that has just claimed a job
            held = _kill_holder(nodes, url, "SELECT owner FROM jobs WHERE state = 'running'",
                                "holding a job it has just claimed", killed, timeout=60)
            for node in nodes:
                if not node.up:
                    node.start()
            # kill -9 of a node classifying a job
            inferring = _kill_holder(
                nodes, url, "SELECT owner FROM jobs WHERE state = 'running'",
                "classifying a job", killed, timeout=60, delay=rng.uniform(0.05, 0.2))
            # PostgreSQL restarted mid-run: the nodes answer 0xA700 meanwhile
            postgres.stop("fast")
            time.sleep(2)
            postgres.start()
            for node in nodes:
                if not node.up:
                    node.start()
            # kill -9 between sending a delivery and recording it
            sending = _kill_holder(
                nodes, url,
                "SELECT owner FROM deliveries WHERE owner IS NOT NULL AND state = 'pending'",
                "sending a delivery", killed, timeout=90)
            assert held is not None or inferring is not None or sending is not None
            for node in nodes:
                if not node.up:
                    node.start()
            wait_until(sender.done.is_set, timeout=300, what="every instance acknowledged")

            def settled() -> bool:
                rows = _rows_or_none(
                    url, "SELECT (SELECT COUNT(*) FROM studies WHERE state != 'reported'),"
                    " (SELECT COUNT(*) FROM deliveries WHERE state != 'delivered'),"
                    " (SELECT COUNT(*) FROM studies)")
                return rows is not None and rows[0] == (0, 0, STUDIES)

            wait_until(settled, timeout=300, what="every study reported and delivered")
        finally:
            sender.stop.set()
            thread.join(timeout=30)
            logs = {n.name: (tmp_path / n.name / "ossa.log").read_text(errors="replace")
                    for n in nodes}
            for node in nodes:
                if node.served is not None:
                    node.served.stop()
                    node.served = None

    # Every acknowledged instance is in the store and on the shared disk.
    every = {str(ds.SOPInstanceUID) for batch in studies.values() for ds in batch}
    assert sender.acked == every
    stored = dict(_rows(url, "SELECT sop_uid, path FROM instances WHERE state = 'stored'"))
    assert set(stored) == every
    assert all((root / path).is_file() for path in stored.values())
    # C-STORE answered success, or Out of Resources while PostgreSQL was down (or nothing,
    # from a node killed mid-association); never anything else.
    assert set(sender.statuses) <= {0, int(StoreStatus.OUT_OF_RESOURCES), None}
    assert int(StoreStatus.OUT_OF_RESOURCES) in sender.statuses  # while PostgreSQL was down

    # Each study: one job, done, over all its instances; one SR at the destination. Unless
    # the faults stalled the sender between two instances of a study for longer than the
    # quiet time: the study was then complete and reported, and the late instances make a
    # revision that supersedes it (the documented behaviour), its SR covering them all.
    received: dict[str, list[Dataset]] = {}
    for path in out.iterdir():
        ds = pydicom.dcmread(path)
        if ds.Modality == "SR":
            received.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    copies = stalled = 0
    for study_uid, batch in studies.items():
        jobs = _rows(url, "SELECT j.state FROM jobs j JOIN studies s ON s.id = j.study_id"
                          " WHERE s.study_uid = %s ORDER BY j.revision", (study_uid,))
        times = sorted(sender.acked_at[str(ds.SOPInstanceUID)] for ds in batch)
        gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        revisions = len(jobs) if gap > 0.9 * COMPLETION_S else 1
        stalled += revisions > 1
        assert jobs == [("done",)] * revisions, (
            f"seed {seed}: study {study_uid}: jobs {jobs} (longest gap {gap:.1f} s)")
        srs = received.get(study_uid, [])
        by_uid = {str(sr.SOPInstanceUID): sr for sr in srs}
        assert len(by_uid) == revisions, f"seed {seed}: study {study_uid}: {len(srs)} SRs"
        final = max(by_uid.values(), key=lambda sr: int(sr.get("InstanceNumber", 1) or 1))
        assert evidence_sop_uids(final) == {str(ds.SOPInstanceUID) for ds in batch}
        copies += len(srs) - revisions

    # A job was taken over only from a node that had been killed.
    taken_from = {m for log in logs.values()
                  for m in re.findall(r"the lease of node (\S+) expired", log)}
    assert taken_from <= set(killed), f"seed {seed}: taken from live nodes {taken_from}"
    # The fast node's clock changed nothing: every time the store holds is the server's.
    ((latest,),) = _rows(url, "SELECT MAX(last_received) FROM studies")
    ((now,),) = _rows(url, "SELECT EXTRACT(EPOCH FROM now())::float8")
    assert latest <= now + 1
    logger.info("cluster test: seed %d, killed %s, jobs taken over from %s, %d duplicate SR "
                "copies at the destination (a delivery re-sent after a kill between send and"
                " record), %d studies split by a sender stalled past the quiet time", seed,
                killed, sorted(taken_from), copies, stalled)
    counts = {status: sender.statuses.count(status) for status in set(sender.statuses)}
    print(f"seed={seed} killed={killed} taken_over_from={sorted(taken_from)} "
          f"duplicate_copies={copies} statuses={counts}")
