"""``GET /metrics``: Prometheus metrics of one Ossa process, every name prefixed ``ossa_``.

Two kinds: events counted as they happen in this process (instances received, inference
time), and state read from the state store at scrape time by :class:`StoreCollector` (studies,
jobs, deliveries, the oldest pending delivery, spool bytes), since the store, not the
process, holds that state (``ossa retry`` from another process shows at the next scrape).
Everything lives in the registry of a :class:`Metrics` object, never in prometheus_client's
global one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.admission import Refusal, StoreOutcome
from worker.spool import Spool
from worker.store import DeliveryState, InstanceState, JobState, StateStore, StoreError, StudyState

logger = logging.getLogger(__name__)

#: Seconds of one classifier call (a shared batch of images) on a CPU or a GPU.
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PROTOCOLS = ("dimse", "stowrs", "wadors", "cget")


class Metrics:
    """The registry of one service and the counters its stages update.

    :meth:`instance_admitted` is :attr:`worker.intake.Intake.observer` and
    :meth:`observe_inference` is the classify stage's ``metrics`` hook; both are cheap and
    never raise into their caller.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "ossa_instances_received",
            "Instances received (C-STORE or STOW-RS) by outcome: stored, duplicate (already "
            "stored), own (Ossa's object forwarded back), refused",
            ["protocol", "outcome"],
            registry=self.registry,
        )
        self.instances_refused = Counter(
            "ossa_instances_refused",
            "Instances refused, by reason",
            ["protocol", "reason"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "ossa_inference_seconds",
            "Duration of one classifier call over a shared batch of images (preprocessing "
            "and both stages)",
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.inference_images = Counter(
            "ossa_inference_images", "Images given to the classifier", registry=self.registry
        )
        for protocol in PROTOCOLS:  # every series exists from the start, at 0
            for outcome in StoreOutcome:
                self.instances_received.labels(protocol, outcome.value)
            for reason in Refusal:
                self.instances_refused.labels(protocol, reason.value)
        # ossa_process_resident_memory_bytes, ..._cpu_seconds_total, ..._open_fds (Linux).
        ProcessCollector(namespace="ossa", registry=self.registry)

    def instance_admitted(self, protocol: str, outcome: str, reason: str) -> None:
        """Count one C-STORE or STOW-RS instance's outcome (and why, when refused)."""
        self.instances_received.labels(protocol, outcome).inc()
        if reason:
            self.instances_refused.labels(protocol, reason).inc()

    def observe_inference(self, seconds: float, images: int) -> None:
        """Record one classifier call."""
        self.inference_seconds.observe(seconds)
        self.inference_images.inc(images)

    def watch(self, collector: Collector) -> None:
        """Add a collector read at each scrape (e.g. :class:`StoreCollector`)."""
        self.registry.register(collector)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its media type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StoreCollector(Collector):
    """Gauges read from the state store (and the spool's file system) at scrape time.

    Parameters
    ----------
    store, spool
        The service's.
    report_queue_size : callable
        Studies classified and waiting for the report stage (the bounded queue's size).
    destinations : sequence of str
        Configured destination names: their series exist (at 0) before any delivery.
    """

    def __init__(
        self,
        store: StateStore,
        spool: Spool,
        *,
        report_queue_size: Callable[[], int],
        destinations: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.spool = spool
        self.report_queue_size = report_queue_size
        self.destinations = tuple(destinations)

    def describe(self) -> list[Metric]:
        """Nothing to describe ahead of a scrape (the registry then does not collect at
        registration)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The gauges; ``ossa_store_up`` 0 (and no store gauges) when the store fails."""
        up = GaugeMetricFamily("ossa_store_up", "Whether the state store answered this scrape")
        try:
            families = list(self._from_store())
        except StoreError as exc:
            logger.error("Metrics: state store query failed: %s", exc)
            up.add_metric([], 0)
            families = []
        else:
            up.add_metric([], 1)
        yield up
        node = GaugeMetricFamily("ossa_node_info", "This node of the cluster (always 1)",
                                 labels=["node"])
        node.add_metric([self.store.node], 1)
        yield node
        yield from families
        queue = GaugeMetricFamily(
            "ossa_report_queue_size", "Classified studies waiting for the report stage"
        )
        queue.add_metric([], self.report_queue_size())
        yield queue
        free = GaugeMetricFamily("ossa_spool_free_bytes",
                                 "Free space on the storage root's file system")
        try:
            free.add_metric([], shutil.disk_usage(self.spool.root).free)
            yield free
        except OSError:
            pass

    def _from_store(self) -> Iterator[Metric]:
        summary = self.store.summary()
        stats = self.store.delivery_stats()
        now = self.store.now()
        yield _by_state("ossa_studies", "Studies by state", "state", list(StudyState),
                        summary.studies)
        yield _by_state("ossa_jobs", "Classifier jobs by state (queued and running: the "
                        "classify queue)", "state", list(JobState), summary.jobs)
        yield _by_state("ossa_instances", "Received instances by state (lost: file missing)",
                        "state", list(InstanceState), summary.instances)
        names = list(dict.fromkeys([*self.destinations, *(s.destination for s in stats)]))
        by_name = {s.destination: s for s in stats}
        deliveries = GaugeMetricFamily("ossa_deliveries", "Deliveries by destination and state",
                                       labels=["destination", "state"])
        outcomes = GaugeMetricFamily(
            "ossa_deliveries_last_outcome",
            "Deliveries by destination and the outcome of their last attempt (success, "
            "warning, refused, rejected, aborted, unreachable, lost...)",
            labels=["destination", "outcome"],
        )
        oldest = GaugeMetricFamily(
            "ossa_oldest_pending_delivery_age_seconds",
            "Age of the oldest pending delivery (since it was queued); 0 when none is pending",
            labels=["destination"],
        )
        for name in names:
            entry = by_name.get(name)
            for state in DeliveryState:
                deliveries.add_metric([name, state.value],
                                      0 if entry is None else entry.states.get(state.value, 0))
            for outcome, count in sorted(({} if entry is None else entry.outcomes).items()):
                outcomes.add_metric([name, outcome], count)
            pending_since = None if entry is None else entry.oldest_pending
            oldest.add_metric([name], 0.0 if pending_since is None
                              else max(0.0, now - pending_since))
        yield deliveries
        yield outcomes
        yield oldest
        spool = GaugeMetricFamily("ossa_spool_bytes", "Bytes of received instances in the spool")
        spool.add_metric([], self.store.stored_bytes())
        yield spool


def _by_state(name: str, documentation: str, label: str, states: list[str],
              counts: dict[str, int]) -> GaugeMetricFamily:
    """A gauge with one series per known state (0 when absent) and any other state seen."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for state in dict.fromkeys([*(str(s) for s in states), *counts]):
        family.add_metric([state], counts.get(state, 0))
    return family
