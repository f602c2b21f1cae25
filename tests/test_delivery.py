"""worker.delivery: retry policy, permanent failures, and the outbox against real peers."""

from __future__ import annotations

import io
import random
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid
from pynetdicom import AE, evt

from dicom_io.derived import encode_file
from dicom_io.send import SendOutcome, SendResult
from harness.peers import Orthanc, free_port, wait_until
from tests.conftest import T0, FakeClock
from tests.test_stow import ORTHANC_PASSWORD, ORTHANC_USER, AuthOrthanc, ossa_sr, secret_file
from worker.config import DeliveryConfig, DimseDestination, StowRsDestination
from worker.delivery import (
    DeliveryWorker,
    DimseSender,
    RetryPolicy,
    StowRsSender,
    is_permanent,
    make_sender,
)
from worker.spool import Spool
from worker.store import NewObject, StateStore

# --- helpers shared with test_handlers and test_admin -------------------------------------


def record_object(
    store: StateStore, spool: Spool, ds: Dataset, destinations: Sequence[str]
) -> str:
    """Record ``ds`` as an object Ossa produced for its study, pending to ``destinations``.

    Goes through the store as the service does: an instance of the study is received, the
    study is scheduled and claimed, the object's file is written durably and the job is
    finished with the object and its deliveries.

    Returns
    -------
    str
        The object's path relative to the storage root.
    """
    study_uid = str(ds.StudyInstanceUID)
    source_uid = generate_uid()
    store.add_instance(
        calling_aet="MODALITY",
        study_uid=study_uid,
        sop_uid=source_uid,
        sop_class_uid=ComputedRadiographyImageStorage,
        series_uid=generate_uid(),
        path=spool.instance_path("MODALITY", study_uid, source_uid),
        size=0,
    )
    store.schedule_due(0.0, max_queued=100)
    (job,) = store.claim_jobs(1)
    assert job.study_uid == study_uid
    path = spool.object_path(study_uid, str(ds.SOPInstanceUID))
    spool.write(path, encode_file(ds))
    store.finish_job(
        job.job_id,
        objects=[
            NewObject(
                kind="sr",
                sop_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                series_uid=str(ds.SeriesInstanceUID),
                path=path,
            )
        ],
        destinations=list(destinations),
    )
    return path


def delivery_rows(store: StateStore) -> dict[str, dict[str, Any]]:
    """Every delivery of the store by destination, read through a connection of our own."""
    with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM deliveries").fetchall()
    return {row["destination"]: dict(row) for row in rows}




@dataclass
class Outbox:
    """A state store on a fake clock and a spool, both under one storage root."""

    store: StateStore
    spool: Spool
    clock: FakeClock
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(
        self,
        destination: DimseDestination,
        policy: RetryPolicy,
        *,
        rng: random.Random | None = None,
    ) -> DeliveryWorker:
        """A worker delivering to ``destination``."""
        sender = DimseSender(destination, calling_ae_title="OSSA")
        return DeliveryWorker(
            sender, self.store, self.spool, policy, self.stop, poll_interval_s=0.2,
            rng=rng or random.Random(0),
        )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    clock = FakeClock()
    root = tmp_path / "var"
    store = StateStore.in_root(root, clock=clock)
    yield Outbox(store, Spool(root), clock)
    store.close()


class _Top(random.Random):
    """A jitter source that always draws the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Bottom(random.Random):
    """A jitter source that always draws the bottom of the range."""

    def uniform(self, a: float, b: float) -> float:
        return a


POLICY = RetryPolicy(initial_interval_s=10.0, max_interval_s=300.0, give_up_after_s=3600.0)


# --- RetryPolicy ------------------------------------------------------------------------


def test_delay_doubles_until_the_cap() -> None:
    top = [POLICY.delay(n, _Top()) for n in range(1, 9)]
    assert top == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    bottom = [POLICY.delay(n, _Bottom()) for n in range(1, 7)]
    assert bottom == [5.0, 10.0, 20.0, 40.0, 80.0, 150.0]


def test_delay_of_many_attempts_stays_at_the_cap() -> None:
    assert POLICY.delay(10_000, _Top()) == 300.0


def test_jitter_lies_between_half_and_all_of_the_wait() -> None:
    rng = random.Random(1234)
    for attempts, base in ((1, 10.0), (3, 40.0), (9, 300.0)):
        delays = [POLICY.delay(attempts, rng) for _ in range(500)]
        assert all(base / 2 <= d <= base for d in delays)
        # Jittered, not constant: the draws cover most of the range.
        assert min(delays) < base * 0.55 and max(delays) > base * 0.95


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    assert POLICY.delay(4, random.Random(7)) == POLICY.delay(4, random.Random(7))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_interval_s": 0.0, "max_interval_s": 10.0, "give_up_after_s": 60.0},
         "initial_interval_s must be > 0"),
        ({"initial_interval_s": 1.0, "max_interval_s": -1.0, "give_up_after_s": 60.0},
         "max_interval_s must be > 0"),
        ({"initial_interval_s": 1.0, "max_interval_s": 10.0, "give_up_after_s": 0.0},
         "give_up_after_s must be > 0"),
        ({"initial_interval_s": 20.0, "max_interval_s": 10.0, "give_up_after_s": 60.0},
         "initial_interval_s must not exceed max_interval_s"),
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("attempts", [0, -1])
def test_delay_needs_a_failed_attempt(attempts: int) -> None:
    with pytest.raises(ValueError, match="failed_attempts must be >= 1"):
        POLICY.delay(attempts, random.Random(0))


def test_policy_from_config() -> None:
    config = DeliveryConfig(
        retry_initial_interval_s=5, retry_max_interval_s=60, give_up_after_s=600
    )
    assert RetryPolicy.from_config(config) == RetryPolicy(5.0, 60.0, 600.0)
    assert RetryPolicy.from_config(DeliveryConfig()) == RetryPolicy(10.0, 300.0, 86400.0)


# --- is_permanent -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "status", "permanent"),
    [
        (SendOutcome.REFUSED, 0xC000, True),  # Cannot understand
        (SendOutcome.REFUSED, 0xA900, True),  # Data set does not match SOP Class
        (SendOutcome.REFUSED, 0x0122, True),  # SOP Class not supported
        (SendOutcome.REFUSED, None, True),
        (SendOutcome.REFUSED, 0xA700, False),  # Out of resources
        (SendOutcome.REFUSED, 0xA7FF, False),
        (SendOutcome.REFUSED, 0xA800, True),
        (SendOutcome.UNREACHABLE, None, False),
        (SendOutcome.ABORTED, None, False),
        (SendOutcome.REJECTED, None, False),
        (SendOutcome.SUCCESS, 0x0000, False),
    ],
)
def test_is_permanent(outcome: SendOutcome, status: int | None, permanent: bool) -> None:
    assert is_permanent(SendResult(outcome, status, "detail")) is permanent


# --- DeliveryWorker ---------------------------------------------------------------------


def test_delivers_to_dcmtk_storescp(
    outbox: Outbox, storescp: tuple[int, Path], make_radiograph: Callable[..., Dataset]
) -> None:
    port, out = storescp
    ds = make_radiograph()
    record_object(outbox.store, outbox.spool, ds, ["archive"])
    worker = outbox.worker(
        DimseDestination(name="archive", ae_title="STORESCP", host="127.0.0.1", port=port,
                         timeout_s=10),
        POLICY,
    )
    assert worker.name == "archive"
    assert worker.run_once() is True

    row = delivery_rows(outbox.store)["archive"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("delivered", 1, "success")
    assert row["last_attempt"] == T0
    assert outbox.store.summary().deliveries == {"archive": {"delivered": 1}}
    files = wait_until(lambda: list(out.iterdir()), timeout=10, what="storescp to write")
    received = pydicom.dcmread(files[0])  # type: ignore[index]
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert received.PixelData == ds.PixelData
    assert worker.run_once() is False  # nothing else is due


@pytest.fixture
def picky_scp() -> Iterator[tuple[int, dict[str, int], list[str]]]:
    """An in-process Storage SCP answering ``answer["status"]``; the SOP UIDs it was sent."""
    answer = {"status": 0xC000}
    received: list[str] = []

    def handle(event: evt.Event) -> Dataset:
        received.append(str(event.dataset.SOPInstanceUID))
        status = Dataset()
        status.Status = answer["status"]
        if answer["status"]:
            status.ErrorComment = "cannot parse"
        return status

    ae = AE(ae_title="PICKY")
    ae.add_supported_context(ComputedRadiographyImageStorage)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    assert server is not None
    yield port, answer, received
    server.shutdown()


def test_refusal_fails_at_once_until_retried(
    outbox: Outbox,
    picky_scp: tuple[int, dict[str, int], list[str]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    port, answer, received = picky_scp
    ds = make_radiograph()
    record_object(outbox.store, outbox.spool, ds, ["picky"])
    worker = outbox.worker(
        DimseDestination(name="picky", ae_title="PICKY", host="127.0.0.1", port=port,
                         timeout_s=10),
        POLICY,
    )
    assert worker.run_once() is True

    row = delivery_rows(outbox.store)["picky"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("failed", 1, "refused")
    assert "0xC000 (Failure: Cannot Understand)" in row["last_detail"]
    assert "cannot parse" not in row["last_detail"]  # the peer's Error Comment is left out
    (failed,) = outbox.store.summary().failed
    assert (failed.study_uid, failed.sop_uid, failed.destination) == (
        ds.StudyInstanceUID, ds.SOPInstanceUID, "picky")
    outbox.clock.advance(POLICY.give_up_after_s / 2)
    assert worker.run_once() is False  # a failed delivery is not retried by itself
    assert received == [ds.SOPInstanceUID]

    answer["status"] = 0x0000  # the PACS is fixed
    assert outbox.store.retry(destination="picky") == 1
    assert worker.run_once() is True
    row = delivery_rows(outbox.store)["picky"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("delivered", 2, "success")
    assert received == [ds.SOPInstanceUID, ds.SOPInstanceUID]
    assert outbox.store.summary().failed == ()


def test_out_of_resources_is_retried(
    outbox: Outbox,
    picky_scp: tuple[int, dict[str, int], list[str]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    port, answer, _ = picky_scp
    answer["status"] = 0xA700
    record_object(outbox.store, outbox.spool, make_radiograph(), ["picky"])
    worker = outbox.worker(
        DimseDestination(name="picky", ae_title="PICKY", host="127.0.0.1", port=port,
                         timeout_s=10),
        POLICY, rng=_Top(),
    )
    assert worker.run_once() is True
    row = delivery_rows(outbox.store)["picky"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("pending", 1, "refused")
    assert row["next_attempt"] == T0 + 10.0


def test_unreachable_destination_backs_off_then_gives_up(
    outbox: Outbox, make_radiograph: Callable[..., Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_radiograph()
    record_object(outbox.store, outbox.spool, ds, ["dead"])
    worker = outbox.worker(
        DimseDestination(name="dead", ae_title="PACS", host="127.0.0.1", port=free_port(),
                         timeout_s=3),
        POLICY, rng=random.Random(42),
    )
    first_delay = POLICY.delay(1, random.Random(42))
    assert worker.run_once() is True

    row = delivery_rows(outbox.store)["dead"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("pending", 1, "unreachable")
    assert row["next_attempt"] == pytest.approx(T0 + first_delay)
    assert T0 + 5.0 <= row["next_attempt"] <= T0 + 10.0
    assert outbox.store.next_attempt("dead") == row["next_attempt"]
    assert worker.run_once() is False  # not due yet

    outbox.clock.now = row["next_attempt"]
    assert worker.run_once() is True
    row = delivery_rows(outbox.store)["dead"]
    assert (row["state"], row["attempts"]) == ("pending", 2)
    assert outbox.clock.now + 10.0 <= row["next_attempt"] <= outbox.clock.now + 20.0

    outbox.clock.now = row["queued_at"] + POLICY.give_up_after_s + 1.0
    with caplog.at_level("ERROR", logger="worker.delivery"):
        assert worker.run_once() is True
    row = delivery_rows(outbox.store)["dead"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("failed", 3, "unreachable")
    assert "gave up after 3 attempts" in caplog.text
    (failed,) = outbox.store.summary().failed
    assert (failed.sop_uid, failed.destination, failed.attempts) == (ds.SOPInstanceUID, "dead", 3)
    outbox.clock.advance(10 * POLICY.max_interval_s)
    assert worker.run_once() is False


@dataclass
class _Watched:
    """A sender that notes when a send starts."""

    sender: DimseSender
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.sender.name

    def send(self, dataset: Dataset) -> SendResult:
        self.started.set()
        return self.sender.send(dataset)


def test_blackholed_destination_does_not_delay_another(
    outbox: Outbox, storescp: tuple[int, Path], make_radiograph: Callable[..., Dataset]
) -> None:
    port, out = storescp
    blackhole_timeout_s = 6.0
    with socket.socket() as blackhole:  # the kernel completes TCP; nobody ever answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        hole_port = blackhole.getsockname()[1]
        record_object(outbox.store, outbox.spool, make_radiograph(), ["hole", "good"])
        hole = _Watched(DimseSender(
            DimseDestination(name="hole", ae_title="PACS", host="127.0.0.1", port=hole_port,
                             timeout_s=blackhole_timeout_s),
            calling_ae_title="OSSA",
        ))
        good = DimseSender(
            DimseDestination(name="good", ae_title="STORESCP", host="127.0.0.1", port=port,
                             timeout_s=10),
            calling_ae_title="OSSA",
        )
        workers = [
            DeliveryWorker(sender, outbox.store, outbox.spool, POLICY, outbox.stop,
                           poll_interval_s=0.2, rng=random.Random(0))
            for sender in (hole, good)
        ]
        threads = [threading.Thread(target=w.run, name=f"deliver-{w.name}") for w in workers]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: hole.started.is_set(), timeout=5, what="the blackholed attempt")
            wait_until(
                lambda: delivery_rows(outbox.store)["good"]["state"] == "delivered",
                timeout=blackhole_timeout_s - 1, what="the good destination's delivery",
            )
            # The blackholed attempt is still in progress: nothing recorded for it yet.
            rows = delivery_rows(outbox.store)
            assert (rows["hole"]["state"], rows["hole"]["attempts"]) == ("pending", 0)
            assert len(list(out.iterdir())) == 1
            # ...and it ends as a failed attempt of its own, to be retried later.
            wait_until(
                lambda: delivery_rows(outbox.store)["hole"]["attempts"] == 1,
                timeout=blackhole_timeout_s + 10, what="the blackholed attempt to time out",
            )
            row = delivery_rows(outbox.store)["hole"]
            assert (row["state"], row["last_outcome"]) == ("pending", "unreachable")
            assert delivery_rows(outbox.store)["good"]["attempts"] == 1
        finally:
            outbox.stop.set()
            for worker in workers:
                worker.wake.set()
            for thread in threads:
                thread.join(timeout=blackhole_timeout_s + 5)
        assert not any(thread.is_alive() for thread in threads)


@dataclass
class _Recording:
    """A sender that records what it was asked to send and always succeeds."""

    name: str = "archive"
    sent: list[str] = field(default_factory=list)

    def send(self, dataset: Dataset) -> SendResult:
        self.sent.append(str(dataset.SOPInstanceUID))
        return SendResult(SendOutcome.SUCCESS, 0, "stored")


def test_missing_object_file_fails_as_lost(
    outbox: Outbox, make_radiograph: Callable[..., Dataset]
) -> None:
    path = record_object(outbox.store, outbox.spool, make_radiograph(), ["archive"])
    outbox.spool.remove(path)
    sender = _Recording()
    worker = DeliveryWorker(sender, outbox.store, outbox.spool, POLICY, outbox.stop)
    assert worker.run_once() is True
    row = delivery_rows(outbox.store)["archive"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("failed", 1, "lost")
    assert "FileNotFoundError" in row["last_detail"]
    assert sender.sent == []
    assert worker.run_once() is False


def test_run_delivers_when_woken_and_stops(
    outbox: Outbox, make_radiograph: Callable[..., Dataset]
) -> None:
    sender = _Recording()
    worker = DeliveryWorker(sender, outbox.store, outbox.spool, POLICY, outbox.stop,
                            poll_interval_s=30.0)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        ds = make_radiograph()
        record_object(outbox.store, outbox.spool, ds, ["archive"])
        worker.wake.set()  # a report was recorded: no need to wait for the next poll
        wait_until(lambda: sender.sent, timeout=10, what="the woken worker to deliver")
        assert sender.sent == [ds.SOPInstanceUID]
        wait_until(lambda: delivery_rows(outbox.store)["archive"]["state"] == "delivered",
                   timeout=10, what="the delivery to be recorded")
    finally:
        outbox.stop.set()
        worker.wake.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_damaged_object_file_fails_without_blocking_the_next(
    outbox: Outbox, make_radiograph: Callable[..., Dataset]
) -> None:
    damaged, intact = make_radiograph(), make_radiograph()
    path = record_object(outbox.store, outbox.spool, damaged, ["archive"])
    record_object(outbox.store, outbox.spool, intact, ["archive"])
    # Cut short after the File Meta Information: pydicom still reads it, as an empty data set.
    outbox.spool.write(path, encode_file(damaged)[:300])
    sender = _Recording()
    worker = DeliveryWorker(sender, outbox.store, outbox.spool, POLICY, outbox.stop)

    assert worker.run_once() is True
    (failed,) = outbox.store.summary().failed
    assert (failed.sop_uid, failed.last_outcome) == (damaged.SOPInstanceUID, "lost")
    assert failed.last_detail is not None and "damaged" in failed.last_detail
    assert sender.sent == []

    assert worker.run_once() is True
    assert sender.sent == [intact.SOPInstanceUID]
    assert outbox.store.summary().deliveries == {"archive": {"failed": 1, "delivered": 1}}


# --- STOW-RS destinations ---------------------------------------------------------------


def test_make_sender_by_destination_type() -> None:
    dimse = DimseDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)
    web = StowRsDestination(name="web", type="stowrs", url="https://pacs.example.org/dicom-web")
    assert make_sender(dimse, calling_ae_title="OSSA") == DimseSender(dimse, "OSSA")
    assert make_sender(web, calling_ae_title="OSSA") == StowRsSender(web)
    assert make_sender(web, calling_ae_title="OSSA").name == "web"


def test_stow_rs_destination_the_peer_refuses_is_a_refusal(
    make_radiograph: Callable[..., Dataset],
) -> None:
    # The configuration refuses a port out of range; a destination built without validation
    # still does not make the send raise: it says so.
    web = StowRsDestination.model_construct(
        name="web", type="stowrs", url="http://127.0.0.1:99999/dicom-web", auth="none",
        username=None, secret_file=None, secret_env=None, verify_tls=True, ca_bundle=None,
        timeout_s=30.0,
    )
    result = StowRsSender(web).send(make_radiograph())
    assert result == SendResult(
        SendOutcome.REFUSED, None,
        "destination web: url must be an http:// or https:// URL with a host and valid port",
    )
    assert is_permanent(result)


@pytest.mark.parametrize(
    ("outcome", "status", "http_status", "permanent"),
    [
        (SendOutcome.REFUSED, None, 401, True),
        (SendOutcome.REFUSED, None, 404, True),
        (SendOutcome.REFUSED, 0xA900, 409, True),  # Failure Reason: does not match SOP Class
        (SendOutcome.REFUSED, 0xA700, 409, False),  # Failure Reason: out of resources
        (SendOutcome.REFUSED, None, None, True),  # no usable secret
        (SendOutcome.ABORTED, None, 429, False),
        (SendOutcome.UNREACHABLE, None, 503, False),
        (SendOutcome.UNREACHABLE, None, None, False),  # TLS verification failed
        (SendOutcome.WARNING, 0xB000, 202, False),
    ],
)
def test_is_permanent_of_http_results(
    outcome: SendOutcome, status: int | None, http_status: int | None, permanent: bool
) -> None:
    result = SendResult(outcome, status, "detail", http_status=http_status)
    assert is_permanent(result) is permanent


@pytest.fixture(scope="module")
def auth_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthOrthanc]:
    """An Orthanc with HTTP Basic authentication, for this module."""
    peer = AuthOrthanc(tmp_path_factory.mktemp("orthanc-auth"), free_port())
    yield peer
    peer.stop()


def _stow_worker(outbox: Outbox, destination: StowRsDestination) -> DeliveryWorker:
    return DeliveryWorker(make_sender(destination, calling_ae_title="OSSA"), outbox.store,
                          outbox.spool, POLICY, outbox.stop, rng=_Top())


def test_delivers_an_sr_to_orthanc_with_stow_rs(
    outbox: Outbox, orthanc: Orthanc, make_radiograph: Callable[..., Dataset]
) -> None:
    sr = ossa_sr(make_radiograph())
    path = record_object(outbox.store, outbox.spool, sr, ["web"])
    worker = _stow_worker(
        outbox, StowRsDestination(name="web", type="stowrs", url=orthanc.url + "/dicom-web")
    )
    assert worker.run_once() is True

    row = delivery_rows(outbox.store)["web"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("delivered", 1, "success")
    assert row["last_detail"] == f"{orthanc.url}/dicom-web answered HTTP 200 OK: stored"
    assert orthanc.sr_sop_uids(str(sr.StudyInstanceUID)) == [sr.SOPInstanceUID]
    (item,) = orthanc.instances_of_study(str(sr.StudyInstanceUID))
    back = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{item['ID']}/file")))
    assert back == pydicom.dcmread(outbox.spool.path(path))
    assert worker.run_once() is False


def test_stow_rs_wrong_password_fails_at_once_until_fixed(
    outbox: Outbox, auth_orthanc: AuthOrthanc, make_radiograph: Callable[..., Dataset],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    sr = ossa_sr(make_radiograph())
    record_object(outbox.store, outbox.spool, sr, ["web"])
    wrong = "wr0ng-pa55"
    destination = StowRsDestination(
        name="web", type="stowrs", url=auth_orthanc.url + "/dicom-web", auth="basic",
        username=ORTHANC_USER, secret_file=secret_file(tmp_path, wrong), timeout_s=10,
    )
    worker = _stow_worker(outbox, destination)
    with caplog.at_level("DEBUG"):
        assert worker.run_once() is True
    row = delivery_rows(outbox.store)["web"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("failed", 1, "refused")
    assert row["last_detail"] == (
        f"{auth_orthanc.url}/dicom-web answered HTTP 401 Unauthorized (credentials refused)")
    assert "refused by the destination" in caplog.text
    assert wrong not in caplog.text and wrong not in row["last_detail"]
    outbox.clock.advance(POLICY.give_up_after_s / 2)
    assert worker.run_once() is False  # not retried by itself

    secret_file(tmp_path, ORTHANC_PASSWORD)  # the operator fixes the secret, then retries
    assert outbox.store.retry(destination="web") == 1
    assert worker.run_once() is True
    row = delivery_rows(outbox.store)["web"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("delivered", 2, "success")
    assert sr.SOPInstanceUID in auth_orthanc.sop_uids()


def test_stow_rs_unreachable_destination_stays_pending(
    outbox: Outbox, make_radiograph: Callable[..., Dataset]
) -> None:
    record_object(outbox.store, outbox.spool, ossa_sr(make_radiograph()), ["web"])
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    worker = _stow_worker(outbox, StowRsDestination(name="web", type="stowrs", url=url,
                                                    timeout_s=5))
    assert worker.run_once() is True
    row = delivery_rows(outbox.store)["web"]
    assert (row["state"], row["attempts"], row["last_outcome"]) == ("pending", 1, "unreachable")
    assert row["last_detail"] == f"{url}: Connection refused"
    assert row["next_attempt"] == T0 + 10.0
