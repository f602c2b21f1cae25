"""Operator commands: ``ossa status``, ``ossa retry``, ``ossa analyze`` and ``ossa check-config``.

``status`` and ``retry`` open the state store of the configuration's ``storage.root`` in
their own connection; SQLite's WAL mode lets them run beside the service (a running
service picks re-queued deliveries up within a second) as well as when it is stopped.
They print UIDs and counts, never patient data.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.config import (
    Config,
    ConfigError,
    DicomwebSource,
    DimseDestination,
    DimseSource,
    load_config,
)
from worker.console import fail
from worker.store import (
    STORE_FILE,
    DeliveryState,
    JobState,
    NodeRow,
    RetrievalRow,
    SourceRow,
    StateStore,
    StoreError,
    StudyState,
    Summary,
    open_store,
)
from worker.store.schema import SCHEMA_VERSION, SchemaError


def _open(args: argparse.Namespace) -> tuple[Config, StateStore] | int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    path = config.storage.root / STORE_FILE
    if config.storage.database is None and not path.exists():
        return fail(f"storage.root: no state store at {path} (has `ossa serve` run?)", 1)
    try:
        return config, open_store(config.storage, config.node)
    except (SchemaError, StoreError) as exc:
        key = "storage.root" if config.storage.database is None else "storage.database"
        return fail(f"{key}: {exc}", 1)


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    delta = timestamp - now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    return f"{stamp} (in {delta:.0f} s)" if delta > 0 else stamp


def _counts(states: list[str], counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {counts.get(state, 0)}" for state in states)


def format_summary(summary: Summary, destinations: list[str], now: float) -> str:
    """The text of ``ossa status``."""
    lines = [
        f"Studies:    {_counts(list(StudyState), summary.studies)}",
        f"Jobs:       {_counts(list(JobState), summary.jobs)}",
        f"Instances:  {_counts(['stored', 'lost'], summary.instances)}",
        "Deliveries:",
    ]
    names = list(dict.fromkeys([*destinations, *summary.deliveries]))
    rows: list[tuple[str, ...]] = [
        ("destination", "pending", "delivered", "failed", "next attempt")
    ]
    for name in names:
        counts = summary.deliveries.get(name, {})
        rows.append((
            name + ("" if name in destinations else " (not configured)"),
            *(str(counts.get(state, 0)) for state in DeliveryState),
            _when(summary.next_attempts.get(name), now),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    if summary.failed:
        lines.append("Failed deliveries (`ossa retry` re-queues them):")
        for f in summary.failed:
            lines.append(
                f"  study {f.study_uid} object {f.sop_uid} to {f.destination}: "
                f"{f.attempts} attempt(s), last {_when(f.last_attempt, now)}: "
                f"{f.last_outcome}: {f.last_detail}"
            )
    return "\n".join(lines)


def status(args: argparse.Namespace) -> int:
    """``ossa status [--json]``: studies, jobs and deliveries by state."""
    opened = _open(args)
    if isinstance(opened, int):
        return opened
    config, store = opened
    with store:
        summary = store.summary()
        nodes = store.nodes()
        sources = store.sources()
        troubled = store.troubled_retrievals()
        now = store.now()
    destinations = [d.name for d in config.destinations]
    configured = [s.name for s in config.sources]
    if args.json:
        payload = {"store": store.location.shown, "schema_version": SCHEMA_VERSION,
                   "configured_destinations": destinations, **asdict(summary),
                   "nodes": [asdict(n) for n in nodes],
                   "configured_sources": configured, "sources": [asdict(s) for s in sources],
                   "troubled_retrievals": [asdict(r) for r in troubled]}
        print(json.dumps(payload, indent=2))
    else:
        print(f"State store: {store.location.shown}")
        print(format_summary(summary, destinations, now))
        if configured or sources:
            print(format_sources(sources, troubled, configured, now))
        print(format_nodes(nodes, now, config.node.lease_s))
    return 0


def format_sources(sources: list[SourceRow], troubled: list[RetrievalRow],
                   configured: list[str], now: float) -> str:
    """The sources part of ``ossa status``: each source's last poll and its retrievals, then
    every retrieval that failed (or is being retried) with its reason."""
    lines = ["Sources:"]
    rows = {s.name: s for s in sources}
    for name in dict.fromkeys([*configured, *rows]):
        row = rows.get(name)
        note = "" if name in configured else " (not configured)"
        if row is None:
            lines.append(f"  {name}{note}: not polled, nothing retrieved yet")
            continue
        poll = ("never polled" if row.last_poll is None else
                f"last poll {_when(row.last_poll, now)}: {row.last_outcome}: {row.last_detail}")
        lines.append(f"  {name}{note}: {poll}; retrievals pending {row.pending}, "
                     f"failed {row.failed}")
    if troubled:
        lines.append("Retrievals failing (`ossa retry --source NAME` re-queues failed ones):")
        for r in troubled:
            lines.append(
                f"  study {r.study_uid} from {r.source}: {r.state}, {r.attempts} attempt(s), "
                f"last {_when(r.last_attempt, now)}: {r.last_outcome}: {r.last_detail}"
                + (f"; next {_when(r.next_attempt, now)}" if r.state == "pending" else "")
            )
    return "\n".join(lines)


def format_nodes(nodes: list[NodeRow], now: float, lease_s: float) -> str:
    """The nodes part of ``ossa status``: each node's last heartbeat and what it holds; a
    node silent for longer than a lease is marked as such (its work is being taken over)."""
    if not nodes:
        return "Nodes:      none has run yet"
    lines = ["Nodes:"]
    for node in nodes:
        silent = now - node.heartbeat
        state = f"SILENT {silent:.0f} s" if silent > lease_s else "alive"
        lines.append(
            f"  {node.name} ({node.host}, pid {node.pid}, {node.version}): {state}, "
            f"last heartbeat {_when(node.heartbeat, now)}, holds {node.jobs} job(s) and "
            f"{node.deliveries} deliver{'y' if node.deliveries == 1 else 'ies'}"
        )
    return "\n".join(lines)


def retry(args: argparse.Namespace) -> int:
    """``ossa retry``: re-queue failed deliveries (of a study, a destination, or all)."""
    opened = _open(args)
    if isinstance(opened, int):
        return opened
    config, store = opened
    with store:
        if args.destination and args.destination not in {d.name for d in config.destinations}:
            return fail(f"--destination: {args.destination!r} is not a configured destination")
        if args.source and args.source not in {s.name for s in config.sources}:
            return fail(f"--source: {args.source!r} is not a configured source")
        count = 0
        if not args.source:
            count = store.retry(
                study_uid=args.study, destination=args.destination, all_failed=args.all_failed
            )
        retrievals = 0
        if not args.destination:
            retrievals = store.retry_retrievals(source=args.source, study_uid=args.study)
    if args.source:
        print(f"{retrievals} retrieval(s) re-queued")
    else:
        print(f"{count} deliver{'y' if count == 1 else 'ies'} re-queued"
              + (f", {retrievals} retrieval(s) re-queued" if retrievals else ""))
    return 0


def analyze(args: argparse.Namespace) -> int:
    """``ossa analyze --source NAME --study UID [--wait S]``: queue one study's retrieval
    and report; with ``--wait``, follow it until it is reported (0), fails (1) or the wait
    ends (3). The running service (any node) does the work."""
    from worker.sources.demand import AnalyzeRequestError, analysis_state, request_analysis

    opened = _open(args)
    if isinstance(opened, int):
        return opened
    config, store = opened
    with store:
        try:
            request_analysis(store, tuple(s.name for s in config.sources), args.source,
                             args.study, requested_by="cli")
        except AnalyzeRequestError as exc:
            return fail(str(exc))
        print(f"Study {args.study}: retrieval from {args.source} queued")
        if args.wait is None:
            return 0
        end = time.monotonic() + args.wait
        shown = ""
        while True:
            state = analysis_state(store, args.source, args.study)
            line = f"{state.stage}: {state.detail}"
            if line != shown:
                print(line + (f" -> {state.result}" if state.result else ""), flush=True)
                shown = line
            if state.finished:
                return 0 if state.stage == "reported" else 1
            if time.monotonic() >= end:
                print(f"still {state.stage} after {args.wait:g} s; `ossa status` follows it")
                return 3
            time.sleep(0.5)


def reload(args: argparse.Namespace) -> int:
    """``ossa reload``: validate ``config.toml`` and send SIGHUP to this host's running
    ``ossa serve`` (the node the file names), which re-reads it (:mod:`worker.reload`).

    An invalid file is refused here, with the reason, and no signal is sent. The process
    is the one the state store records for this node, on this host, with a heartbeat
    within a lease: a stale record is never signalled.
    """
    opened = _open(args)
    if isinstance(opened, int):
        return opened
    _, store = opened
    with store:
        node, now, lease_s = store.node, store.now(), store.lease_s
        rows = [row for row in store.nodes() if row.name == node]
    host = socket.gethostname()
    if not rows or rows[0].host != host:
        return fail(f"no `ossa serve` of node {node} has run on this host ({host})", 1)
    row = rows[0]
    if now - row.heartbeat > lease_s or not _is_ossa(row.pid):
        return fail(f"node {node}: `ossa serve` (pid {row.pid}) is not running", 1)
    os.kill(row.pid, signal.SIGHUP)
    print(f"Sent SIGHUP to ossa serve of node {node} (pid {row.pid}); what changed, or why the"
          " file was refused, is in its log")
    return 0


def _is_ossa(pid: int) -> bool:
    """Whether ``pid`` is a live process running Ossa (its command line names it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ossa" in cmdline or b"-m\x00worker" in cmdline


@dataclass(frozen=True)
class Check:
    """One line of ``ossa check-config``."""

    what: str
    ok: bool
    detail: str


def run_checks(config: Config, config_path: Path) -> list[Check]:
    """Check the model bundle, the storage root and every destination.

    A DIMSE destination gets a C-ECHO; a STOW-RS one a QIDO-RS ``GET {url}/studies?limit=1``
    with its credentials and TLS settings, which checks both and stores nothing.
    """
    from dicom_io.send import send_c_echo
    from dicom_io.stow import probe_dicomweb
    from models.serving.manifest import BundleError, open_bundle
    from worker.delivery import dimse_peer, stow_rs_peer

    checks = [Check("config", True, str(config_path))]
    try:
        bundle = open_bundle(config.model.bundle)
        checks.append(Check("model.bundle", True, f"{bundle.version} ({config.model.bundle})"))
    except (BundleError, OSError) as exc:
        checks.append(Check("model.bundle", False, str(exc)))
    key = "storage.root" if config.storage.database is None else "storage.database"
    try:
        with open_store(config.storage, config.node) as store:
            checks.append(Check(key, True, f"{store.location.shown} (schema {SCHEMA_VERSION})"))
    except (SchemaError, StoreError, OSError) as exc:
        checks.append(Check(key, False, f"{config.storage.database or config.storage.root}: "
                                         f"{exc}"))
    for source in config.sources:
        if isinstance(source, DicomwebSource):
            result = probe_dicomweb(stow_rs_peer(source))
            checks.append(Check(f"source {source.name}", result.ok, f"QIDO-RS: {result.detail}"))
        elif isinstance(source, DimseSource):
            result = send_c_echo(dimse_peer(source), calling_ae_title=config.listener.ae_title)
            checks.append(Check(f"source {source.name}", result.ok, f"C-ECHO: {result.detail}"))
    if not config.destinations:
        checks.append(Check("destinations", True, "none configured: SRs stay on disk"))
    for destination in config.destinations:
        if not isinstance(destination, DimseDestination):
            try:
                result = probe_dicomweb(stow_rs_peer(destination))
            except ValueError as exc:  # e.g. a port out of range
                checks.append(Check(f"destination {destination.name}", False, str(exc)))
                continue
            checks.append(Check(f"destination {destination.name}", result.ok,
                                f"QIDO-RS: {result.detail}"))
            continue
        result = send_c_echo(dimse_peer(destination), calling_ae_title=config.listener.ae_title)
        checks.append(Check(f"destination {destination.name}", result.ok,
                            f"C-ECHO: {result.detail}"))
    return checks


def check_config(args: argparse.Namespace) -> int:
    """``ossa check-config``: validate, check and C-ECHO; non-zero if anything is wrong."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{'config':<24} FAIL  {exc}")
        return 1
    checks = run_checks(config, args.config)
    width = max(len(c.what) for c in checks)
    for c in checks:
        print(f"{c.what:<{width}}  {'ok  ' if c.ok else 'FAIL'}  {c.detail}")
    return 0 if all(c.ok for c in checks) else 1
