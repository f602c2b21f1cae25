"""One audit line per association, and the ``listener.allowed_peers`` check.

:class:`AssociationAudit` follows each association through pynetdicom's notification events
(``EVT_REQUESTED``, ``EVT_ESTABLISHED``, ``EVT_REJECTED``, ``EVT_RELEASED``, ``EVT_ABORTED``,
``EVT_CONN_CLOSE``), counts the outcome of its C-STOREs (:func:`worker.handlers.handle_store`
reports them) and, when it ends, writes one INFO line on the ``ossa.audit`` logger::

    association calling_ae=STORESCU called_ae=OSSA peer=10.0.0.7:51234 tls=TLSv1.3
    client_cn=modality-7 stored=3 duplicate=0 own=0 refused=0 outcome=released reason=-
    duration_s=1.42

(on one line). The same fields travel as ``extra`` attributes of the log record, so the JSON
log format has them as keys. A refused TLS handshake gets a line too (``outcome=refused``, no
AE titles: none were sent). The lines carry AE titles, addresses, the client certificate's
Common Name and counts: never a UID or any other attribute of the data sets.

The calling AE title's address binding (:class:`worker.access.PeerBindings`) is checked
when the association is requested; a peer that does not match is rejected with
A-ASSOCIATE-RJ (rejected permanent, service user, "calling AE title not recognised").
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association

from dicom_io.tls import peer_certificate_cn
from worker.access import PeerBindings
from worker.handlers import StoreOutcome
from worker.logsafe import printable

logger = logging.getLogger(__name__)

#: The logger audit lines go to (configure its level or handler separately if needed).
AUDIT_LOGGER = "ossa.audit"

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): rejected-permanent, DUL service-user, calling AE
# title not recognised.
_REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def _plain(value: object) -> str:
    """A field value for the plain line: ``-`` for none, quoted if it has spaces."""
    if value is None:
        return "-"
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


@dataclass
class _Association:
    """What the audit knows of one association (guarded by the audit's lock)."""

    calling_ae: str | None
    called_ae: str | None
    peer_address: str
    peer_port: int
    tls: str | None  # the protocol version ("TLSv1.3"), None over plain TCP
    client_cn: str | None
    started: float = field(default_factory=time.monotonic)
    counts: dict[StoreOutcome, int] = field(
        default_factory=lambda: dict.fromkeys(StoreOutcome, 0)
    )
    established: bool = False
    reason: str | None = None  # why it was rejected, when Ossa rejected it itself


class AssociationAudit:
    """Per-association counts and one audit line when the association ends.

    Parameters
    ----------
    bindings : PeerBindings, optional
        ``listener.allowed_peers``; associations from elsewhere are rejected.
    audit_logger : logging.Logger, optional
        Where the lines go; the ``ossa.audit`` logger by default.
    """

    def __init__(
        self, bindings: PeerBindings | None = None, audit_logger: logging.Logger | None = None
    ) -> None:
        self.bindings = bindings or PeerBindings()
        self.log = audit_logger or logging.getLogger(AUDIT_LOGGER)
        self._lock = threading.Lock()
        self._open: dict[Association, _Association] = {}

    def handlers(self) -> list[evt.EventHandlerType]:
        """The notification handlers to bind with ``ae.start_server(evt_handlers=...)``."""
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]

    # --- what handle_store and the TLS server report ---

    def count_store(self, event: evt.Event, outcome: StoreOutcome) -> None:
        """Count one C-STORE of ``event.assoc`` (a :data:`worker.handlers.StoreObserver`)."""
        with self._lock:
            record = self._open.get(event.assoc)
            if record is not None:
                record.counts[outcome] += 1

    def handshake_failed(self, address: tuple[str, int], reason: str) -> None:
        """Write the line of a connection whose TLS handshake failed (no association)."""
        record = _Association(None, None, address[0], address[1], tls="failed", client_cn=None)
        record.reason = reason
        self._write(record, "refused")

    # --- pynetdicom events ---

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = printable(str(getattr(request, "calling_ae_title", "") or "").strip())
        called = printable(str(getattr(request, "called_ae_title", "") or "").strip())
        sock = getattr(assoc.dul.socket, "socket", None)
        record = _Association(
            calling_ae=calling,
            called_ae=called,
            peer_address=str(assoc.requestor.address),
            peer_port=int(assoc.requestor.port),
            tls=sock.version() if isinstance(sock, ssl.SSLSocket) else None,
            client_cn=peer_certificate_cn(sock),
        )
        with self._lock:
            self._open[assoc] = record
        if self.bindings.allows(calling, record.peer_address):
            return
        record.reason = "calling AE title not allowed from this address"
        logger.warning(
            "Rejected association from %s:%d: calling AE %s may connect only from %s",
            record.peer_address, record.peer_port, calling,
            ", ".join(str(n) for n in self.bindings.networks(calling) or ()),
        )
        # pynetdicom skips its own negotiation when an EVT_REQUESTED handler has rejected
        # the association (pydicom/pynetdicom#408); these are the steps of its own
        # rejections in ACSE._negotiate_as_acceptor: send A-ASSOCIATE-RJ, tell the
        # EVT_REJECTED handlers, then wait for the peer to close and stop the association.
        assoc.acse.send_reject(
            _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED
        )
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_established(self, event: evt.Event) -> None:
        with self._lock:
            record = self._open.get(event.assoc)
            if record is not None:
                record.established = True
        # A context Ossa does not negotiate (a CT, MR or RT object sent by mistake, PS3.8
        # 9.3.3.2 result 3 or 4): the sender cannot even send the instance, so say it here.
        rejected = [
            f"{printable(cx.abstract_syntax.name if cx.abstract_syntax else '?')}:"
            f" {cx.status.lower()}"
            for cx in event.assoc.rejected_contexts
        ]
        if rejected and record is not None:
            logger.warning(
                "Association from %s (%s:%d): presentation context(s) rejected: %s",
                record.calling_ae, record.peer_address, record.peer_port, "; ".join(rejected),
            )

    def _on_rejected(self, event: evt.Event) -> None:
        record = self._close(event.assoc)
        if record is None:
            return
        if record.reason is None:  # rejected by pynetdicom: called AE, calling AE or limit
            primitive = event.assoc.acceptor.primitive
            if primitive is not None:
                record.reason = f"{primitive.reason_str} ({primitive.result_str})".lower()
        self._write(record, "rejected")

    def _on_released(self, event: evt.Event) -> None:
        record = self._close(event.assoc)
        if record is not None:
            self._write(record, "released")

    def _on_aborted(self, event: evt.Event) -> None:
        record = self._close(event.assoc)
        if record is not None:
            provider = event.assoc.acse.is_aborted("a-p-abort")
            record.reason = "A-P-ABORT (connection lost)" if provider else "A-ABORT"
            self._write(record, "aborted")

    def _on_conn_close(self, event: evt.Event) -> None:
        # Only for a connection that closed before the association was accepted or
        # rejected; an established one always ends with EVT_RELEASED or EVT_ABORTED, which
        # may come after this event (it fires on another thread).
        with self._lock:
            record = self._open.get(event.assoc)
            if record is None or record.established:
                return
            del self._open[event.assoc]
        record.reason = "connection closed during association negotiation"
        self._write(record, "closed")

    def _close(self, assoc: Association) -> _Association | None:
        with self._lock:
            return self._open.pop(assoc, None)

    def _write(self, record: _Association, outcome: str) -> None:
        host = record.peer_address
        peer = f"[{host}]:{record.peer_port}" if ":" in host else f"{host}:{record.peer_port}"
        before: dict[str, Any] = {
            "calling_ae": record.calling_ae, "called_ae": record.called_ae, "peer": peer,
            "tls": record.tls or "no", "client_cn": record.client_cn,
        }
        after: dict[str, Any] = {
            **{str(kind): n for kind, n in record.counts.items()},
            "outcome": outcome,
            "reason": record.reason,
            "duration_s": round(time.monotonic() - record.started, 3),
        }
        line = " ".join(f"{key}={_plain(value)}" for key, value in {**before, **after}.items())
        del before["peer"]
        extra = {**before, "peer_address": host, "peer_port": record.peer_port, **after}
        self.log.info("association %s", line, extra=extra)
