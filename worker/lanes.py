"""Outbound lanes: the threads that serve one destination or one source.

A destination's lane is its :class:`~worker.delivery.DeliveryWorker`; a source's lane is its
:class:`~worker.sources.RetrievalWorker` and, for a polled DICOMweb source, its
:class:`~worker.sources.SourcePoller`. Each lane has a stop event of its own beside the
service's, so that a configuration reload (:meth:`worker.service.Service.reload`) can retire
the lane of a destination or source that was removed or changed, and start its new one,
while the listener and the other lanes go on.

What a lane was built from (:attr:`Lane.spec`) decides whether a reload must rebuild it: the
destination's or source's own section, the retry policy (``[delivery]``) and the calling AE
title (``listener.ae_title``), which its associations use.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from worker.config import (
    MIB,
    Config,
    DeliveryConfig,
    DicomwebSource,
    DimseDestination,
    DimseSource,
    StowRsDestination,
)
from worker.delivery import DeliveryWorker, RetryPolicy, make_sender, stow_rs_peer
from worker.intake import Intake
from worker.sources import RetrievalWorker, SourcePoller, make_retriever

logger = logging.getLogger(__name__)


class LaneWorker(Protocol):
    """What a lane runs in a thread: a loop until its stop event, woken early by ``wake``."""

    wake: threading.Event

    @property
    def name(self) -> str: ...

    def run(self) -> None: ...


@dataclass(frozen=True)
class LaneSpec:
    """What a lane is built from; a reload rebuilds a lane whose spec changed."""

    section: DimseDestination | StowRsDestination | DicomwebSource | DimseSource
    delivery: DeliveryConfig
    calling_ae_title: str
    max_inflated_mb: int
    max_upload_mb: int


@dataclass
class Lane:
    """The workers of one destination (``kind`` ``"destination"``) or source (``"source"``).

    ``stop`` is set by the service's stop and by a reload that retires the lane.
    """

    kind: str
    name: str
    spec: LaneSpec
    stop: threading.Event
    workers: tuple[LaneWorker, ...]
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``"destination NAME"`` or ``"source NAME"``: unique among a service's lanes."""
        return f"{self.kind} {self.name}"

    def start(self) -> None:
        """Start one daemon thread per worker."""
        for worker in self.workers:
            kind = "deliver" if self.kind == "destination" else (
                "poll" if isinstance(worker, SourcePoller) else "retrieve")
            thread = threading.Thread(target=worker.run, name=f"ossa-{kind}-{self.name}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def signal_stop(self) -> None:
        """Ask the workers to stop (after the attempt in progress) and wake them."""
        self.stop.set()
        for worker in self.workers:
            worker.wake.set()

    def wake(self) -> None:
        """Wake the workers to look for due work now."""
        for worker in self.workers:
            worker.wake.set()


@dataclass(frozen=True)
class LaneBuilder:
    """Builds the lanes of a configuration for one service.

    Parameters
    ----------
    intake : Intake
        The service's intake: its store and spool serve deliveries; retrieved instances
        are admitted through it.
    poll_interval_s : float
        How often an idle worker looks at the store.
    """

    intake: Intake
    poll_interval_s: float = 1.0

    def specs(self, config: Config) -> dict[str, LaneSpec]:
        """The spec of every lane of ``config``, by lane key."""
        def spec(section: DimseDestination | StowRsDestination | DicomwebSource | DimseSource,
                 ) -> LaneSpec:
            return LaneSpec(section, config.delivery, config.listener.ae_title,
                            config.listener.max_inflated_mb, config.http.max_upload_mb)

        return {**{f"destination {d.name}": spec(d) for d in config.destinations},
                **{f"source {s.name}": spec(s) for s in config.sources}}

    def build(self, spec: LaneSpec) -> Lane:
        """A lane, not started, with a stop event of its own."""
        stop = threading.Event()
        policy = RetryPolicy.from_config(spec.delivery)
        store, section = self.intake.store, spec.section
        if isinstance(section, DicomwebSource | DimseSource):
            worker = RetrievalWorker(
                make_retriever(section, self.intake, calling_ae_title=spec.calling_ae_title,
                               max_inflated_bytes=spec.max_inflated_mb * MIB,
                               max_instance_bytes=spec.max_upload_mb * MIB),
                store, policy, stop, poll_interval_s=self.poll_interval_s,
            )
            workers: tuple[LaneWorker, ...] = (worker,)
            if isinstance(section, DicomwebSource) and section.poll_interval_s > 0:
                workers += (SourcePoller(section, stow_rs_peer(section), store, stop,
                                         wake=worker.wake),)
            return Lane("source", section.name, spec, stop, workers)
        sender = make_sender(section, calling_ae_title=spec.calling_ae_title)
        delivery = DeliveryWorker(sender, store, self.intake.spool, policy, stop,
                                  poll_interval_s=self.poll_interval_s)
        return Lane("destination", section.name, spec, stop, (delivery,))

    def build_all(self, config: Config) -> dict[str, Lane]:
        """Every lane of ``config``, not started."""
        return {key: self.build(spec) for key, spec in self.specs(config).items()}


def retire(lanes: list[Lane], *, deadline_s: float) -> None:
    """Stop ``lanes`` and wait up to ``deadline_s`` for their threads (an attempt in progress
    finishes; what is left is in the state store and the next lane takes it up)."""
    for lane in lanes:
        lane.signal_stop()
    end = time.monotonic() + deadline_s
    for lane in lanes:
        for thread in lane.threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        if any(t.is_alive() for t in lane.threads):
            logger.warning("The old %s has not stopped within %.0f s; it stops after"
                           " its attempt in progress", lane.key, deadline_s)
