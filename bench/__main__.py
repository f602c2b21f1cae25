"""Run every benchmark, each in its own process, and rebuild the results table.

    .venv/bin/python -m bench [--quick] [--only ingest inference] [--out bench/results]

``make bench`` runs this. Each benchmark writes ``<out>/<name>.json`` and ``<out>/<name>.png``
and rebuilds ``<out>/README.md``; this prints how long each took against the time budget
(20 minutes on 2 CPU cores, issue 11). Options after ``--`` go to every benchmark.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench import common

#: The benchmarks, in the order they run (module ``bench.<name>``).
BENCHMARKS = ("ingest", "inference", "end_to_end", "scaling")
#: ``make bench`` must finish within this (issue 11).
BUDGET_S = 20 * 60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every benchmark in its tiny mode")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {common.RESULTS}, --quick "
                        f"{common.WORK}/results-quick)")
    p.add_argument("--work", type=Path, default=common.WORK)
    args, extra = p.parse_known_args()
    args.out = args.out or common.default_out(args.quick)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    durations: dict[str, float] = {}
    failed = []
    for name in args.only:
        command = [sys.executable, "-m", f"bench.{name}", "--out", str(args.out), "--work",
                   str(args.work), *(["--quick"] if args.quick else []), *extra]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command).returncode
        durations[name] = time.perf_counter() - start
        if code != 0:
            failed.append(name)
            print(f"== {name} FAILED (exit {code})", flush=True)
    total = sum(durations.values())
    print("\n".join(f"{name:12s} {seconds:7.0f} s" for name, seconds in durations.items()))
    print(f"{'total':12s} {total:7.0f} s (budget {BUDGET_S} s"
          f"{', EXCEEDED' if total > BUDGET_S else ''}); results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
