"""``ossa predict --bundle B FILE...``: predict PNG, JPEG or DICOM files, JSON lines out.

One JSON object per file on standard output, in the order given::

    {"file": "a.dcm", "body_part": "WRIST", "body_part_probability": 0.97,
     "assessed": true, "reason": "", "abnormal_probability": 0.81, "ood_score": 4.2,
     "findings": [{"x0": 412.0, "y0": 630.5, "x1": 498.0, "y1": 702.0,
                   "probability": 0.74}]}

``findings`` are the suspected fractures located on the file's image
(:mod:`models.serving.findings`),
in its pixels (a DICOM file's Columns x Rows, x = column, y = row, top-left origin), the
most probable first; empty for an image that is not assessed or not flagged.

then one ``"study"`` line per study the files form: DICOM files sharing a Study Instance UID,
or image files in the same folder (MURA's layout: one folder per study). A file that cannot be
read gets ``{"file": ..., "error": ...}`` (and a log line naming it); the others are still
predicted, and the exit status is 1. Runs on the base install (ONNX Runtime) by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from models.serving.engine import BACKENDS

logger = logging.getLogger(__name__)

#: Suffixes read as images with Pillow; every other file is read as DICOM.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa predict``."""
    parser = argparse.ArgumentParser(
        description="Predict PNG, JPEG or DICOM radiographs with a bundle (JSON lines). "
                    "Research use, not for diagnosis.",
        add_help=add_help,
    )
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                        help="inference backend (default: onnxruntime)")
    parser.add_argument("--threads", type=int, default=0,
                        help="inference threads (default: 0, one per core)")
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE",
                        help="PNG/JPEG images or DICOM CR/DX files")
    return parser


def read_file(path: Path, max_side: int | None = None
              ) -> tuple[NDArray[np.float32], str, tuple[int, int]]:
    """A file's normalized image, its study key (Study Instance UID or folder) and the size
    (columns, rows) of the image as stored, which findings are given in.

    ``max_side``: the longest side the classifier needs
    (:meth:`models.serving.enhance.Preprocessing.working_side`); a DICOM image is rendered at the
    reduced resolution :func:`dicom_io.pixels.normalize_radiograph` chooses for it. None: full
    resolution.

    Raises
    ------
    ValueError
        When the file cannot be read or decoded; the message says why.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from models.datasets.data import read_image

        image = read_image(path)
        return image, f"folder:{path.parent.resolve()}", (image.shape[1], image.shape[0])
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_io.pixels import normalize_radiograph

    try:
        ds = pydicom.dcmread(path)
        image = normalize_radiograph(ds, max_side=max_side)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError) as exc:
        raise ValueError(f"not a readable DICOM radiograph: {exc}") from exc
    return (image, f"study:{ds.get('StudyInstanceUID', path.parent.resolve())}",
            (int(ds.Columns), int(ds.Rows)))


def _image_line(path: Path, p: Any, scale: tuple[float, float]) -> dict[str, Any]:
    return {"file": str(path), "body_part": p.body_part,
            "body_part_probability": round(p.body_part_probability, 6), "assessed": p.assessed,
            "reason": p.reason, "abnormal_probability": (
                None if p.abnormal_probability is None else round(p.abnormal_probability, 6)),
            "ood_score": None if p.ood_score is None else round(p.ood_score, 4),
            "findings": [f.scaled(*scale).as_dict() for f in p.findings]}


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Predict ``args.files`` with ``args.bundle``; JSON lines to ``out``; exit status."""
    from models.serving.manifest import BundleError
    from models.serving.predict import TwoStageClassifier

    try:
        classifier = TwoStageClassifier.from_bundle(args.bundle, backend=args.backend,
                                                    threads=args.threads)
    except (BundleError, OSError) as exc:
        print(f"ossa: error: {args.bundle}: {exc}", file=sys.stderr)
        return 2
    max_side = classifier.preprocessing.working_side()  # no secondary capture here
    images: list[NDArray[np.float32]] = []
    readable: list[tuple[Path, str, tuple[float, float]]] = []
    lines: dict[int, dict[str, Any]] = {}
    for i, path in enumerate(args.files):
        try:
            image, study, (columns, rows) = read_file(path, max_side)
        except ValueError as exc:
            logger.error("%s: %s", path, exc)
            lines[i] = {"file": str(path), "error": str(exc)}
            continue
        images.append(image)
        readable.append((path, study, (columns / image.shape[1], rows / image.shape[0])))
    predictions = classifier.predict_images(images) if images else []
    by_path = iter(zip(readable, predictions, strict=True))
    studies: dict[str, list[Any]] = {}
    for i in range(len(args.files)):
        if i not in lines:
            (path, study, scale), p = next(by_path)
            lines[i] = _image_line(path, p, scale)
            studies.setdefault(study, []).append(p)
        out.write(json.dumps(lines[i]) + "\n")
    for key, preds in studies.items():
        result = classifier.study(preds)
        out.write(json.dumps({
            "study": key.split(":", 1)[1], "images": len(preds), "verdict": result.verdict,
            "body_part": result.body_part,
            "abnormal_probability": (None if result.abnormal_probability is None
                                     else round(result.abnormal_probability, 6)),
            "threshold": result.threshold, "reason": result.reason,
            "model": classifier.algorithm.version,
            "note": "research use only, not for diagnosis",
        }) + "\n")
    return 1 if len(readable) < len(args.files) else 0


def main(args: argparse.Namespace) -> int:
    """Entry point of ``ossa predict``."""
    return run(args, sys.stdout)
