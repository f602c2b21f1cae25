"""End to end: studies through ``storescu`` -> ``ossa serve`` -> Orthanc; the time from a
study's last instance received to its SR stored in Orthanc, less the completion timeout.

K studies of 3 synthetic 3000 x 2500 12-bit DX wrist radiographs (in scope, so classified)
are sent one study per association, a new study every ``--gap`` seconds, to ``ossa serve``
with the shipped bundle (ONNX Runtime), its configured defaults (secondary captures on) and
one DIMSE destination, a real Orthanc. For each study:

- *received*: the time Ossa recorded its last instance (``studies.last_received`` in the
  state store, after the fsync);
- *in Orthanc*: the time the benchmark first saw the SR in Orthanc's change log, polled every
  50 ms (``GET /changes``), so up to 50 ms late;
- *latency* = in Orthanc - received - ``study.completion_timeout_s``. Its p50 and p95 over
  the studies are the figures of issue 11. From the state store, the same time is split into
  the scheduler's wait past the timeout, the queue, classify + report, and the delivery.

The peak RSS (VmHWM) of the ``ossa serve`` process is read from ``/proc`` at the end.

    .venv/bin/python -m bench.end_to_end [--quick] [--studies 20] [--gap 2] [--timeout 1]
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.radiographs import study_uids, write_corpus
from harness.peers import Orthanc, Ossa, PeerError, PostgresServer, storescu, wait_until


class ChangeWatcher(threading.Thread):
    """Polls Orthanc's change log and the service's RSS until stopped."""

    def __init__(self, orthanc: Orthanc, ossa: Ossa, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.orthanc = orthanc
        self.ossa = ossa
        self.interval = interval
        self.seen: dict[str, float] = {}  # Orthanc instance ID -> first seen (time.time())
        self.rss: list[tuple[float, float]] = []  # (time.time(), MiB)
        self.errors = 0
        self._stop_event = threading.Event()
        self._since = 0

    def run(self) -> None:
        last_rss = 0.0
        while not self._stop_event.is_set():
            now = time.time()
            try:
                while True:
                    page = self.orthanc.get(f"/changes?since={self._since}&limit=1000")
                    for change in page["Changes"]:
                        if change["ChangeType"] == "NewInstance":
                            self.seen.setdefault(change["ID"], now)
                    self._since = page["Last"]
                    if page["Done"]:
                        break
            except OSError:
                self.errors += 1
            if now - last_rss >= 0.2:
                rss = self.ossa.rss_mib()
                if rss is not None:
                    self.rss.append((now, rss))
                last_rss = now
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def sr_arrivals(orthanc: Orthanc, seen: dict[str, float]) -> dict[str, float]:
    """Study Instance UID -> time its (first) SR was seen in Orthanc."""
    found: dict[str, float] = {}
    for instance, when in seen.items():
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        if tags.get("Modality") == "SR":
            study = str(tags["StudyInstanceUID"])
            found[study] = min(when, found.get(study, when))
    return found


def store_times(state_store: Path | str) -> dict[str, dict[str, float]]:
    """Per study, from Ossa's state store (a SQLite file or a PostgreSQL URL): last received,
    job created/started/finished and the SR's delivery (the latest job of each study)."""
    query = (
        "SELECT s.study_uid, s.last_received, j.created, j.started, j.finished,"
        " d.last_attempt FROM studies s JOIN jobs j ON j.study_id = s.id"
        " JOIN objects o ON o.job_id = j.id AND o.kind = 'sr'"
        " JOIN deliveries d ON d.object_id = o.id AND d.state = 'delivered'"
        " ORDER BY j.revision"
    )
    if isinstance(state_store, str):
        import psycopg

        with psycopg.connect(state_store, autocommit=True) as pg:
            rows = pg.execute(query).fetchall()
    else:
        db = sqlite3.connect(f"file:{state_store}?mode=ro", uri=True)
        try:
            rows = db.execute(query).fetchall()
        finally:
            db.close()
    keys = ("received", "job_created", "job_started", "job_finished", "sr_delivered")
    return {str(r[0]): dict(zip(keys, map(float, r[1:]), strict=True)) for r in rows}


def run(work: Path, files: list[Path], *, per_study: int, gap: float, timeout: float,
        deadline: float, database: str | None = None) -> dict[str, Any]:
    """Send the studies, wait for their SRs, return the raw times and the service's RSS;
    the state store on PostgreSQL at ``database``, else SQLite."""
    folder = work / "run" / "end_to_end"
    shutil.rmtree(folder, ignore_errors=True)
    studies = [files[i : i + per_study] for i in range(0, len(files), per_study)]
    uids = study_uids([s[0] for s in studies])
    with Orthanc(folder / "orthanc") as orthanc, \
            Ossa(folder / "ossa", completion_timeout_s=timeout,
                 destination=(orthanc.aet, orthanc.dicom_port), database=database) as ossa:
        watcher = ChangeWatcher(orthanc, ossa)
        watcher.start()
        sends = []
        try:
            for study in studies:
                started = time.perf_counter()
                sends.append(storescu(study, ossa.port, ossa.called_aet))
                time.sleep(max(0.0, gap - (time.perf_counter() - started)))

            def all_srs() -> bool:
                ossa.check_alive()
                return len(sr_arrivals(orthanc, dict(watcher.seen))) >= len(studies)

            wait_until(all_srs, timeout=deadline, what=f"{len(studies)} SRs in Orthanc",
                       interval=1.0)
        finally:
            watcher.stop()
        peak = ossa.peak_rss_mib()
        arrivals = sr_arrivals(orthanc, watcher.seen)
        ossa.stop()
        times = store_times(database or ossa.state_store)
        log_tail = ossa.log_tail(5)
    shutil.rmtree(folder, ignore_errors=True)
    return {"uids": uids, "arrivals": arrivals, "store": times, "sends": sends,
            "peak_rss_mib": peak, "rss": watcher.rss, "poll_errors": watcher.errors,
            "log_tail": log_tail}


def add_figures(report: common.Report, result: dict[str, Any], *, backend: str,
                timeout: float, studies: int) -> None:
    """The latency, stage, RSS and send figures of one run (``backend``: its state store)."""
    k = studies
    prefix = "" if backend == "sqlite" else "PostgreSQL state store: "
    latency, missing = [], []
    for uid in result["uids"]:
        if uid not in result["arrivals"] or uid not in result["store"]:
            missing.append(uid)
            continue
        latency.append(result["arrivals"][uid] - result["store"][uid]["received"] - timeout)
    if missing:
        raise PeerError(f"{len(missing)} studies have no SR in Orthanc or no row in the store:"
                        f"\n{result['log_tail']}")
    report.figure(f"{prefix}latency after the completion timeout, over {k} studies", "s",
                  latency, higher_is_better=False, kind="latency", backend=backend)
    report.figure(f"{prefix}latency p95", "s", [common.percentile(latency, 95)],
                  higher_is_better=False, kind="latency_p95", backend=backend)
    stages = {
        "scheduler wait past the timeout": ("received", "job_created", timeout),
        "queued (job created -> classify started)": ("job_created", "job_started", 0.0),
        "classify + report (3 images)": ("job_started", "job_finished", 0.0),
        "delivery to Orthanc": ("job_finished", "sr_delivered", 0.0),
    }
    for name, (start, end, less) in stages.items():
        report.figure(f"  {prefix}{name}", "s",
                      [t[end] - t[start] - less for t in result["store"].values()],
                      higher_is_better=False, kind="stage", stage=start + "->" + end,
                      backend=backend)
    report.figure(f"{prefix}peak RSS of ossa serve (VmHWM)", "MiB",
                  [result["peak_rss_mib"] or 0.0], higher_is_better=False, kind="rss",
                  backend=backend)
    report.figure(f"{prefix}storescu send of one study (3 instances)", "s", result["sends"],
                  higher_is_better=False, kind="send", backend=backend)


def plot(report: common.Report) -> Any:
    fig, axes = common.new_plot(1, 2)
    ax = axes[0][0]
    latency = report.find(kind="latency", backend="sqlite")[0].samples
    ax.hist(latency, bins=min(20, max(5, len(latency))), color="tab:blue")
    for q, style in ((50, "-"), (95, "--")):
        ax.axvline(common.percentile(latency, q), color="k", linestyle=style,
                   label=f"p{q} {common.percentile(latency, q):.2f} s")
    ax.set_xlabel("last instance received -> SR in Orthanc, less completion timeout (s)")
    ax.set_ylabel("studies")
    ax.legend(fontsize=8)
    ax.set_title("End-to-end latency per study")
    ax = axes[0][1]
    rss = report.extra.get("rss_mib", [])
    if rss:
        ax.plot([t for t, _ in rss], [m for _, m in rss])
    ax.set_xlabel("seconds since the first study was sent")
    ax.set_ylabel("RSS of ossa serve (MiB)")
    ax.set_title(f"Peak RSS {report.find(kind='rss', backend='sqlite')[0].samples[0]:.0f} MiB")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=None, help="studies (default 20, --quick 2)")
    p.add_argument("--gap", type=float, default=None,
                   help="seconds between the starts of two studies' sends (default 2)")
    p.add_argument("--timeout", type=float, default=None,
                   help="Ossa's study.completion_timeout_s (default 1, --quick 0.5)")
    args = p.parse_args(argv)
    args.out = args.out or common.default_out(args.quick)
    k = args.studies or (2 if args.quick else 20)
    gap = args.gap if args.gap is not None else (0.5 if args.quick else 2.0)
    timeout = args.timeout if args.timeout is not None else (0.5 if args.quick else 1.0)
    rows, columns = (300, 250) if args.quick else (3000, 2500)
    per_study = 3
    report = common.Report("end_to_end", "End to end: storescu -> ossa serve -> Orthanc",
                           args.quick)
    files = write_corpus(args.work, f"e2e-{rows}x{columns}-{k}x{per_study}", count=k * per_study,
                         rows=rows, columns=columns, per_study=per_study, modality="DX",
                         distinct_pixels=per_study)
    report.parameters = {"studies": k, "images_per_study": per_study, "rows": rows,
                         "columns": columns, "gap_s": gap, "completion_timeout_s": timeout,
                         "orthanc_poll_s": 0.05, "bundle": "bundles/fracatlas",
                         "backend": "onnxruntime"}
    with PostgresServer() as server:
        results = {
            "sqlite": run(args.work, files, per_study=per_study, gap=gap, timeout=timeout,
                          deadline=120 + 10 * k),
            "postgresql": run(args.work, files, per_study=per_study, gap=gap, timeout=timeout,
                              deadline=120 + 10 * k, database=server.new_database()),
        }
    for backend, result in results.items():
        add_figures(report, result, backend=backend, timeout=timeout, studies=k)
    result = results["sqlite"]
    t0 = result["rss"][0][0] if result["rss"] else 0.0
    report.extra["rss_mib"] = [(round(t - t0, 2), m) for t, m in result["rss"]]
    report.notes += [
        f"Latency: SR first seen in Orthanc (polled every 50 ms) - last instance received "
        f"(Ossa's state store) - completion timeout ({timeout} s); p50 is the median row, p95 "
        f"its own row. A new study every {gap} s, one association per study.",
        "Ossa as configured by default apart from the listener, storage and HTTP (off): "
        "secondary captures on, logging INFO; the stage rows come from its state store.",
        "Peak RSS is VmHWM of the `ossa serve` process (this environment has the [train] "
        "extra installed; the service does not import torch).",
    ]
    if result["poll_errors"]:
        report.notes.append(f"{result['poll_errors']} polls of Orthanc failed (retried).")
    for backend in results:
        latency = report.find(kind="latency", backend=backend)[0].samples
        print(f"end to end ({backend}): p50 {common.percentile(latency, 50):.2f} s, p95 "
              f"{common.percentile(latency, 95):.2f} s, peak RSS "
              f"{results[backend]['peak_rss_mib']} MiB", flush=True)
    report.write(args.out, plot)


if __name__ == "__main__":
    main()
