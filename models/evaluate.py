"""``ossa evaluate``: run a bundle on a labelled split and write an evaluation report.

``ossa evaluate --data DIR --bundle B --out REPORT_DIR [--split valid]`` predicts every image
of the split twice: routed by stage 1 with the bundle's abstention (what Ossa reports) and
routed by the true class (the "oracle" that isolates stage 2), then writes
``predictions.csv``, ``metrics.json``, PNG plots and ``report.md``
(:mod:`models.evaluation_report`, which defines every figure). Runs on the base install
(ONNX Runtime) by default; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.data import MuraStudy, load_studies, read_image
from models.engine import BACKENDS
from models.evaluation_report import EvaluatedImage, compute_metrics, write_report
from models.predict import TwoStageClassifier

logger = logging.getLogger(__name__)

#: Images preprocessed and predicted at a time (bounds memory on large splits).
CHUNK = 256


def evaluate_classifier(classifier: TwoStageClassifier, studies: Sequence[MuraStudy], *,
                        progress: bool = False) -> list[EvaluatedImage]:
    """One :class:`EvaluatedImage` per image of ``studies`` (routed and oracle-routed).

    A study whose class the bundle does not know (e.g. ``OTHER`` for a bundle without it)
    is still predicted; its images have no oracle probability.
    """
    taxonomy = classifier.taxonomy
    items = [(study, path) for study in studies for path in study.images]
    rows: list[EvaluatedImage] = []
    with tqdm(total=len(items), unit="img", disable=not progress, desc="evaluate") as bar:
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            # damaged but decodable files (FracAtlas has some) were named at import time
            inputs = classifier.preprocess([read_image(path, tolerate_truncated=True)
                                            for _, path in chunk])
            _, predictions = classifier.predict_arrays(inputs)
            oracle = np.full(len(chunk), np.nan, dtype=np.float32)
            in_scope = [i for i, (s, _) in enumerate(chunk)
                        if s.body_part in taxonomy and taxonomy.is_assessed(s.body_part)]
            if in_scope:
                route = [taxonomy.index(chunk[i][0].body_part) for i in in_scope]
                oracle[in_scope] = classifier.engine.abnormal(inputs[in_scope], route)[0][
                    classifier.engine.image_score]
            for (study, path), p, o in zip(chunk, predictions, oracle, strict=True):
                rows.append(EvaluatedImage(
                    path=str(path), study=study.key, true_type=study.body_part,
                    label=study.label, pred_type=p.body_part,
                    type_probability=p.body_part_probability, assessed=p.assessed,
                    abnormal_probability=p.abnormal_probability,
                    oracle_probability=None if math.isnan(float(o)) else float(o),
                ))
            bar.update(len(chunk))
    return rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa evaluate``."""
    parser = argparse.ArgumentParser(
        description="Evaluate a model bundle on a labelled split and write a report "
                    "(predictions.csv, metrics.json, plots, report.md).",
        add_help=add_help,
    )
    parser.add_argument("--data", type=Path, required=True,
                        help="MURA-v1.1 directory (or its parent), or a labelled dataset "
                             "(labels.csv, e.g. from `ossa data import-fracatlas`)")
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--out", type=Path, required=True, help="report directory to write")
    parser.add_argument("--split", choices=("train", "valid"), default="valid",
                        help="split to evaluate (default: valid)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                        help="inference backend (default: onnxruntime)")
    parser.add_argument("--threads", type=int, default=0,
                        help="inference threads (default: 0, one per core)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the 95%% confidence intervals "
                             "(default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--data-description", default=None,
                        help="what the data is, for report.md (default: the data path)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Evaluate ``args.bundle`` on ``args.split`` of ``args.data``; writes ``args.out``."""
    classifier = TwoStageClassifier.from_bundle(args.bundle, backend=args.backend,
                                                threads=args.threads)
    taxonomy = classifier.taxonomy
    studies = load_studies(args.data, args.split)
    rows = evaluate_classifier(classifier, studies, progress=True)
    known = tuple(dict.fromkeys([*taxonomy.names, *(r.true_type for r in rows)]))
    metrics = compute_metrics(rows, classes=known, assessed_classes=taxonomy.assessed,
                              thresholds=dict(classifier.thresholds),
                              n_bootstrap=args.bootstrap, seed=args.seed)
    description = args.data_description or f"{args.split} split of {args.data}"
    paths = write_report(rows, args.out, metrics=metrics,
                         bundle_version=classifier.algorithm.version,
                         data_description=description)
    merged = metrics["merged"]["study"]
    print(f"bundle {classifier.algorithm.version}: {len(rows)} images, "
          f"{metrics['n_studies']} studies ({description})")
    print(f"stage-1 accuracy {_fmt(metrics['stage1']['accuracy'])}; study accuracy "
          f"{_fmt(merged['pooled']['accuracy'])} (mean over classes "
          f"{_fmt(merged['mean_over_classes']['accuracy'])}), kappa "
          f"{_fmt(merged['pooled']['kappa'])}")
    for path in paths:
        print(path)
    return 0


def _fmt(estimate: dict[str, float | None]) -> str:
    value, low, high = estimate["value"], estimate["ci_low"], estimate["ci_high"]
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"
