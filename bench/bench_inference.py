"""Two-stage inference throughput: ONNX Runtime against PyTorch eager, same inputs, same run.

For each configuration — a bundle with PyTorch weights (default: ``var/models/fracatlas``, as
``make real-model`` leaves it) and the paper's (MobileNetV2, 224 px, width 1.0: untrained
weights, which cost the same arithmetic) — it
times the two-stage network alone (stage 1, then a stage-2 network, on every image),
without flip averaging, at batch 1, 8 and 32, and prints images/s for both backends and
their ratio, then the preprocessing cost (resize + CLAHE) per image.

    .venv/bin/python bench/bench_inference.py [--bundle var/models/fracatlas] [--threads 2]

Needs the ``[train]`` extra (PyTorch) for the comparison and to export the paper's
configuration. Performance is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.bundle import new_network, save_bundle
from models.engine import BACKENDS, TwoStageEngine
from models.enhance import Preprocessing, preprocess
from models.manifest import BundleInfo, open_bundle
from models.phantom import render_study
from models.predict import make_runner
from models.taxonomy import MURA_TAXONOMY


def _paper_bundle(root: Path) -> Path:
    """An untrained MobileNetV2 bundle at 224 px, width 1.0 (the paper's configuration)."""
    torch.manual_seed(0)
    preprocessing = Preprocessing(input_size=224, kernel_size=56)
    network = new_network(MURA_TAXONOMY, architecture="mobilenet_v2", width_mult=1.0,
                          in_channels=1).eval()
    return save_bundle(root / "paper-224", network, architecture="mobilenet_v2",
                       width_mult=1.0, preprocessing=preprocessing,
                       thresholds=dict.fromkeys(MURA_TAXONOMY.assessed, 0.5),
                       threshold_rule="0.5", name="paper-224")


def _rate(run: Callable[[], object], images: int, repeat: int) -> tuple[float, float]:
    """Median and spread (min-max) of images/s over ``repeat`` timed runs after a warm-up."""
    run()
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates), max(rates) - min(rates)


def bench_bundle(info: BundleInfo, *, threads: int, batches: tuple[int, ...], total: int,
                 repeat: int) -> list[dict[str, Any]]:
    """Images/s of both backends for one bundle, per batch size."""
    size = info.manifest.preprocessing.input_size
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(total, info.manifest.preprocessing.channels, size, size))
    inputs = inputs.astype(np.float32)
    engines = {
        backend: {b: TwoStageEngine(make_runner(info, backend=backend, threads=threads),
                                    info.manifest.taxonomy, flip_tta=False, batch_size=b)
                  for b in batches}
        for backend in BACKENDS
    }
    # every image through stage 1 and then a stage-2 network (the first assessed class), so
    # that the figure is the cost of the two-stage network whatever stage 1 would route
    route = [info.manifest.taxonomy.index(info.manifest.taxonomy.assessed[0])] * total
    rows = []
    for batch in batches:
        row: dict[str, Any] = {"bundle": info.version, "input": size, "batch": batch}
        for backend, by_batch in engines.items():
            engine = by_batch[batch]
            median, spread = _rate(lambda e=engine: e.predict(inputs, route=route), total,
                                   repeat)
            row[backend] = {"images_per_s": round(median, 1), "spread": round(spread, 1)}
        row["ratio"] = round(row["onnxruntime"]["images_per_s"]
                             / row["torch"]["images_per_s"], 2)
        rows.append(row)
        print(f"{info.manifest.name:<12} {size:>4}px batch {batch:>3}: onnxruntime "
              f"{row['onnxruntime']['images_per_s']:7.1f} img/s, torch "
              f"{row['torch']['images_per_s']:7.1f} img/s, ratio {row['ratio']:.2f}")
    return rows


def bench_preprocessing(params: Preprocessing, repeat: int) -> float:
    """Milliseconds per image of resize + CLAHE + padding on 2,000 x 2,500 phantom films."""
    images = list(render_study("WRIST", True, 7, n_images=4).images)
    big = [np.asarray(np.kron(im, np.ones((8, 8))), dtype=np.float32)[:2500, :2000]
           for im in images]
    median, _ = _rate(lambda: [preprocess(im, params) for im in big], len(big), repeat)
    return 1000.0 / median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("var/models/fracatlas"))
    parser.add_argument("--threads", type=int, default=2, help="threads of both backends")
    parser.add_argument("--images", type=int, default=64, help="images per timed run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}, onnxruntime {ort.__version__}; no flip averaging")
    results: dict[str, Any] = {"threads": args.threads, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = []
        if (args.bundle / "manifest.json").is_file():
            bundles.append(open_bundle(args.bundle))
        else:
            print(f"{args.bundle} not found; paper configuration only")
        bundles.append(open_bundle(_paper_bundle(Path(tmp))))
        for info in bundles:
            results["rows"] += bench_bundle(info, threads=args.threads, batches=(1, 8, 32),
                                            total=args.images, repeat=args.repeat)
            ms = bench_preprocessing(info.manifest.preprocessing, args.repeat)
            results[f"preprocess_ms_{info.manifest.preprocessing.input_size}"] = round(ms, 2)
            print(f"preprocessing (2000x2500 film -> {info.manifest.preprocessing.input_size} "
                  f"px, CLAHE): {ms:.1f} ms/image")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
