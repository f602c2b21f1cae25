"""TLS contexts for DICOM connections (PS3.15 B.1 and BCP 195: TLS 1.2 or later).

The one place that turns certificate, key and CA files into :class:`ssl.SSLContext` objects:
:func:`server_context` for the listener, :func:`client_context` for a C-STORE destination.
Both take plain paths and flags (not the configuration), refuse anything older than TLS 1.2
and leave the cipher suites to OpenSSL's defaults (Python's ``ssl`` module already drops the
weak ones). A file that cannot be read or used raises :class:`TlsFileError` naming the
parameter (``cert``, ``key`` or ``ca``), so that the caller can name its configuration key.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

logger = logging.getLogger(__name__)

#: The oldest protocol version accepted in either direction.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be read or used.

    Parameters
    ----------
    field : str
        The parameter at fault: ``cert``, ``key`` or ``ca``.
    path : pathlib.Path
        The file.
    reason : str
        What is wrong with it (no file contents).
    """

    def __init__(self, field: str, path: Path, reason: str) -> None:
        self.field = field
        self.path = path
        self.reason = reason
        super().__init__(f"{field}: {path}: {reason}")


def _readable(field: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsFileError(field, path, exc.strerror or type(exc).__name__) from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()


def _load_certificate_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """``context.load_cert_chain`` with an error that says which file is at fault."""
    _readable("cert", cert)
    _readable("key", key)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as exc:
        # OpenSSL says "PEM lib" for a bad certificate and for a bad key alike: load the
        # certificate alone to tell them apart.
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
        except ssl.SSLError:
            raise TlsFileError("cert", cert, "not a PEM certificate") from None
        if "mismatch" in _ssl_reason(exc):
            raise TlsFileError("key", key, f"does not match the certificate {cert}") from None
        raise TlsFileError("key", key, f"not a usable PEM private key ({_ssl_reason(exc)})"
                           ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    _readable("ca", ca)
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsFileError("ca", ca, f"not PEM CA certificates ({_ssl_reason(exc)})") from None


def server_context(
    cert: Path, key: Path, *, ca: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """The TLS context of a DICOM listener.

    Parameters
    ----------
    cert, key : pathlib.Path
        PEM certificate (chain) and unencrypted PEM private key of the listener.
    ca : pathlib.Path, optional
        PEM CA certificates that sign client certificates. Without it no client certificate
        is asked for.
    require_client_cert : bool
        Refuse, during the handshake, a client that presents no certificate signed by
        ``ca``. When false, a client certificate is verified if one is presented.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 or later, server side.

    Raises
    ------
    TlsFileError
        A file is missing, unreadable, not PEM, or the key does not match the certificate.
    ValueError
        ``require_client_cert`` without ``ca``.
    """
    if require_client_cert and ca is None:
        raise ValueError("require_client_cert needs ca (the CA that signs client certificates)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_certificate_chain(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    verify_hostname: bool = True,
) -> ssl.SSLContext:
    """The TLS context for connecting to a DICOM peer.

    The peer's certificate is always verified (against ``ca``, or the system's CA store
    without it); ``verify_hostname`` only decides whether it must also name the host.

    Parameters
    ----------
    ca : pathlib.Path, optional
        PEM CA certificates that sign the peer's certificate.
    cert, key : pathlib.Path, optional
        Our client certificate and unencrypted private key, for a peer that asks for one;
        both or neither.
    verify_hostname : bool
        Check that the peer's certificate names the host (or IP address) connected to.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 or later, client side.

    Raises
    ------
    TlsFileError
        A file is missing, unreadable, not PEM, or the key does not match the certificate.
    ValueError
        Only one of ``cert`` and ``key``.
    """
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca is not None:
        _load_ca(context, ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None and key is not None:
        _load_certificate_chain(context, cert, key)
    return context


@dataclass(frozen=True)
class ClientTls:
    """How to reach a peer over TLS: the files and flags of :func:`client_context`.

    A value, so that a peer description stays comparable and printable; the context is made
    at each connection, so that renewed certificates are picked up without a restart.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")

    def context(self) -> ssl.SSLContext:
        """A new client context (raises :class:`TlsFileError` for an unusable file)."""
        return client_context(
            ca=self.ca, cert=self.cert, key=self.key, verify_hostname=self.verify_hostname
        )


def peer_certificate_cn(sock: object) -> str | None:
    """The Common Name of the verified certificate a TLS peer presented, if any.

    ``sock`` is any socket; a plain one (no TLS), or a TLS peer without a certificate,
    gives ``None``.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):  # not connected any more, or handshake not done
        return None
    subject: Any = (cert or {}).get("subject", ())  # ((("commonName", "x"),), ...)
    for rdn in subject:
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


#: Called with the peer's ``(host, port)`` and the reason when a TLS handshake fails.
HandshakeFailed = Callable[[tuple[str, int], str], None]


def _handshake_failure_reason(exc: OSError, timeout_s: float) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {_ssl_reason(exc)}"
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {timeout_s:g} s"
    return f"TLS handshake failed: {exc.strerror or type(exc).__name__}"


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, with the TLS handshake on the connection's
    own thread and within a time limit.

    pynetdicom's server (3.0) wraps each accepted socket in ``get_request``, on the one thread
    that accepts connections, with a blocking handshake: a client that connects and sends
    nothing would stop the listener from accepting anyone else. Here ``get_request`` only
    accepts (``ssl_context`` stays ``None``), and :meth:`finish_request`, which
    :class:`socketserver.ThreadingMixIn` runs on a new thread per connection, does the
    handshake with ``handshake_timeout_s`` before pynetdicom's request handler sees the
    socket. A failed handshake is reported to ``on_handshake_failed`` and the connection
    closed: no association is created for it.
    """

    def __init__(
        self,
        *args: Any,
        tls_context: ssl.SSLContext,
        handshake_timeout_s: float,
        on_handshake_failed: HandshakeFailed | None = None,
        **kwargs: Any,
    ) -> None:
        self.tls_context = tls_context
        self.handshake_timeout_s = handshake_timeout_s
        self.on_handshake_failed = on_handshake_failed
        super().__init__(*args, **kwargs)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake, then hand the TLS socket to pynetdicom's request handler."""
        request.settimeout(self.handshake_timeout_s)
        try:
            tls_socket = self.tls_context.wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError, a timeout or a reset connection
            reason = _handshake_failure_reason(exc, self.handshake_timeout_s)
            address = (str(client_address[0]), int(client_address[1]))
            if self.on_handshake_failed is not None:
                self.on_handshake_failed(address, reason)
            else:
                logger.warning("Connection from %s:%d refused: %s", *address, reason)
            self.shutdown_request(request)
            return
        tls_socket.settimeout(None)  # as pynetdicom has accepted sockets: blocking
        super().finish_request(tls_socket, client_address)


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    evt_handlers: list[evt.EventHandlerType],
    tls_context: ssl.SSLContext | None = None,
    handshake_timeout_s: float = 30.0,
    on_handshake_failed: HandshakeFailed | None = None,
) -> ThreadedAssociationServer:
    """Start ``ae`` listening on ``address`` in a background thread; TLS with a context.

    Without ``tls_context`` this is ``ae.start_server(address, block=False, ...)``. With
    one, the server is a :class:`TlsAssociationServer` made by ``ae.make_server`` (its
    documented hook for a custom server class) and served the way ``ae.start_server`` does.
    Stop it with ``server.shutdown()``.
    """
    if tls_context is None:
        server = ae.start_server(address, block=False, evt_handlers=evt_handlers)
        assert server is not None  # non-blocking: the server is returned
        return server
    server = ae.make_server(
        address,
        evt_handlers=evt_handlers,
        server_class=TlsAssociationServer,
        tls_context=tls_context,
        handshake_timeout_s=handshake_timeout_s,
        on_handshake_failed=on_handshake_failed,
    )
    # As ``AE.start_server`` does: ``AssociationServer.shutdown()`` takes the server off
    # this list again, and ``AE.shutdown()`` stops the servers on it.
    ae._servers.append(server)
    name = f"TlsAcceptorServer@{address[0]}:{address[1]}"
    thread = threading.Thread(target=make_target(server.serve_forever), name=name, daemon=True)
    thread.start()
    return server
