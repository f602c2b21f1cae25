"""Time two-stage inference (preprocessing included) of a model bundle on phantom images."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from models.phantom import render_study
from models.predict import TwoStageClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--images", type=int, default=4, help="images per study")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = TwoStageClassifier.from_bundle(args.bundle)
    images = list(render_study("WRIST", True, 7, n_images=args.images).images)
    classifier.predict_study(images)  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        classifier.predict_study(images)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"{args.images}-image study on {torch.get_num_threads()} threads: "
        f"median {median * 1000:.1f} ms ({median / args.images * 1000:.1f} ms/image)"
    )


if __name__ == "__main__":
    main()
