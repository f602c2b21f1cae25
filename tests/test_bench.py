"""The benchmarks (bench/) still run: each in its tiny ``--quick`` mode, checking only that it
writes its JSON with the expected keys, its plot and the results table. No timing is
asserted: performance is measured by ``make bench``, never tested."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
TOP_KEYS = {"benchmark", "title", "date", "duration_s", "quick", "machine", "versions",
            "parameters", "notes", "figures", "ratios"}
FIGURE_KEYS = {"name", "unit", "labels", "median", "q1", "q3", "min", "max", "n", "samples"}
#: Labels that each benchmark's figures must include (one figure at least per entry).
EXPECTED_LABELS: dict[str, list[Mapping[str, object]]] = {
    "ingest": [{"receiver": r} for r in ("ossa", "dcmtk", "pynetdicom")],
    "inference": [{"part": "network", "backend": "onnxruntime"},
                  {"part": "network", "backend": "torch"},
                  *[{"part": "whole_path", "syntax": s}
                    for s in ("uncompressed", "jpeg-ls", "jpeg2000")]],
    "end_to_end": [{"kind": k} for k in ("latency", "latency_p95", "stage", "rss")],
    "scaling": [{"part": "ingest"}, {"part": "network"}],
}


@pytest.mark.integration
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_writes_its_results(name: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out), "--work",
         str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert TOP_KEYS <= set(results)
    assert results["benchmark"] == name and results["quick"] is True
    assert {"cpu", "cores", "memory_gib"} <= set(results["machine"])
    assert results["versions"]["pydicom"]
    assert results["figures"]
    for figure in results["figures"] + results["ratios"]:
        assert FIGURE_KEYS - {"unit"} <= set(figure)
        assert figure["n"] == len(figure["samples"]) >= 1
    for labels in EXPECTED_LABELS[name]:
        assert any(labels.items() <= f["labels"].items() for f in results["figures"]), labels
    assert (out / f"{name}.png").stat().st_size > 0
    assert results["title"] in (out / "README.md").read_text(encoding="utf-8")
