"""The status page: one server-rendered HTML page (Jinja2, every value escaped), no scripts.

It shows the health checks, studies by state, each destination's deliveries, each source's
last poll and the retrievals failing, the failed
deliveries with a retry form per study, and the most recent studies with their result. The
retry form posts the token the operator types (``POST /studies/{uid}/retry``); a cross-site
page cannot forge it without the token, and the browser keeps no credential.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from worker.http.health import HealthProbe
from worker.http.views import iso_time, study_json
from worker.store import DeliveryState, FailedDelivery, StateStore, StudyState

TEMPLATES = Path(__file__).with_name("templates")


class StatusPage:
    """Renders ``GET /``.

    Parameters
    ----------
    store : StateStore
        Where studies and deliveries are read.
    health : HealthProbe
        Its checks head the page.
    destinations : sequence of str
        Configured destination names (shown before their first delivery).
    sources : sequence of str
        Configured source names (shown before their first poll).
    """

    def __init__(self, store: StateStore, health: HealthProbe,
                 destinations: Sequence[str] = (), sources: Sequence[str] = ()) -> None:
        self.store = store
        self.health = health
        self.destinations = tuple(destinations)
        self.sources = tuple(sources)
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
        )
        self._env.filters["pathquote"] = lambda value: quote(str(value), safe="")

    def render(self, *, limit: int = 50, offset: int = 0, notice: str | None = None,
               error: str | None = None) -> str:
        """The page's HTML (blocking: store queries and the health checks)."""
        summary = self.store.summary()
        stats = {s.destination: s for s in self.store.delivery_stats()}
        names = list(dict.fromkeys([*self.destinations, *stats]))
        destinations: list[dict[str, Any]] = []
        for name in names:
            entry = stats.get(name)
            destinations.append({
                "name": name if name in self.destinations else f"{name} (not configured)",
                "states": {} if entry is None else entry.states,
                "last_attempt": None if entry is None else iso_time(entry.last_attempt),
                "last_outcome": None if entry is None else entry.last_outcome,
            })
        failed: dict[str, list[FailedDelivery]] = {}
        for item in summary.failed:
            failed.setdefault(item.study_uid, []).append(item)
        rows = [study_json(row) for row in self.store.list_studies(limit=limit, offset=offset)]
        now = self.store.now()
        nodes = [{"name": n.name, "host": n.host, "heartbeat": iso_time(n.heartbeat),
                  "alive": now - n.heartbeat <= self.store.lease_s, "jobs": n.jobs,
                  "deliveries": n.deliveries} for n in self.store.nodes()]
        polled = {row.name: row for row in self.store.sources()}
        sources = [{
            "name": name if name in self.sources else f"{name} (not configured)",
            "last_poll": None if name not in polled else iso_time(polled[name].last_poll),
            "last_outcome": None if name not in polled else polled[name].last_outcome,
            "last_detail": None if name not in polled else polled[name].last_detail,
            "pending": 0 if name not in polled else polled[name].pending,
            "failed": 0 if name not in polled else polled[name].failed,
        } for name in dict.fromkeys([*self.sources, *polled])]
        return self._env.get_template("status.html").render(
            sources=sources,
            troubled=self.store.troubled_retrievals(limit=20),
            node=self.store.node,
            nodes=nodes,
            health=self.health.run(),
            studies_by_state=[(s.value, summary.studies.get(s.value, 0)) for s in StudyState],
            delivery_states=[s.value for s in DeliveryState],
            destinations=destinations,
            failed=list(failed.items()),
            rows=rows,
            total=self.store.count_studies(),
            limit=limit,
            offset=offset,
            notice=notice,
            error=error,
        )
