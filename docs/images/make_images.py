"""Make the README's pictures: a secondary capture and the status page.

Both are illustrations built from Ossa's own code on synthetic data, not a model's output:

- ``capture.png``: a procedural phantom wrist radiograph with a fracture
  (:func:`models.datasets.phantom.rendering.render_study`), written as a 12-bit MONOCHROME1
  CR (:mod:`dicom_io.synthetic`), rendered by the service's pixel pipeline
  (:func:`dicom_io.pixels.normalize_radiograph`) and built into a Secondary Capture
  (:func:`dicom_io.capture.build_secondary_capture`) with one finding (the
  phantom's own fracture box) and a verdict set by hand, as the tests do;
- ``status-page.png``: the status page (:class:`worker.http.pages.StatusPage`) over a
  SQLite state store filled through its own queries with a few made-up studies (no patient
  data: the store holds none), screenshot by headless Chromium.

Run it from the repository root (``chromium`` must be installed for the second picture)::

    .venv/bin/python docs/images/make_images.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: The fixed clock of the illustrated state store: 2026-12-07T09:00:00Z.
EPOCH = 1796634000.0
#: Study Instance UIDs of the illustration (an example root, nothing real).
UID_ROOT = "1.2.826.0.1.3680043.8.498.99."


def make_capture(out: Path, *, seed: int = 3) -> Path:
    """Write ``capture.png``: the secondary capture of a phantom wrist with a fracture.

    Parameters
    ----------
    out : pathlib.Path
        Folder of the picture.
    seed : int
        The first phantom seed tried; the first abnormal wrist whose finding is a fracture
        with a box is used.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    from dicom_io.capture import (
        build_secondary_capture,
        sc_label,
        secondary_capture_uids,
    )
    from dicom_io.pixels import normalize_radiograph
    from dicom_io.synthetic import StudyIdentity, radiograph_dataset
    from models.datasets.phantom.rendering import render_study
    from models.serving.findings import Finding
    from models.serving.results import AlgorithmInfo, ImagePrediction

    while True:
        study = render_study("WRIST", True, seed, n_images=1)
        if study.finding == "fracture" and study.boxes[0]:
            break
        seed += 1
    image = np.clip(np.rint(study.images[0] * 255), 0, 255).astype(np.uint8)
    identity = StudyIdentity(patient_id="PHANTOM-1", patient_name="Phantom^Wrist",
                             accession_number="PHANTOM1", body_part="WRIST",
                             study_instance_uid=UID_ROOT + "1")
    source = radiograph_dataset(image, identity, series_instance_uid=UID_ROOT + "1.1",
                                instance_number=1)
    rendered = normalize_radiograph(source, max_side=1024)
    box = study.boxes[0][0]
    finding = Finding(box.x0, box.y0, box.x1, box.y1, 0.81)
    prediction = ImagePrediction(body_part="WRIST", body_part_probability=0.97, assessed=True,
                                 abnormal_probability=0.87, findings=(finding,))
    algorithm = AlgorithmInfo(name="illustration", version="illustration@phantom")
    series, sop = secondary_capture_uids(source.StudyInstanceUID, source.SOPInstanceUID,
                                         algorithm.version)
    capture = build_secondary_capture(
        source, rendered, prediction.findings, label=sc_label(prediction, 0.5),
        series_instance_uid=series, sop_instance_uid=sop, instance_number=1,
        algorithm=algorithm,
    )
    path = out / "capture.png"
    Image.fromarray(capture.pixel_array).save(path, optimize=True)
    logger.info("Wrote %s (phantom seed %d)", path, seed)
    return path


def make_status_page(out: Path) -> Path | None:
    """Write ``status-page.png``: the status page over an illustrated state store.

    Parameters
    ----------
    out : pathlib.Path
        Folder of the picture.

    Returns
    -------
    pathlib.Path or None
        The PNG written; None when Chromium is not installed.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        logger.warning("chromium is not installed: no status page picture")
        return None
    with tempfile.TemporaryDirectory(prefix="ossa-images-") as tmp:
        cwd = Path.cwd()
        os.chdir(tmp)  # the page shows the storage root as configured: a relative "var"
        try:
            html = _status_html(Path("var"))
        finally:
            os.chdir(cwd)
        page = Path(tmp) / "status.html"
        page.write_text(html, encoding="utf-8")
        shot = Path(tmp) / "status.png"
        subprocess.run(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--hide-scrollbars", "--window-size=1200,1000", f"--screenshot={shot}",
             page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )
        path = out / "status-page.png"
        with Image.open(shot) as picture:
            rgb = np.asarray(picture.convert("RGB"))
        used = np.flatnonzero((rgb < 250).any(axis=(1, 2)))  # rows that are not all white
        bottom = min(len(rgb), int(used[-1]) + 24) if used.size else len(rgb)
        Image.fromarray(rgb[:bottom]).quantize(colors=64).save(path, optimize=True)
    logger.info("Wrote %s", path)
    return path


def _status_html(root: Path) -> str:
    """The status page's HTML over a store under ``root`` holding a few made-up studies."""
    from pydicom.uid import (
        Comprehensive3DSRStorage,
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
    )

    from worker.http.health import HealthProbe
    from worker.http.pages import StatusPage
    from worker.spool import Spool
    from worker.store import DeliveryState, NewObject, StateStore

    clock = [EPOCH]
    store = StateStore(root / "state.sqlite3", clock=lambda: clock[0], node="ossa")
    spool = Spool(root, node="ossa")
    studies = [  # sender, images, SOP Class, result, outcome of the SR's delivery
        ("PACS", 3, ComputedRadiographyImageStorage, "ABNORMAL (p=0.87)", "success"),
        ("PACS", 2, DigitalXRayImageStorageForPresentation, "NORMAL (p=0.12)", "success"),
        ("MODALITY7", 1, ComputedRadiographyImageStorage, "NOT ASSESSED", "success"),
        ("PACS", 2, ComputedRadiographyImageStorage, "ABNORMAL (p=0.64)", "refused"),
        ("STOW-RS", 4, DigitalXRayImageStorageForPresentation, "NORMAL (p=0.31)", "success"),
        ("PACS", 2, ComputedRadiographyImageStorage, None, None),
    ]
    for n, (sender, images, sop_class, result, outcome) in enumerate(studies, start=1):
        study_uid = f"{UID_ROOT}{n}"
        for i in range(1, images + 1):
            store.add_instance(calling_aet=sender, study_uid=study_uid,
                               sop_uid=f"{study_uid}.1.{i}", sop_class_uid=sop_class,
                               series_uid=f"{study_uid}.1", path=f"instances/{n}/{i}.dcm",
                               size=9_000_000)
        clock[0] += 47.0
        if result is None:
            continue  # still receiving
        store.schedule_due(10.0, max_queued=16)
        for job in store.claim_jobs(16):
            sr = NewObject(kind="sr", sop_uid=f"{job.study_uid}.9001.1",
                           sop_class_uid=Comprehensive3DSRStorage,
                           series_uid=f"{job.study_uid}.9001", path=f"objects/{n}.dcm")
            store.finish_job(job.job_id, objects=[sr], destinations=["pacs"], result=result,
                             attempt=job.attempt)
        delivery = store.due_delivery("pacs")
        assert delivery is not None
        delivered = outcome == "success"
        store.record_attempt(
            delivery.delivery_id,
            state=DeliveryState.DELIVERED if delivered else DeliveryState.FAILED,
            outcome=str(outcome),
            detail="ORTHANC@10.0.0.5:4242 answered "
                   + ("0x0000 (Success)" if delivered else "0xC000 (Failure: Cannot Understand)"),
        )
    health = HealthProbe(store, spool, listener=lambda: (True, "OSSA on 127.0.0.1:11112"),
                         model=lambda: (True, "fracatlas@fbab338690a0"), destinations=["pacs"],
                         min_free_bytes=0)
    try:
        return StatusPage(store, health, destinations=["pacs"]).render()
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    """``make_images.py [--out FOLDER]``: write both pictures; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder of the pictures (default: this script's)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    make_capture(args.out)
    make_status_page(args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    sys.exit(main())
