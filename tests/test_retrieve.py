"""dicom_io.retrieve against an in-process pynetdicom Query/Retrieve SCP that refuses.

The result names the final status and its meaning (PS3.4 C.4.2.1.5, C.4.3.1.4), never the
PACS's Error Comment: that is free text, and a PACS may put a patient's name in it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_io.retrieve import c_get_study, c_move_study
from dicom_io.send import DimsePeer, SendOutcome
from harness.peers import free_port

#: What the refusing PACS writes in its Error Comment: a patient's name and ID.
COMMENT = "DOE^JANE 12345 not found"
STUDY_UID = "1.2.826.0.1.3680043.8.498.777"


def _refusal(code: int) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = COMMENT
    status.NumberOfFailedSuboperations = 2
    return status


@pytest.fixture
def refusing_pacs() -> Iterator[int]:
    """A Q/R SCP answering every C-MOVE with 0xA801 (Move Destination unknown) and every
    C-GET with 0xA701 (Out of resources), each with :data:`COMMENT`; its port."""

    # The move destination: pynetdicom associates with it before the first sub-operation.
    destination = AE(ae_title="OSSA")
    destination.add_supported_context(ComputedRadiographyImageStorage)
    destination_port = free_port()
    receiver = destination.start_server(("127.0.0.1", destination_port), block=False)

    def move(event: evt.Event) -> Iterator[object]:
        yield "127.0.0.1", destination_port
        yield 2  # sub-operations (pynetdicom's handler protocol)
        yield _refusal(0xA801), None

    def get(event: evt.Event) -> Iterator[object]:
        yield 2
        yield _refusal(0xA701), None

    ae = AE(ae_title="PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_MOVE, move), (evt.EVT_C_GET, get)])
    assert server is not None
    yield port
    server.shutdown()
    receiver.shutdown()


def test_refused_c_move_names_the_status_not_the_comment(
    refusing_pacs: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = c_move_study(DimsePeer("PACS", "127.0.0.1", refusing_pacs), STUDY_UID,
                          calling_ae_title="OSSA", move_destination="OSSA")
    assert result.outcome is SendOutcome.REFUSED and result.status == 0xA801
    assert result.detail.endswith(
        "answered C-MOVE to OSSA with 0xA801 (Failure: Move destination unknown): "
        "0 completed, 2 failed, 0 with warnings"), result.detail
    assert "DOE" not in result.detail and "12345" not in result.detail
    assert STUDY_UID in caplog.text and "DOE" not in caplog.text


def test_refused_c_get_names_the_status_not_the_comment(
    refusing_pacs: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = c_get_study(DimsePeer("PACS", "127.0.0.1", refusing_pacs), STUDY_UID,
                         calling_ae_title="OSSA", storage=[], store_handler=lambda e: 0)
    assert result.outcome is SendOutcome.REFUSED and result.status == 0xA701
    assert "answered C-GET with 0xA701 (Failure: Refused: Out of resources, unable to " \
           "calculate number of matches)" in result.detail, result.detail
    assert "DOE" not in result.detail and "12345" not in result.detail
    assert STUDY_UID in caplog.text and "DOE" not in caplog.text


def test_the_pacs_does_send_its_comment(refusing_pacs: int) -> None:
    """The control of the two tests above: the comment they never find does reach the SCU."""
    ae = AE(ae_title="OSSA")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", refusing_pacs, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = STUDY_UID
    try:
        final = [status for status, _ in assoc.send_c_move(
            identifier, "OSSA", StudyRootQueryRetrieveInformationModelMove)][-1]
    finally:
        assoc.release()
    assert final.Status == 0xA801 and final.ErrorComment == COMMENT
