"""``ossa evaluate``: run a bundle on a labelled split and write an evaluation report.

``ossa evaluate --data DIR --bundle B --out REPORT_DIR [--split valid]`` predicts every image
of the split twice: routed by stage 1 with the bundle's abstention (what Ossa reports) and
routed by the true class (the "oracle" that isolates stage 2), then writes
``predictions.csv``, ``metrics.json``, PNG plots and ``report.md``
(:mod:`models.evaluation.report`, which defines every figure). A bundle that locates findings
also gets ``findings.csv`` (``path,rank,x0,y0,x1,y1,probability``, image pixels), and, where
the data has boxes (``boxes.json``), the localisation figures and ``froc.png``
(:mod:`models.evaluation.localisation`). Runs on the base install
(ONNX Runtime) by default; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from models.datasets.boxes import AnnotatedImage, Box
from models.datasets.data import MuraStudy, load_boxes, load_studies, read_image
from models.evaluation.localisation import (
    FROC_THRESHOLDS,
    LocalisedImage,
    localisation_metrics,
    locate,
    plot_froc,
    write_findings_csv,
)
from models.evaluation.report import EvaluatedImage, compute_metrics, write_report
from models.serving.engine import BACKENDS
from models.serving.predict import TwoStageClassifier

logger = logging.getLogger(__name__)

#: Images preprocessed and predicted at a time (bounds memory on large splits).
CHUNK = 256


def evaluate_classifier(classifier: TwoStageClassifier, studies: Sequence[MuraStudy], *,
                        progress: bool = False,
                        boxes: Mapping[Path, AnnotatedImage] | None = None,
                        localised: list[LocalisedImage] | None = None) -> list[EvaluatedImage]:
    """One :class:`EvaluatedImage` per image of ``studies`` (routed and oracle-routed).

    A study whose class the bundle does not know (e.g. ``OTHER`` for a bundle without it)
    is still predicted; its images have no oracle probability. When ``localised`` is given
    (a list to fill) and the bundle locates findings, one :class:`LocalisedImage` per image
    of an assessed class is appended to it, with its boxes from ``boxes`` (by file).
    """
    taxonomy = classifier.taxonomy
    locate_findings = localised is not None and classifier.reports_findings
    settings = classifier.localisation
    items = [(study, path) for study in studies for path in study.images]
    rows: list[EvaluatedImage] = []
    with tqdm(total=len(items), unit="img", disable=not progress, desc="evaluate") as bar:
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            # damaged but decodable files (FracAtlas has some) were named at import time
            images = [read_image(path, tolerate_truncated=True) for _, path in chunk]
            inputs, geometries = classifier.preprocess(images)
            output, predictions = classifier.predict_arrays(
                inputs, geometries if locate_findings else None)
            if locate_findings:
                assert localised is not None
                for i, ((study, path), p) in enumerate(zip(chunk, predictions, strict=True)):
                    if not (study.body_part in taxonomy
                            and taxonomy.is_assessed(study.body_part)):
                        continue
                    top, froc = (locate(output.maps[i], geometries[i], stride=settings.stride,
                                        max_findings=settings.max_findings)
                                 if p.assessed else (None, ()))
                    localised.append(LocalisedImage(
                        path=str(path), true_type=study.body_part, label=study.label,
                        boxes=_image_boxes(boxes, path, images[i]), findings=p.findings,
                        top_region=top,
                        froc_regions=froc or tuple(() for _ in FROC_THRESHOLDS)))
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


def _image_boxes(boxes: Mapping[Path, AnnotatedImage] | None, path: Path,
                 image: NDArray[np.float32]) -> tuple[Box, ...] | None:
    """The annotated boxes of ``path`` in the pixels of its image as read (None: not
    annotated)."""
    annotated = (boxes or {}).get(path)
    if annotated is None:
        return None
    return annotated.boxes_on(*image.shape)


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
    loaded = load_boxes(args.data)
    localised: list[LocalisedImage] = []
    rows = evaluate_classifier(classifier, studies, progress=True,
                               boxes=loaded[0] if loaded is not None else None,
                               localised=localised)
    known = tuple(dict.fromkeys([*taxonomy.names, *(r.true_type for r in rows)]))
    metrics = compute_metrics(rows, classes=known, assessed_classes=taxonomy.assessed,
                              thresholds=dict(classifier.thresholds),
                              n_bootstrap=args.bootstrap, seed=args.seed)
    if loaded is not None and localised:
        metrics["localisation"] = localisation_metrics(localised, taxonomy.assessed,
                                                       n_bootstrap=args.bootstrap,
                                                       seed=args.seed)
    description = args.data_description or f"{args.split} split of {args.data}"
    paths = write_report(rows, args.out, metrics=metrics,
                         bundle_version=classifier.algorithm.version,
                         data_description=description)
    if classifier.reports_findings:
        write_findings_csv([(image.path, image.findings) for image in localised],
                           Path(args.out) / "findings.csv")
        paths.append(Path(args.out) / "findings.csv")
    if "localisation" in metrics:
        plot_froc(metrics["localisation"], Path(args.out) / "froc.png")
        paths.append(Path(args.out) / "froc.png")
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
