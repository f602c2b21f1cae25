"""C-STORE SCU: send one dataset to a DICOM peer and say clearly what happened.

Implements the SCU side of the Storage Service Class (PS3.4 B) over an association negotiated
per PS3.7 and PS3.8, over TCP or DICOM TLS (TLS 1.2 or later, :mod:`dicom_io.tls`). Every
outcome, including refusal, rejection, abort, timeouts and unusable TLS files, is a
:class:`SendResult` value; nothing raises for a network problem.

A peer's answer is described by its status code and that code's meaning in PS3.4 (for the
service and PS3.7 Annex C: :func:`status_detail`), never by the peer's Error
Comment (0000,0902): that is free text, and a PACS may put a patient's name or ID in it, so
it must not reach a log line or the state store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import (
    STORAGE_SERVICE_CLASS_STATUS,
    VERIFICATION_SERVICE_CLASS_STATUS,
    code_to_category,
)

from dicom_io.tls import ClientTls, TlsFileError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DimsePeer:
    """A remote Application Entity.

    Parameters
    ----------
    ae_title : str
        Called AE title, 1-16 characters.
    host : str
        Host name or IP address.
    port : int
        TCP port, 1-65535.
    timeout_s : float
        Used for the TCP connection (and TLS handshake), ACSE, DIMSE and network timeouts.
    tls : ClientTls, optional
        Connect with DICOM TLS; ``None`` (default) for plain TCP. The peer's certificate is
        verified, and also its host name unless ``tls.verify_hostname`` is false.
    """

    ae_title: str
    host: str
    port: int
    timeout_s: float = 30.0
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise ValueError(f"ae_title must be 1-16 characters, got {self.ae_title!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1-65535, got {self.port!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")


class SendOutcome(StrEnum):
    """What became of a C-STORE request."""

    SUCCESS = "success"
    WARNING = "warning"  # stored, with a warning status (PS3.4 B.2.3)
    REFUSED = "refused"  # the peer answered a failure status
    REJECTED = "rejected"  # association rejected or no presentation context accepted
    UNREACHABLE = "unreachable"  # no association: connection refused, timed out or aborted
    ABORTED = "aborted"  # no C-STORE response: aborted, or the DIMSE timeout expired


@dataclass(frozen=True)
class SendResult:
    """The result of one C-STORE (or STOW-RS, :mod:`dicom_io.stow`).

    Parameters
    ----------
    outcome : SendOutcome
        What happened.
    status : int or None
        The DIMSE status the peer returned, if any; for STOW-RS, the instance's Failure or
        Warning Reason (PS3.18 Table 10.5.3-1), which uses the same codes.
    detail : str
        A human-readable explanation (no patient data, no secret).
    http_status : int or None
        The HTTP status code of a DICOMweb answer; ``None`` for DIMSE or without an answer.
    """

    outcome: SendOutcome
    status: int | None
    detail: str
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the peer has the instance."""
        return self.outcome in (SendOutcome.SUCCESS, SendOutcome.WARNING)


def associate(
    peer: DimsePeer,
    calling_ae_title: str,
    contexts: list[tuple[str, list[str]]],
    *,
    ext_neg: list[Any] | None = None,
    evt_handlers: list[Any] | None = None,
) -> tuple[str, Association | SendResult]:
    """Request an association with ``peer``: a description of the peer, and the
    established association or the failure result. ``ext_neg`` and ``evt_handlers`` go to
    pynetdicom's ``AE.associate`` (SCP/SCU role selection and the C-STORE handler of a
    C-GET, :mod:`dicom_io.retrieve`)."""
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = peer.timeout_s
    ae.acse_timeout = peer.timeout_s
    ae.dimse_timeout = peer.timeout_s
    ae.network_timeout = peer.timeout_s
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    target = f"{peer.ae_title}@{peer.host}:{peer.port}" + (" (TLS)" if peer.tls else "")
    tls_args = None
    if peer.tls is not None:
        try:
            tls_args = (peer.tls.context(), peer.host)
        except (TlsFileError, ValueError) as exc:
            # Our own certificate, key or CA file: no attempt is made, an operator must act.
            return target, SendResult(SendOutcome.REFUSED, None, f"{target}: tls.{exc}")
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args,
                         ext_neg=ext_neg, evt_handlers=evt_handlers)
    if assoc.is_established:
        return target, assoc
    if assoc.is_rejected:
        return target, SendResult(
            SendOutcome.REJECTED, None, f"{target} rejected the association"
        )
    if assoc.rejected_contexts:
        # The peer accepted the association but none of our presentation contexts (e.g.
        # it does not store this SOP Class); pynetdicom then aborts the association itself.
        return target, SendResult(
            SendOutcome.REJECTED, None, f"{target} accepted no presentation context"
        )
    # pynetdicom reports a refused connection, a failed TLS handshake (its log has the
    # reason), an ACSE timeout and an abort before association acceptance all as an abort.
    failures = "connection refused, TLS handshake failed" if peer.tls else "connection refused"
    return target, SendResult(
        SendOutcome.UNREACHABLE,
        None,
        f"no association with {target}: {failures}, timed out or aborted",
    )


def send_c_store(dataset: Dataset, peer: DimsePeer, *, calling_ae_title: str) -> SendResult:
    """Send ``dataset`` to ``peer`` with C-STORE.

    Parameters
    ----------
    dataset : pydicom.Dataset
        A dataset with SOPClassUID and SOPInstanceUID; it is offered in Explicit and
        Implicit VR Little Endian.
    peer : DimsePeer
        The Storage SCP.
    calling_ae_title : str
        Our AE title.

    Returns
    -------
    SendResult
    """
    sop_uid = dataset.SOPInstanceUID
    target, assoc = associate(
        peer, calling_ae_title,
        [(dataset.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])],
    )
    if isinstance(assoc, SendResult):
        logger.warning("C-STORE of %s to %s: %s", sop_uid, target, assoc.detail)
        return assoc
    try:
        response = assoc.send_c_store(dataset)
        result = result_from_response(response, target, STORAGE_SERVICE_CLASS_STATUS)
    except (ValueError, RuntimeError) as exc:
        result = SendResult(SendOutcome.REJECTED, None, f"{target}: {exc}")
    finally:
        if assoc.is_established:
            assoc.release()

    log = logger.info if result.ok else logger.warning
    log("C-STORE of %s to %s: %s", sop_uid, target, result.detail)
    return result


def send_c_echo(peer: DimsePeer, *, calling_ae_title: str) -> SendResult:
    """Verify ``peer`` with C-ECHO (Verification Service Class, PS3.4 A).

    Parameters
    ----------
    peer : DimsePeer
        The peer to verify.
    calling_ae_title : str
        Our AE title (a peer may accept only known callers).

    Returns
    -------
    SendResult
        ``SUCCESS`` when the peer answered the C-ECHO with success.
    """
    target, assoc = associate(
        peer, calling_ae_title, [(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    )
    if isinstance(assoc, SendResult):
        return assoc
    try:
        return result_from_response(assoc.send_c_echo(), target,
                                    VERIFICATION_SERVICE_CLASS_STATUS)
    finally:
        if assoc.is_established:
            assoc.release()


def status_detail(code: int, statuses: Mapping[int, tuple[str, str]]) -> str:
    """``"0xA700 (Failure: Refused: Out of Resources)"``: a DIMSE status code, its category
    and its meaning, from ``statuses`` (one of pynetdicom's ``*_SERVICE_CLASS_STATUS`` tables:
    the service's statuses, PS3.4, and the general ones, PS3.7 Annex C); the category alone
    for a code the table does not define. The peer's Error Comment is never part of it (see
    the module notes)."""
    category = code_to_category(code)
    meaning = statuses.get(code, ("", ""))[1]
    return f"0x{code:04X} ({category}: {meaning})" if meaning else f"0x{code:04X} ({category})"


def result_from_response(response: Dataset, target: str,
                         statuses: Mapping[int, tuple[str, str]]) -> SendResult:
    """The result of a C-STORE or C-ECHO from its response; ``statuses``, the service's
    status table (for :func:`status_detail`)."""
    status = response.get("Status") if response is not None else None
    if status is None:
        return SendResult(
            SendOutcome.ABORTED, None, f"{target}: no response (timeout or aborted association)"
        )
    category = code_to_category(int(status))
    detail = f"{target} answered {status_detail(int(status), statuses)}"
    if category == "Success":
        return SendResult(SendOutcome.SUCCESS, int(status), detail)
    if category == "Warning":
        return SendResult(SendOutcome.WARNING, int(status), detail)
    return SendResult(SendOutcome.REFUSED, int(status), detail)
