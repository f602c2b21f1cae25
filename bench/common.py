"""What every benchmark shares: timing, repeats, summaries, the machine, JSON, plots, tables.

A benchmark builds a :class:`Report`: its parameters, the figures it measured (each a list of
samples, one per repeated run, summarised as median, quartiles and min/max), the ratios of the
comparisons it made (paired: side A and side B of the same repeat, on the same files), notes
that say what the figures mean, and a plot. :meth:`Report.write` writes
``<out>/<name>.json`` and ``<out>/<name>.png`` and rebuilds ``<out>/README.md``, the table of
every benchmark whose JSON is in ``<out>``.

Performance is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure as PlotFigure

#: Where ``make bench`` writes the results (JSON, PNG and the README table).
RESULTS = Path("bench/results")
#: Scratch space: generated DICOM corpora (kept between runs) and the peers' storage.
WORK = Path("var/bench")

#: Distributions whose versions a result records.
PACKAGES = (
    "ossa", "pydicom", "pynetdicom", "highdicom", "numpy", "onnxruntime", "torch",
    "torchvision", "scikit-image", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg",
    "pyjpegls", "python-gdcm", "matplotlib",
)


# --- the machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, load and system of the machine running the benchmark."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _tool_version(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def versions() -> dict[str, str | None]:
    """Versions of the Python packages and peer programs involved (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["dcmtk"] = _tool_version("storescu", "--version")
    found["orthanc"] = _tool_version("Orthanc", "--version")
    return found


# --- figures ------------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """Median, quartiles (IQR), min and max of ``samples`` (at least one)."""
    if not samples:
        raise ValueError("samples must hold at least one value")
    ordered = sorted(float(s) for s in samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": _round(statistics.median(ordered)),
        "q1": _round(q1),
        "q3": _round(q3),
        "min": _round(ordered[0]),
        "max": _round(ordered[-1]),
        "n": len(ordered),
    }


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, linear between order statistics."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("samples must hold at least one value")
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float) -> float:
    """Four significant digits: enough for a noisy machine, short in the JSON."""
    return float(f"{value:.4g}")


@dataclass
class Figure:
    """One measured quantity: a sample per repeated run (or per study, for latencies)."""

    name: str
    unit: str
    labels: dict[str, Any]
    samples: list[float]
    higher_is_better: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "labels": self.labels,
            **summarize(self.samples),
            "samples": [_round(s) for s in self.samples],
            "higher_is_better": self.higher_is_better,
        }


@dataclass
class Ratio:
    """A comparison: ``a / b`` of each repeat where both sides ran (paired samples)."""

    name: str
    labels: dict[str, Any]
    samples: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "labels": self.labels, **summarize(self.samples),
                "samples": [_round(s) for s in self.samples]}


def paired_ratio(name: str, labels: Mapping[str, Any], a: Figure, b: Figure) -> Ratio:
    """``a / b`` repeat by repeat (the samples of both were taken in the same rounds)."""
    if len(a.samples) != len(b.samples):
        raise ValueError(f"{name}: {len(a.samples)} samples against {len(b.samples)}")
    return Ratio(name, dict(labels), [x / y for x, y in zip(a.samples, b.samples, strict=True)])


def time_call(run: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def rates(run: Callable[[], object], items: int, repeat: int, *, warmup: int = 1
          ) -> list[float]:
    """``items`` per second of ``repeat`` timed calls of ``run``, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    return [items / time_call(run) for _ in range(repeat)]


# --- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    """Everything one benchmark run measured, written as JSON, PNG and a README table."""

    name: str
    title: str
    quick: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _machine: dict[str, Any] = field(default_factory=machine)

    def figure(self, name: str, unit: str, samples: Iterable[float], *,
               higher_is_better: bool = True, **labels: Any) -> Figure:
        """Record a figure and return it."""
        fig = Figure(name, unit, labels, [float(s) for s in samples], higher_is_better)
        self.figures.append(fig)
        return fig

    def ratio(self, name: str, a: Figure, b: Figure, **labels: Any) -> Ratio:
        """Record the paired ratio ``a / b`` and return it."""
        ratio = paired_ratio(name, labels, a, b)
        self.ratios.append(ratio)
        return ratio

    def find(self, **labels: Any) -> list[Figure]:
        """The figures whose labels include all of ``labels``."""
        return [f for f in self.figures
                if all(f.labels.get(k) == v for k, v in labels.items())]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "title": self.title,
            "date": datetime.datetime.fromtimestamp(self.started, datetime.UTC)
            .isoformat(timespec="seconds"),
            "duration_s": round(time.time() - self.started, 1),
            "quick": self.quick,
            "machine": self._machine,
            "versions": versions(),
            "parameters": self.parameters,
            "notes": self.notes,
            "figures": [f.to_json() for f in self.figures],
            "ratios": [r.to_json() for r in self.ratios],
            **self.extra,
        }

    def write(self, out: Path, plot: Callable[[Report], PlotFigure] | None = None) -> Path:
        """Write ``<out>/<name>.json``, the plot ``<out>/<name>.png``, and the README table."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.json"
        data = self.to_json()
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        if plot is not None:
            fig = plot(self)
            fig.savefig(out / f"{self.name}.png", dpi=110)
            import matplotlib.pyplot as plt

            plt.close(fig)
        write_readme(out)
        print(f"{self.name}: {data['duration_s']:.0f} s, wrote {path}")
        return path


# --- the README table ---------------------------------------------------------------------

#: Order of the benchmarks in the README table.
ORDER = ("ingest", "inference", "end_to_end", "scaling")


def _fmt(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _spread(row: Mapping[str, Any]) -> str:
    if row["n"] < 2:
        return "-"
    return f"{_fmt(row['q1'])}-{_fmt(row['q3'])} ({_fmt(row['min'])}-{_fmt(row['max'])})"


def markdown(results: Mapping[str, Any]) -> str:
    """One benchmark's section of the README: its figures and ratios as tables."""
    lines = [f"### {results['title']}", ""]
    machine_ = results["machine"]
    lines.append(
        f"{results['date']}, {results['duration_s']:.0f} s"
        f"{' (--quick: tiny sizes, not figures to quote)' if results['quick'] else ''}; "
        f"{machine_['cpu']}, {machine_['usable_cores']} cores, {machine_['memory_gib']} GiB, "
        f"load {machine_['load_average_at_start'][0]} at start."
    )
    lines.append("")
    lines += ["| measure | median | IQR (min-max) | n | unit |", "|---|---:|---:|---:|---|"]
    for row in results["figures"]:
        lines.append(f"| {row['name']} | {_fmt(row['median'])} | {_spread(row)} | {row['n']} "
                     f"| {row['unit']} |")
    if results["ratios"]:
        lines += ["", "| ratio | median | IQR (min-max) | n |", "|---|---:|---:|---:|"]
        for row in results["ratios"]:
            lines.append(f"| {row['name']} | {_fmt(row['median'])} | {_spread(row)} | "
                         f"{row['n']} |")
    if results["notes"]:
        lines.append("")
        lines += [f"- {note}" for note in results["notes"]]
    lines.append("")
    return "\n".join(lines)


def write_readme(out: Path) -> Path:
    """Rebuild ``<out>/README.md`` from every ``<out>/*.json`` result."""
    found = {}
    for path in sorted(out.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "benchmark" in data and "figures" in data:
            found[data["benchmark"]] = data
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    parts = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); each section comes from "
        "`<name>.json` beside this file, with its plot `<name>.png`. Medians over repeated "
        "runs; the spread is the interquartile range and, in brackets, min-max. A ratio is "
        "computed per repeat from both sides measured in the same round on the same files.",
        "",
    ]
    for name in names:
        parts.append(markdown(found[name]))
        parts.append(f"![{name}]({name}.png)\n")
    path = out / "README.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --- command line -------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--out``, ``--work``, ``--repeat``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and one repeat (seconds): keeps the script from rotting")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {RESULTS}, --quick {WORK}/results-quick)")
    p.add_argument("--work", type=Path, default=WORK,
                   help="scratch folder: generated DICOM files (kept) and peers' storage")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per figure")
    return p


def default_out(quick: bool) -> Path:
    """Where results go: ``bench/results``, or for ``--quick`` runs (tiny sizes, not figures
    to quote) a scratch folder, so that they never replace the committed results."""
    return WORK / "results-quick" if quick else RESULTS


def plot_bars(ax: Any, groups: Sequence[str], series: Mapping[str, Sequence[Figure | None]],
              ylabel: str) -> None:
    """Grouped bars (median) with IQR error bars: one group per ``groups`` entry, one bar per
    series key."""
    import numpy as np

    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, figs) in enumerate(series.items()):
        med, low, high = [], [], []
        for f in figs:
            if f is None:
                med.append(np.nan)
                low.append(0.0)
                high.append(0.0)
                continue
            s = summarize(f.samples)
            med.append(s["median"])
            low.append(s["median"] - s["q1"])
            high.append(s["q3"] - s["median"])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, med, width, yerr=[low, high],
               capsize=3, label=label)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def new_plot(rows: int = 1, columns: int = 1, *, width: float = 6.0, height: float = 4.0
             ) -> tuple[PlotFigure, Any]:
    """A matplotlib figure (Agg backend: no display needed) and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                             squeeze=False)
    return fig, axes
