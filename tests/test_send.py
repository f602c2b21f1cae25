"""dicom_io.send: C-STORE SCU against DCMTK storescp and misbehaving peers."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import QR_MOVE_SERVICE_CLASS_STATUS, STORAGE_SERVICE_CLASS_STATUS

from dicom_io.send import DimsePeer, SendOutcome, send_c_echo, send_c_store, status_detail
from harness.peers import free_port, wait_until


def test_success_against_dcmtk_storescp(
    storescp: tuple[int, Path], make_radiograph: Callable[..., Dataset]
) -> None:
    port, out = storescp
    ds = make_radiograph()
    result = send_c_store(ds, DimsePeer("STORESCP", "127.0.0.1", port), calling_ae_title="OSSA")
    assert result.ok and result.outcome is SendOutcome.SUCCESS and result.status == 0
    files = wait_until(lambda: list(out.iterdir()), timeout=10, what="storescp to write")
    assert pydicom.dcmread(files[0]).SOPInstanceUID == ds.SOPInstanceUID  # type: ignore[index]


def test_failure_status_is_refused(make_radiograph: Callable[..., Dataset]) -> None:
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(ComputedRadiographyImageStorage)
    port = free_port()

    def refuse(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = 0xA700
        status.ErrorComment = "DOE^JANE: disk full"  # a peer's free text, may name a patient
        return status

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)]
    )
    assert server is not None
    try:
        result = send_c_store(
            make_radiograph(), DimsePeer("PICKY", "127.0.0.1", port), calling_ae_title="OSSA"
        )
    finally:
        server.shutdown()
    assert not result.ok
    assert result.outcome is SendOutcome.REFUSED
    assert result.status == 0xA700
    # The code's meaning (PS3.4 B.2.3), not the peer's Error Comment.
    assert result.detail.endswith("answered 0xA700 (Failure: Refused: Out of Resources)")
    assert "DOE" not in result.detail and "disk full" not in result.detail


def test_association_rejected(make_radiograph: Callable[..., Dataset]) -> None:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComputedRadiographyImageStorage)
    ae.require_calling_aet = ["SOMEONE"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        result = send_c_store(
            make_radiograph(), DimsePeer("PACS", "127.0.0.1", port), calling_ae_title="OSSA"
        )
    finally:
        server.shutdown()
    assert result.outcome is SendOutcome.REJECTED
    assert not result.ok


def test_unreachable_peer(make_radiograph: Callable[..., Dataset]) -> None:
    port = free_port()  # nothing listens there
    result = send_c_store(
        make_radiograph(),
        DimsePeer("PACS", "127.0.0.1", port, timeout_s=2),
        calling_ae_title="OSSA",
    )
    assert result.outcome is SendOutcome.UNREACHABLE
    assert f"127.0.0.1:{port}" in result.detail


def test_silent_peer_times_out(make_radiograph: Callable[..., Dataset]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts TCP in the kernel, never answers A-ASSOCIATE
        port = listener.getsockname()[1]
        result = send_c_store(
            make_radiograph(),
            DimsePeer("PACS", "127.0.0.1", port, timeout_s=1),
            calling_ae_title="OSSA",
        )
    assert not result.ok
    assert result.outcome is SendOutcome.UNREACHABLE


def test_peer_validation() -> None:
    with pytest.raises(ValueError, match="port"):
        DimsePeer("PACS", "127.0.0.1", 0)
    with pytest.raises(ValueError, match="ae_title"):
        DimsePeer("A" * 17, "127.0.0.1", 104)


def test_echo_against_dcmtk_storescp(storescp: tuple[int, Path]) -> None:
    port, out = storescp
    result = send_c_echo(DimsePeer("STORESCP", "127.0.0.1", port), calling_ae_title="OSSA")
    assert result.ok and result.outcome is SendOutcome.SUCCESS and result.status == 0
    assert f"STORESCP@127.0.0.1:{port} answered 0x0000 (Success)" == result.detail
    assert list(out.iterdir()) == []  # a C-ECHO stores nothing


def test_echo_unreachable_peer() -> None:
    port = free_port()  # nothing listens there
    result = send_c_echo(DimsePeer("PACS", "127.0.0.1", port, timeout_s=2), calling_ae_title="OSSA")
    assert (result.outcome, result.status, result.ok) == (SendOutcome.UNREACHABLE, None, False)
    assert f"PACS@127.0.0.1:{port}" in result.detail


def test_echo_rejected_calling_ae_title() -> None:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["SOMEONE"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        result = send_c_echo(DimsePeer("PACS", "127.0.0.1", port), calling_ae_title="OSSA")
    finally:
        server.shutdown()
    assert (result.outcome, result.status, result.ok) == (SendOutcome.REJECTED, None, False)
    assert "rejected the association" in result.detail


def test_echo_to_a_peer_without_verification_is_rejected() -> None:
    ae = AE(ae_title="STOREONLY")
    ae.add_supported_context(ComputedRadiographyImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        result = send_c_echo(DimsePeer("STOREONLY", "127.0.0.1", port), calling_ae_title="OSSA")
    finally:
        server.shutdown()
    assert (result.outcome, result.status, result.ok) == (SendOutcome.REJECTED, None, False)
    assert result.detail == f"STOREONLY@127.0.0.1:{port} accepted no presentation context"


def test_sop_class_the_peer_does_not_store_is_rejected(
    make_radiograph: Callable[..., Dataset],
) -> None:
    ae = AE(ae_title="ECHOONLY")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        result = send_c_store(
            make_radiograph(), DimsePeer("ECHOONLY", "127.0.0.1", port), calling_ae_title="OSSA"
        )
    finally:
        server.shutdown()
    assert (result.outcome, result.status, result.ok) == (SendOutcome.REJECTED, None, False)
    assert result.detail == f"ECHOONLY@127.0.0.1:{port} accepted no presentation context"


def test_status_detail_names_the_meaning_of_the_code() -> None:
    assert status_detail(0xC000, STORAGE_SERVICE_CLASS_STATUS) == (
        "0xC000 (Failure: Cannot Understand)")
    assert status_detail(0xA701, QR_MOVE_SERVICE_CLASS_STATUS) == (
        "0xA701 (Failure: Refused: Out of resources, unable to calculate number of matches)")
    # a general status (PS3.7 Annex C)
    assert status_detail(0x0211, STORAGE_SERVICE_CLASS_STATUS) == (
        "0x0211 (Failure: Unrecognised Operation)")
    # a code no table defines: its category only
    assert status_detail(0xA123, STORAGE_SERVICE_CLASS_STATUS) == "0xA123 (Failure)"
