"""Ingest: instances/s that DCMTK ``storescu`` gets into Ossa, DCMTK ``storescp`` and
pynetdicom's ``storescp``, over 1 and 4 parallel associations.

Two corpora: ``large``, synthetic 3000 x 2500 12-bit DX instances (about 15 MB each), and
``small``, 128 x 128 CR instances (about 33 kB). For each corpus, number of senders and
repeat, the three receivers take turns (their order rotates every repeat), each freshly
started on an empty folder, on the same files; the time is the wall clock from starting the
``storescu`` processes to the last one exiting. Ratios Ossa/DCMTK and Ossa/pynetdicom are
taken repeat by repeat. A fourth turn, "durable write alone", writes the same files with
Ossa's ``Spool.write`` and no network: the ceiling the disk sets for a receiver that syncs.

Ossa runs as ``ossa serve`` with the shipped bundle and a one-day completion timeout, so that
only its listener works during the measurement (no classification competes for the CPU).
It is durable: every instance is fsynced with its folder (and recorded in SQLite) before the
success status; neither ``storescp`` syncs anything to disk.

    .venv/bin/python -m bench.ingest [--quick] [--large 100] [--small 1000] [--repeat 3]
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.radiographs import sizes, write_corpus
from harness.peers import RECEIVERS, Ossa, PeerError, PostgresServer, Receiver, storescu
from worker.spool import Spool

#: Not a receiver: the corpus written straight to a spool with Ossa's own durable write
#: (``Spool.write``: fsync of the file, rename, fsync of the folder), no network; the
#: ceiling the disk puts on any receiver that syncs before it answers.
DURABLE_WRITE = "durable-write"


@dataclass(frozen=True)
class Corpus:
    """A folder of instances to send, and how they were made."""

    name: str
    files: list[Path]
    rows: int
    columns: int

    def describe(self) -> dict[str, Any]:
        total = sizes(self.files)
        return {"instances": len(self.files), "rows": self.rows, "columns": self.columns,
                "bytes": total, "mean_instance_bytes": total // max(len(self.files), 1)}


def corpora(work: Path, *, large: int, small: int, quick: bool) -> list[Corpus]:
    """The ``large`` (3000 x 2500 DX) and ``small`` (128 x 128 CR) corpora (sizes reduced by
    ``quick``)."""
    rows, columns = (300, 250) if quick else (3000, 2500)
    return [
        Corpus("large", write_corpus(work, f"ingest-large-{rows}x{columns}-{large}",
                                     count=large, rows=rows, columns=columns, per_study=3,
                                     modality="DX"), rows, columns),
        Corpus("small", write_corpus(work, f"ingest-small-128x128-{small}", count=small,
                                     rows=128, columns=128, per_study=4, modality="CR"),
               128, 128),
    ]


#: Ossa with its state store on PostgreSQL (a private server the benchmark starts).
OSSA_POSTGRESQL = "ossa-postgresql"


def one_round(receiver: str, corpus: Corpus, senders: int, work: Path,
              factories: Mapping[str, Callable[[Path], Receiver]]) -> float:
    """Instances/s of one send of ``corpus`` to a freshly started ``receiver``."""
    folder = work / "run" / receiver
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with factories[receiver](folder) as peer:
            seconds = storescu(corpus.files, peer.port, peer.called_aet, parallel=senders)
            stored = peer.stored_files()
        if stored != len(corpus.files):
            raise PeerError(f"{receiver} stored {stored} of {len(corpus.files)} files; "
                            f"log in {folder}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.sync()  # write-back of one round must not slow the next receiver down
    return len(corpus.files) / seconds


def durable_write_round(corpus: Corpus, senders: int, work: Path) -> float:
    """Instances/s of writing ``corpus`` with ``Spool.write`` from ``senders`` threads."""
    folder = work / "run" / DURABLE_WRITE
    shutil.rmtree(folder, ignore_errors=True)
    spool = Spool(folder)
    shares = [corpus.files[i::senders] for i in range(senders)]

    def write(files: list[Path]) -> None:
        for path in files:
            spool.write(f"instances/bench/{path.stem.split('-')[0]}/{path.stem}.dcm",
                        path.read_bytes())
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(senders) as pool:
            list(pool.map(write, shares))
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.sync()
    return len(corpus.files) / seconds


def measure(report: common.Report, corpus: Corpus, senders: Sequence[int],
            receivers: Sequence[str], repeat: int, work: Path, *, figure_prefix: str = "",
            factories: Mapping[str, Callable[[Path], Receiver]] = RECEIVERS,
            ) -> dict[tuple[str, int], common.Figure]:
    """Instances/s of every receiver at every number of senders, receivers taking turns."""
    found: dict[tuple[str, int], common.Figure] = {}
    for n in senders:
        samples: dict[str, list[float]] = {r: [] for r in receivers}
        for i in range(repeat):
            order = list(receivers[i % len(receivers):]) + list(receivers[:i % len(receivers)])
            for receiver in order:
                rate = (durable_write_round(corpus, n, work) if receiver == DURABLE_WRITE
                        else one_round(receiver, corpus, n, work, factories))
                samples[receiver].append(rate)
                print(f"  {corpus.name:5s} {n} sender(s) {receiver:10s} {rate:8.1f} inst/s",
                      flush=True)
        for receiver in receivers:
            found[receiver, n] = report.figure(
                f"{figure_prefix}{RECEIVER_LABEL[receiver]}, {corpus.name} "
                f"({corpus.rows}x{corpus.columns}, {len(corpus.files)}), {n} sender(s)",
                "instances/s", samples[receiver], receiver=receiver, corpus=corpus.name,
                senders=n)
    return found


RECEIVER_LABEL = {"ossa": "Ossa", OSSA_POSTGRESQL: "Ossa on PostgreSQL",
                  "dcmtk": "DCMTK storescp",
                  "pynetdicom": "pynetdicom storescp",
                  DURABLE_WRITE: "durable write alone (no network)"}


def add_ratios(report: common.Report, corpus: Corpus,
               figures: dict[tuple[str, int], common.Figure]) -> None:
    """Ossa/DCMTK and Ossa/pynetdicom at each number of senders."""
    for (receiver, n), fig in figures.items():
        if receiver == "ossa":
            continue
        ossa = figures.get(("ossa", n))
        if ossa is None:
            continue
        if receiver == OSSA_POSTGRESQL:  # PostgreSQL against SQLite, the same Ossa
            report.ratio(f"Ossa on PostgreSQL / on SQLite, {corpus.name}, {n} sender(s)",
                         fig, ossa, corpus=corpus.name, senders=n, against="ossa")
            continue
        report.ratio(f"Ossa / {RECEIVER_LABEL[receiver]}, {corpus.name}, {n} sender(s)",
                     ossa, fig, corpus=corpus.name, senders=n, against=receiver)


def plot(report: common.Report) -> Any:
    corpus_names = [c for c in ("large", "small") if report.find(corpus=c)]
    fig, axes = common.new_plot(1, len(corpus_names))
    for ax, corpus in zip(axes[0], corpus_names, strict=True):
        senders = sorted({f.labels["senders"] for f in report.find(corpus=corpus)})
        series = {}
        for receiver in RECEIVER_LABEL:
            figs = [next(iter(report.find(corpus=corpus, receiver=receiver, senders=n)), None)
                    for n in senders]
            if any(figs):
                series[RECEIVER_LABEL[receiver]] = figs
        common.plot_bars(ax, [f"{n} sender(s)" for n in senders], series, "instances/s")
        params = report.parameters["corpora"][corpus]
        ax.set_title(f"{corpus}: {params['instances']} x {params['rows']}x{params['columns']}")
    fig.suptitle("Ingest: storescu to each receiver (median, IQR)")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--large", type=int, default=None,
                   help="3000 x 2500 instances (issue 11: 100; default 100, --quick 4)")
    p.add_argument("--small", type=int, default=None,
                   help="128 x 128 instances (default 1000, --quick 20)")
    p.add_argument("--senders", type=int, nargs="+", default=None,
                   help="parallel associations (default 1 4, --quick 2)")
    p.add_argument("--receivers", nargs="+",
                   default=["ossa", OSSA_POSTGRESQL, "dcmtk", "pynetdicom", DURABLE_WRITE],
                   choices=[*RECEIVERS, OSSA_POSTGRESQL, DURABLE_WRITE])
    args = p.parse_args(argv)
    args.out = args.out or common.default_out(args.quick)
    large = args.large or (4 if args.quick else 100)
    small = args.small or (20 if args.quick else 1000)
    repeat = args.repeat or (1 if args.quick else 3)
    args.senders = args.senders or ([2] if args.quick else [1, 4])
    report = common.Report("ingest", "Ingest: storescu into Ossa, DCMTK storescp, pynetdicom "
                           "storescp", args.quick)
    sets = corpora(args.work, large=large, small=small, quick=args.quick)
    report.parameters = {
        "corpora": {c.name: c.describe() for c in sets},
        "senders": args.senders, "repeat": repeat, "receivers": args.receivers,
        "issue_large_instances": 100,
        "commands": {
            "sender": "storescu -aet STORESCU -aec <AE> 127.0.0.1 <port> <files> "
                      "(one process per sender, files dealt round-robin)",
            "dcmtk": "storescp --fork -pdu 131072 -aet STORESCP -od <dir> <port>",
            "pynetdicom": "python -m pynetdicom storescp -q -pdu 0 -aet STORESCP -od <dir> "
                          "<port>",
            "ossa": "ossa serve --config <loopback listener, completion_timeout_s = 86400, "
                    "bundles/fracatlas, http off, logging INFO>",
            DURABLE_WRITE: "worker.spool.Spool.write(<path>, <file bytes>) per file, one "
                           "thread per sender",
        },
    }
    report.notes += [
        "Ossa is measured with classification held off (completion timeout one day): its "
        "listener alone, durable (fsync of file and folder, SQLite row) before each success "
        "status; DCMTK and pynetdicom storescp write without fsync.",
        "'durable write alone' writes the same files with Ossa's Spool.write (fsync of the "
        "file, rename, fsync of the folder) and no network: what the disk allows any receiver "
        "that keeps the durability promise. A receiver that does not sync (storescp) is "
        "bounded by memory bandwidth instead, until the page cache's dirty limit.",
        "Each round starts the receiver afresh on an empty folder; the time runs from "
        "starting the storescu processes to the last exit (association set-up included).",
    ]
    if large != 100:
        report.notes.append(f"large corpus: {large} instances instead of issue 11's 100 "
                            "(to keep `make bench` within its time budget)")
    with ExitStack() as stack:
        factories: dict[str, Callable[[Path], Receiver]] = dict(RECEIVERS)
        if OSSA_POSTGRESQL in args.receivers:
            server = stack.enter_context(PostgresServer())
            factories[OSSA_POSTGRESQL] = lambda folder: Ossa(folder,
                                                             database=server.new_database())
            report.notes.append(
                "Ossa on PostgreSQL: the same Ossa with `storage.database` on a private "
                "PostgreSQL server on loopback (Debian's, default settings: fsync and "
                "synchronous_commit on), a new database each round.")
        for corpus in sets:
            print(f"ingest: {corpus.name} corpus, {corpus.describe()}", flush=True)
            figures = measure(report, corpus, args.senders, args.receivers, repeat, args.work,
                              factories=factories)
            add_ratios(report, corpus, figures)
    report.write(args.out, plot)


if __name__ == "__main__":
    main()
