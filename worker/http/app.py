"""The ASGI app: health, metrics, the JSON API, the status page and STOW-RS inbound.

=======================================  =========  ==========================================
route                                    access     what
=======================================  =========  ==========================================
``GET /healthz``                         read       200/503 and the checks, in JSON
``GET /metrics``                         read       Prometheus text (``ossa_*``)
``GET /api/studies``                     read       studies, newest first (``limit``,
                                                    ``offset``, ``state``)
``GET /api/studies/{uid}``               read       a study's jobs, objects and deliveries
``POST /api/studies/{uid}/retry``        token      re-queue its failed deliveries
``POST /api/analyze``                    token      retrieve and report one study from a
                                                    source: ``{"source", "study"}``, 202
``GET /api/analyze/{source}/{uid}``      read       how far that analysis got
``GET /``                                read       the status page (HTML)
``POST /studies/{uid}/retry``            token      the page's retry form (token field)
``POST /dicomweb/studies``               token      STOW-RS (:mod:`.stow`)
=======================================  =========  ==========================================

"read" is open when the server listens on a loopback address and the request's Host is a
loopback name too (a page elsewhere cannot read it through DNS rebinding); otherwise it needs
the bearer token, like "token". See :mod:`.auth`. Responses carry UIDs, AE titles, states,
counts and short results: never patient data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from worker.http import stow
from worker.http.auth import TokenFile, bearer_token, is_loopback
from worker.http.health import HealthProbe
from worker.http.metrics import Metrics
from worker.http.pages import StatusPage
from worker.http.views import detail_json, study_json
from worker.intake import Intake
from worker.logsafe import printable
from worker.sources.demand import AnalyzeRequestError, analysis_state, request_analysis
from worker.store import StateStore, StoreError, StudyState

logger = logging.getLogger(__name__)

#: Most studies one ``GET /api/studies`` returns.
MAX_LIMIT = 500
#: A UID as PS3.5 9.1 writes it; the status page shows only such a one back from its URL.
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
_NO_STORE = {"Cache-Control": "no-store"}


def _host_is_loopback(host_header: str) -> bool:
    """Whether a Host header (``127.0.0.1:8080``, ``[::1]:8080``, ``localhost``) names a
    loopback address."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return is_loopback(host)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}")
    return value


def create_app(
    *,
    store: StateStore,
    intake: Intake,
    health: HealthProbe,
    metrics: Metrics,
    token: TokenFile,
    reads_open: bool,
    destinations: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
    max_upload_bytes: int,
    max_inflated_bytes: int,
    accepting: Callable[[], bool] = lambda: True,
) -> Starlette:
    """Build the app from its collaborators.

    Parameters
    ----------
    store, intake
        The service's state store and intake (STOW-RS writes through the intake).
    health : HealthProbe
        ``/healthz`` and the head of the status page.
    metrics : Metrics
        ``/metrics``.
    token : TokenFile
        The bearer token (``[http] token_file``).
    reads_open : bool
        Whether reads need no token (``[http] host`` is a loopback address).
    destinations : tuple of str
        Configured destination names (the status page lists them).
    sources : tuple of str
        Configured source names (``POST /api/analyze`` takes one of them). A reload replaces
        both lists on ``app.state.status_page``.
    max_upload_bytes : int
        Largest STOW-RS request (``[http] max_upload_mb``).
    max_inflated_bytes : int
        Largest inflated size of a deflated data set (``listener.max_inflated_mb``).
    accepting : callable
        Whether instances may be received now: STOW-RS answers 503 while it is False (the
        service is starting, reconciling its spool, or stopping), as the DICOM listener
        does not listen then.
    """
    page = StatusPage(store, health, destinations, sources)

    def refusal(request: Request, *, write: bool) -> Response | None:
        """None when the request may go on; else the 401 or 403 to answer."""
        if not write and reads_open and _host_is_loopback(request.headers.get("host", "")):
            return None
        if not token.available:
            return JSONResponse(
                {"error": "no token is configured ([http] token_file missing or empty): "
                          + ("this action is" if write else "reads off loopback are")
                          + " refused"},
                status_code=403,
            )
        if not token.matches(bearer_token(request.headers.get("authorization"))):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="ossa"'})
        return None

    def guarded(write: bool, endpoint: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            refused = refusal(request, write=write)
            return refused if refused is not None else await endpoint(request)
        return wrapped

    async def healthz(request: Request) -> Response:
        result = await run_in_threadpool(health.run)
        return JSONResponse(result.as_json(), status_code=200 if result.ok else 503,
                            headers=_NO_STORE)

    async def metrics_text(request: Request) -> Response:
        body, media_type = await run_in_threadpool(metrics.exposition)
        return Response(body, media_type=media_type, headers=_NO_STORE)

    async def list_studies(request: Request) -> Response:
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 2**62)
        state = request.query_params.get("state") or None
        if state is not None and state not in set(StudyState):
            raise HTTPException(400, f"state must be one of {', '.join(StudyState)}")

        def read() -> dict[str, Any]:
            rows = store.list_studies(limit=limit, offset=offset, state=state)
            return {"total": store.count_studies(state), "limit": limit, "offset": offset,
                    "studies": [study_json(r) for r in rows]}

        return JSONResponse(await run_in_threadpool(read), headers=_NO_STORE)

    async def study(request: Request) -> Response:
        uid = request.path_params["uid"]
        details = await run_in_threadpool(store.study_detail, uid)
        if not details:
            raise HTTPException(404, "no such study")
        return JSONResponse(detail_json(uid, details), headers=_NO_STORE)

    def retry(uid: str, request: Request) -> int | None:
        """Re-queue a study's failed deliveries; None if the study is unknown."""
        count = store.retry(study_uid=uid)
        if count == 0 and not store.study_detail(uid):
            return None
        client = request.client.host if request.client else "?"
        logger.info("HTTP: retry of study %s from %s: %d deliver%s re-queued",
                    printable(uid), client, count,
                    "y" if count == 1 else "ies")
        return count

    async def api_retry(request: Request) -> Response:
        uid = request.path_params["uid"]
        count = await run_in_threadpool(retry, uid, request)
        if count is None:
            raise HTTPException(404, "no such study")
        return JSONResponse({"study_uid": uid, "requeued": count})

    def analysis_json(source: str, uid: str) -> dict[str, Any]:
        state = analysis_state(store, source, uid)
        return {"source": source, "study_uid": uid, "stage": state.stage,
                "detail": state.detail, "result": state.result}

    async def api_analyze(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, 'the body must be JSON: {"source": ..., "study": ...}'
                                ) from None
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k), str) for k in ("source", "study")):
            raise HTTPException(400, 'the body must be {"source": NAME, "study": UID}')
        source, uid = body["source"], body["study"]
        try:
            await run_in_threadpool(request_analysis, store, page.sources, source, uid,
                                    requested_by="api")
        except AnalyzeRequestError as exc:
            raise HTTPException(404 if "source" in str(exc) else 400, str(exc)) from None
        client = request.client.host if request.client else "?"
        logger.info("HTTP: analysis of study %s from %s requested by %s", uid, source, client)
        answer = await run_in_threadpool(analysis_json, source, uid)
        location = f"/api/analyze/{quote(source, safe='')}/{quote(uid, safe='')}"
        return JSONResponse(answer, status_code=202, headers={"Location": location})

    async def api_analysis(request: Request) -> Response:
        source, uid = request.path_params["source"], request.path_params["uid"]
        answer = await run_in_threadpool(analysis_json, source, uid)
        if answer["stage"] == "unknown":
            raise HTTPException(404, "no analysis of this study from this source")
        return JSONResponse(answer, headers=_NO_STORE)

    async def status_page(request: Request) -> Response:
        offset = _int_param(request, "offset", 0, 0, 2**62)
        notice = None
        retried, requeued = request.query_params.get("retried"), request.query_params.get(
            "requeued")
        if retried and _UID.match(retried) and requeued and requeued.isdigit():
            n = int(requeued)
            notice = f"Re-queued {n} deliver{'y' if n == 1 else 'ies'} of study {retried}."
        html = await run_in_threadpool(lambda: page.render(offset=offset, notice=notice))
        return HTMLResponse(html, headers=_NO_STORE)

    async def page_retry(request: Request) -> Response:
        uid = request.path_params["uid"]
        form = await request.form()
        typed = form.get("token")
        typed = typed if isinstance(typed, str) else None
        error = None
        if not token.available:
            status, error = 403, "Retry refused: no token is configured ([http] token_file)."
        elif not token.matches(typed):
            status, error = 401, "Retry refused: wrong token."
        if error is not None:
            if refusal(request, write=False) is not None:  # not one who may read the page
                return HTMLResponse(f"<p>{error}</p>", status_code=status)
            html = await run_in_threadpool(lambda: page.render(error=error))
            return HTMLResponse(html, status_code=status, headers=_NO_STORE)
        count = await run_in_threadpool(retry, uid, request)
        if count is None:
            raise HTTPException(404, "no such study")
        return RedirectResponse(f"/?retried={quote(uid, safe='')}&requeued={count}",
                                status_code=303)

    async def stow_rs(request: Request) -> Response:
        if not accepting():
            return JSONResponse({"error": "not receiving instances now (starting or stopping)"},
                                status_code=503, headers={"Retry-After": "10"})
        return await stow.stow(request, intake=intake, max_upload_bytes=max_upload_bytes,
                               max_inflated_bytes=max_inflated_bytes)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)

    async def store_error(request: Request, exc: Exception) -> Response:
        logger.error("HTTP %s %s: state store error: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": "state store unavailable"}, status_code=503)

    routes = [
        Route("/healthz", guarded(False, healthz), methods=["GET"]),
        Route("/metrics", guarded(False, metrics_text), methods=["GET"]),
        Route("/api/studies", guarded(False, list_studies), methods=["GET"]),
        Route("/api/studies/{uid}", guarded(False, study), methods=["GET"]),
        Route("/api/studies/{uid}/retry", guarded(True, api_retry), methods=["POST"]),
        Route("/api/analyze", guarded(True, api_analyze), methods=["POST"]),
        Route("/api/analyze/{source}/{uid}", guarded(False, api_analysis), methods=["GET"]),
        Route("/", guarded(False, status_page), methods=["GET"]),
        # The form carries the token in a field (a browser cannot set the header).
        Route("/studies/{uid}/retry", page_retry, methods=["POST"]),
        Route("/dicomweb/studies", guarded(True, stow_rs), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, StoreError: store_error},
    )
    app.state.status_page = page  # its names are the ones a reload replaces
    return app
