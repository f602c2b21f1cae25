"""Writing the phantom in the MURA-v1.1 layout, and the ``ossa phantom`` command line.

Besides MURA's own files, ``MURA-v1.1/boxes.json`` (:data:`models.datasets.boxes.BOXES_JSON`, COCO,
written by :func:`models.datasets.boxes.write_coco`) lists every image of both splits,
``file_name`` as
in ``*_image_paths.csv``, with the boxes of the findings it shows (see
:mod:`models.datasets.phantom.rendering`): every image is annotated, a normal study's images with
no box.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.datasets.boxes import BOXES_JSON, AnnotatedImage, write_coco
from models.datasets.layout import (
    DATASET_DIRNAME,
    SPLITS,
    class_dirname,
    image_paths_csv,
    labeled_studies_csv,
)
from models.datasets.phantom.findings import FINDINGS
from models.datasets.phantom.other import OTHER_CLASS
from models.datasets.phantom.rendering import PHANTOM_CLASSES, PhantomConfig, render_study

logger = logging.getLogger(__name__)

#: Side file (next to MURA-v1.1/), one line per study: ``study_dir/,finding,anatomy`` with the
#: finding kind (``none`` for a normal study) and the anatomy shown (the class for the seven
#: MURA bone types, one of :data:`~models.datasets.phantom.OTHER_KINDS` for ``OTHER``); no header.
FINDINGS_CSV = "phantom_findings.csv"


def split_sizes(studies: int, valid_fraction: float) -> tuple[int, int]:
    """Number of (train, valid) studies per class; see :mod:`models.datasets.phantom`."""
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    n_valid = max(1, math.ceil(studies * valid_fraction))
    if studies >= 2:
        n_valid = min(n_valid, studies - 1)
    else:
        n_valid = 0
    return studies - n_valid, n_valid


@dataclass(frozen=True)
class _StudyJob:
    rel_dir: str  # e.g. "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive"
    body_part: str
    abnormal: bool
    seed: tuple[int, ...]


def _plan(studies: int, seed: int, valid_fraction: float,
          abnormal_fraction: float) -> list[tuple[str, list[_StudyJob]]]:
    """Patients, studies and labels of both splits (deterministic, no rendering)."""
    rng = np.random.default_rng([seed, 0])
    n_train, n_valid = split_sizes(studies, valid_fraction)
    plan: list[tuple[str, list[_StudyJob]]] = []
    patient = 0
    for split_index, (split, count) in enumerate(zip(SPLITS, (n_train, n_valid), strict=True)):
        jobs: list[_StudyJob] = []
        for class_index, body_part in enumerate(PHANTOM_CLASSES):
            # out-of-scope studies are never abnormal: their label says "not assessed"
            n_abnormal = 0 if body_part == OTHER_CLASS else round(count * abnormal_fraction)
            labels = rng.permutation(np.array([1] * n_abnormal + [0] * (count - n_abnormal)))
            i = 0
            while i < count:
                patient += 1
                n_studies = 2 if (count - i >= 2 and rng.random() < 0.25) else 1
                for k in range(1, n_studies + 1):
                    abnormal = bool(labels[i])
                    name = f"study{k}_{'positive' if abnormal else 'negative'}"
                    rel = (f"{DATASET_DIRNAME}/{split}/{class_dirname(body_part)}/"
                           f"patient{patient:05d}/{name}")
                    jobs.append(_StudyJob(rel, body_part, abnormal,
                                          (seed, class_index, split_index, i)))
                    i += 1
        plan.append((split, jobs))
    if patient > 99999:
        raise ValueError(f"studies={studies} needs {patient} patients; at most 99999 fit 5 digits")
    return plan


@dataclass(frozen=True)
class _WrittenStudy:
    images: tuple[AnnotatedImage, ...]  # file_name: the image's path as the CSVs list it
    finding: str
    anatomy: str


def _write_study(job: _StudyJob, base: Path, config: PhantomConfig) -> _WrittenStudy:
    """Render and write one study; returns its images (CSV paths, sizes, boxes), finding and
    anatomy."""
    study = render_study(job.body_part, job.abnormal, job.seed, config=config)
    directory = base / job.rel_dir
    directory.mkdir(parents=True, exist_ok=True)
    images = []
    for n, (image, boxes) in enumerate(zip(study.images, study.boxes, strict=True), start=1):
        pixels = np.round(image * 255.0).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(directory / f"image{n}.png", compress_level=3)
        height, width = pixels.shape
        images.append(AnnotatedImage(f"{job.rel_dir}/image{n}.png", width, height, boxes))
    return _WrittenStudy(tuple(images), study.finding, study.anatomy)


def write_phantom(
    out: Path,
    studies: int,
    seed: int,
    *,
    valid_fraction: float = 0.25,
    abnormal_fraction: float = 0.5,
    config: PhantomConfig | None = None,
    workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """Render a phantom dataset in the MURA-v1.1 layout under ``out``.

    Parameters
    ----------
    out : Path
        Directory that receives ``MURA-v1.1/``; created when missing.
    studies : int
        Studies per class (the seven bone types and ``OTHER``), train and valid together
        (split by :func:`split_sizes`).
    seed : int
        Seed; the same seed and options give byte-identical files.
    valid_fraction : float
        Share of each class's studies that go to the validation split.
    abnormal_fraction : float
        Share of abnormal (positive) studies within each split and bone type (``OTHER``
        studies are all normal).
    config : PhantomConfig, optional
        Appearance parameters.
    workers : int
        Worker processes for rendering (0 renders in this process).
    overwrite : bool
        Replace an existing ``out/MURA-v1.1`` (otherwise a non-empty one is an error).

    Returns
    -------
    Path
        The ``MURA-v1.1`` directory.

    Notes
    -----
    Besides the MURA layout, ``out/phantom_findings.csv`` (outside ``MURA-v1.1/``) lists each
    study directory with its finding kind and anatomy (see :data:`FINDINGS_CSV`), for
    per-finding and per-kind analysis, and ``MURA-v1.1/boxes.json`` the boxes of the findings
    on every image (COCO, see the module docstring), which :func:`models.datasets.data.load_boxes`
    reads. The boxes are computed from the drawn geometry and draw no random number: images
    and CSVs are the same as a phantom written without them.
    """
    if not 0.0 <= abnormal_fraction <= 1.0:
        raise ValueError(f"abnormal_fraction must be in [0, 1], got {abnormal_fraction}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    config = config or PhantomConfig()
    out = Path(out)
    root = out / DATASET_DIRNAME
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(f"out already holds a non-empty {DATASET_DIRNAME}: {root} "
                             "(use overwrite)")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = _plan(studies, seed, valid_fraction, abnormal_fraction)
    findings: list[tuple[str, str, str]] = []
    annotated: list[AnnotatedImage] = []
    for split, jobs in plan:
        if workers > 0:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                written = list(pool.map(_write_study, jobs, [out] * len(jobs),
                                        [config] * len(jobs), chunksize=4))
        else:
            written = [_write_study(job, out, config) for job in jobs]
        image_paths = [[image.file_name for image in study.images] for study in written]
        findings += [(f"{job.rel_dir}/", study.finding, study.anatomy)
                     for job, study in zip(jobs, written, strict=True)]
        annotated += [image for study in written for image in study.images]
        with open(root / image_paths_csv(split), "w", newline="") as f:
            for paths in image_paths:
                f.writelines(f"{p}\n" for p in paths)
        with open(root / labeled_studies_csv(split), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            for job in jobs:
                writer.writerow([f"{job.rel_dir}/", int(job.abnormal)])
        logger.info("phantom %s: %d studies, %d images", split, len(jobs),
                    sum(len(p) for p in image_paths))
    with open(out / FINDINGS_CSV, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(findings)
    write_coco(root / BOXES_JSON, annotated)
    logger.info("phantom boxes: %d images, %d boxes", len(annotated),
                sum(len(image.boxes) for image in annotated))
    return root


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa phantom``."""
    parser = argparse.ArgumentParser(
        description="Write a procedural radiograph phantom in the MURA-v1.1 layout.",
        add_help=add_help,
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="directory that receives MURA-v1.1/")
    parser.add_argument("--studies", type=int, default=60,
                        help="studies per class (7 bone types + OTHER), train + valid "
                             "(default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--valid-fraction", type=float, default=0.25,
                        help="share of each class's studies in valid (default: 0.25)")
    parser.add_argument("--abnormal-fraction", type=float, default=0.5,
                        help="share of abnormal studies per split and bone type (default: 0.5)")
    parser.add_argument("--min-size", type=int, default=200, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=400, help="largest image side (px)")
    parser.add_argument("--findings", nargs="+", choices=FINDINGS, default=list(FINDINGS),
                        help="kinds of finding in abnormal studies (default: all)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: os.cpu_count(); 0 = in-process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing MURA-v1.1 directory under --out")
    return parser


def main(args: argparse.Namespace) -> int:
    """Write the phantom described by ``args``; returns the exit code."""
    config = PhantomConfig(min_size=args.min_size, max_size=args.max_size,
                           findings=tuple(args.findings))
    root = write_phantom(
        args.out, args.studies, args.seed, valid_fraction=args.valid_fraction,
        abnormal_fraction=args.abnormal_fraction, config=config,
        workers=(os.cpu_count() or 1) if args.workers is None else args.workers,
        overwrite=args.overwrite,
    )
    logger.info("phantom written to %s", root)
    return 0
