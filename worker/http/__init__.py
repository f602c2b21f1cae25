"""Ossa's HTTP side: one small ASGI app (Starlette) served by uvicorn inside the service.

``GET /healthz`` (:mod:`.health`), ``GET /metrics`` (:mod:`.metrics`), the JSON API and the
status page (:mod:`.app`, :mod:`.pages`), and STOW-RS inbound (:mod:`.stow`). The app is
built by :func:`.app.create_app` from explicit collaborators; there is no module-level state.
:func:`.server.build_http_server` wires it from the configuration and :class:`.server.
HttpServer` runs it in a thread that :class:`worker.service.Service` starts and stops.
"""
