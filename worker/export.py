"""``ossa export-dicom``: MURA-layout studies as DICOM files that ``storescu`` can send.

Testers use it to feed the listener with phantom studies of known label. The studies are read
through the same loader as training (:func:`models.datasets.data.load_studies`) and written with
:mod:`dicom_io.synthetic` as 12-bit MONOCHROME1 CR (or DX) instances.

The phantom's out-of-scope ``OTHER`` studies are exported too (Body Part Examined as
:data:`dicom_io.synthetic.BODY_PART_EXAMINED` maps it, empty today). Studies of a class that
mapping does not know are skipped, with a log line.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_io.synthetic import BODY_PART_EXAMINED, StudyIdentity, write_study
from models.datasets.data import MuraStudy, load_studies

logger = logging.getLogger(__name__)


def _interleaved(studies: tuple[MuraStudy, ...]) -> list[MuraStudy]:
    """Studies in round-robin order over (body part, label), so a short export mixes both."""
    groups: dict[tuple[str, int], deque[MuraStudy]] = defaultdict(deque)
    for study in studies:
        groups[(study.body_part, study.label)].append(study)
    order: list[MuraStudy] = []
    queues = [groups[key] for key in sorted(groups)]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.popleft())
    return order


def export_studies(
    data: Path, out: Path, *, split: str = "valid", limit: int = 5, modality: str = "CR"
) -> list[tuple[Path, bool]]:
    """Write up to ``limit`` studies of ``split`` as DICOM, one folder per study.

    Parameters
    ----------
    data : pathlib.Path
        A MURA-v1.1 directory or its parent.
    out : pathlib.Path
        Output folder; each study goes to ``out/<split>_<body part>_<patient>_<study>/``.
    split : {"train", "valid"}
        Which split to read.
    limit : int
        Maximum number of studies, at least 1.
    modality : {"CR", "DX"}
        IOD of the written instances.

    Returns
    -------
    list of (pathlib.Path, bool)
        Each study folder and whether its label is abnormal.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    studies = load_studies(data, split)
    exportable = tuple(s for s in studies if s.body_part in BODY_PART_EXAMINED)
    if len(exportable) < len(studies):
        skipped = sorted({s.body_part for s in studies} - set(BODY_PART_EXAMINED))
        logger.info("skipping %d studies of %s: no Body Part Examined to write",
                    len(studies) - len(exportable), ", ".join(skipped))
    written: list[tuple[Path, bool]] = []
    for study in _interleaved(exportable)[:limit]:
        images = []
        for path in study.images:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("L"), dtype=np.uint8))
        identity = StudyIdentity(
            patient_id=study.patient,
            patient_name=f"Phantom^{study.body_part.title()}",
            accession_number=f"{study.patient[-5:]}{study.study[:7]}"[:16],
            body_part=study.body_part,
        )
        folder = out / f"{split}_{study.body_part}_{study.patient}_{study.study}"
        write_study(images, identity, folder, modality=modality)
        written.append((folder, study.abnormal))
    return written
