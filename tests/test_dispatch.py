"""worker.dispatch: every destination, bounded retries."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE, evt

from dicom_io.send import SendOutcome
from tests.conftest import free_port
from worker.config import DimseDestination
from worker.dispatch import Dispatcher


class FlakyScp:
    """A Storage SCP that refuses the first ``failures`` requests, then stores."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="FLAKY")
        ae.add_supported_context(ComputedRadiographyImageStorage)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle)]
        )

    def handle(self, event: evt.Event) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            return 0xA700
        self.received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    def destination(self, name: str) -> DimseDestination:
        return DimseDestination(name=name, ae_title="FLAKY", host="127.0.0.1", port=self.port)


@pytest.fixture
def scps() -> Iterator[Callable[[int], FlakyScp]]:
    started: list[FlakyScp] = []

    def _start(failures: int) -> FlakyScp:
        scp = FlakyScp(failures)
        started.append(scp)
        return scp

    yield _start
    for scp in started:
        scp.server.shutdown()


def test_sends_to_every_destination_and_retries(
    scps: Callable[[int], FlakyScp], make_radiograph: Callable[..., Dataset]
) -> None:
    steady, flaky = scps(0), scps(2)
    dispatcher = Dispatcher(
        [steady.destination("a"), flaky.destination("b")],
        calling_ae_title="OSSA",
        attempts=3,
        backoff_s=0.01,
    )
    ds = make_radiograph()
    results = dispatcher.dispatch(ds)
    assert set(results) == {"a", "b"}
    assert all(r.ok for r in results.values())
    assert steady.received == [ds.SOPInstanceUID]
    assert flaky.calls == 3 and flaky.received == [ds.SOPInstanceUID]


def test_gives_up_after_attempts(
    scps: Callable[[int], FlakyScp], make_radiograph: Callable[..., Dataset]
) -> None:
    broken = scps(10)
    dispatcher = Dispatcher(
        [broken.destination("pacs")], calling_ae_title="OSSA", attempts=2, backoff_s=0.01
    )
    result = dispatcher.dispatch(make_radiograph())["pacs"]
    assert result.outcome is SendOutcome.REFUSED and result.status == 0xA700
    assert broken.calls == 2


def test_stop_event_cuts_retries_short(
    scps: Callable[[int], FlakyScp], make_radiograph: Callable[..., Dataset]
) -> None:
    broken = scps(10)
    stop = threading.Event()
    stop.set()
    dispatcher = Dispatcher(
        [broken.destination("pacs")], calling_ae_title="OSSA", attempts=5, backoff_s=30, stop=stop
    )
    assert not dispatcher.dispatch(make_radiograph())["pacs"].ok
    assert broken.calls == 1


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="attempts"):
        Dispatcher([], calling_ae_title="OSSA", attempts=0)
