"""Running the app: uvicorn in a thread of the service process, and its wiring.

:class:`HttpServer` binds its socket in :meth:`HttpServer.start` (a port in use fails the
start, as the DICOM listener's would), serves from a thread with its own event loop, and
stops within a deadline in :meth:`HttpServer.stop`. uvicorn installs no signal handler off
the main thread: the service's own SIGINT/SIGTERM handling stops everything.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from worker.config import MIB, Config
from worker.http.app import create_app
from worker.http.auth import TokenFile, is_loopback
from worker.http.health import HealthProbe
from worker.http.metrics import Metrics, StoreCollector
from worker.intake import Intake

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, telling a thread waiting in :meth:`HttpServer.start` it is up."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._ready.set()


class HttpServer:
    """An ASGI app served by uvicorn from a thread.

    Parameters
    ----------
    app : ASGI app
        What to serve.
    host : str
        Address to bind (``[http] host``).
    port : int
        Port to bind (``[http] port``; 0 picks a free one).
    rename : callable, optional
        ``rename(destinations, sources)`` gives the app the configured names after a
        reload (:meth:`rename`).
    """

    def __init__(self, app: ASGIApp, host: str, port: int, *,
                 rename: Callable[[tuple[str, ...], tuple[str, ...]], None] | None = None,
                 ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self._rename = rename
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def rename(self, *, destinations: tuple[str, ...], sources: tuple[str, ...]) -> None:
        """The configured destinations and sources, after a reload: the status page, the
        health answer, the metrics and ``POST /api/analyze`` use these from now on."""
        if self._rename is not None:
            self._rename(destinations, sources)

    @property
    def port(self) -> int:
        """The bound port."""
        if self._socket is None:
            raise RuntimeError("HTTP server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Bind and serve; return once requests are accepted.

        Raises
        ------
        OSError
            If the address cannot be bound (e.g. the port is in use).
        RuntimeError
            If the server does not come up within ``timeout_s``.
        """
        family = socket.getaddrinfo(self.host, self.requested_port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((self.host, self.requested_port), family=family,
                                    backlog=128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            log_config=None,  # the service configured logging
            access_log=False,  # scrapes would flood the log; writes are logged by the app
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        ready = threading.Event()
        server = _Server(config, ready)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                  name="ossa-http", daemon=True)
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        if not ready.wait(timeout_s) or not thread.is_alive():
            self.stop()
            raise RuntimeError("the HTTP server did not start")
        logger.info("HTTP on %s (health, metrics, status page, API, STOW-RS)", self.url)

    @property
    def serving(self) -> bool:
        """Whether the server thread runs and has started."""
        return (self._thread is not None and self._thread.is_alive()
                and self._server is not None and self._server.started)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish (5 s), then return."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("HTTP server did not stop within %.0f s", timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None


def build_http_server(
    config: Config,
    *,
    intake: Intake,
    metrics: Metrics,
    listener: Callable[[], tuple[bool, str]],
    model: Callable[[], tuple[bool, str]],
    report_queue: queue.Queue[Any],
) -> HttpServer:
    """The HTTP server of a service, wired from the configuration and its collaborators.

    Parameters
    ----------
    config : Config
        ``[http]``, ``[listener] max_inflated_mb`` and the destinations' names are used.
    intake : Intake
        The service's intake (with its spool and store); STOW-RS writes through it.
    metrics : Metrics
        The service's metrics (the intake and classify stage update them).
    listener, model : callable
        Health checks of the DICOM listener and of the model (``() -> (ok, detail)``).
    report_queue : queue.Queue
        The classify → report queue, whose size is a metric.
    """
    http = config.http
    names = tuple(d.name for d in config.destinations)
    collector = StoreCollector(intake.store, intake.spool,
                               report_queue_size=report_queue.qsize, destinations=names)
    metrics.watch(collector)
    token = TokenFile(http.token_file)
    token.warn_if_missing()
    reads_open = is_loopback(http.host)
    if not reads_open:
        logger.info("HTTP host %s is not a loopback address: reads need the token too",
                    http.host)
    health = HealthProbe(intake.store, intake.spool, listener=listener, model=model,
                         destinations=names)
    app = create_app(
        store=intake.store, intake=intake, health=health, metrics=metrics, token=token,
        reads_open=reads_open, destinations=names, sources=tuple(s.name for s in config.sources),
        max_upload_bytes=http.max_upload_mb * MIB,
        max_inflated_bytes=config.listener.max_inflated_mb * MIB,
        accepting=lambda: listener()[0],  # STOW-RS only while the DICOM listener listens
    )

    def rename(destinations: tuple[str, ...], sources: tuple[str, ...]) -> None:
        collector.destinations = health.destinations = destinations
        page = app.state.status_page
        page.destinations, page.sources = destinations, sources

    return HttpServer(app, http.host, http.port, rename=rename)
