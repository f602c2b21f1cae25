"""Synthetic radiographs for the benchmarks, written once and reused.

A corpus is a folder of DICOM files (``<work>/corpus/<key>/``) with ``files.json`` listing
them; it is written atomically (a ``.partial`` folder renamed at the end), so an interrupted
run leaves nothing half written, and a later run with the same parameters reuses it. Every
instance has its own SOP Instance UID; studies hold ``per_study`` instances.

The pixels are 12-bit MONOCHROME1 (high value = dark) with soft tissue, two bones with a
bright cortex, a fracture line and noise, so that a lossless codec compresses them about as
much as a real radiograph (a flat image would compress far better than anything clinical).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataelem import DataElement
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicom_io.synthetic import StudyIdentity, radiograph_dataset


def radiograph_pixels(rows: int, columns: int, seed: int = 0) -> NDArray[np.uint16]:
    """Stored values of a 12-bit MONOCHROME1 radiograph of ``rows`` x ``columns``."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, columns, dtype=np.float32)[None, :]
    bright = 400 + 900 * np.exp(-(((x - 0.5) / 0.33) ** 2)) + 0 * y  # soft tissue
    for center, half in ((0.35, 0.11), (0.65, 0.09)):
        distance = np.abs(x - center - 0.04 * np.sin(y * 12 + seed))
        bone = np.where(distance < half, 2200 + 900 * (distance > half - 0.025), 0)
        bright = np.maximum(bright, bone)
    bright[int(rows * 0.4) : int(rows * 0.4) + max(rows // 60, 1),
           int(columns * 0.3) : int(columns * 0.7)] = 900  # a fracture line
    bright += rng.normal(0, 25, bright.shape).astype(np.float32)
    stored = 4095 - np.clip(np.rint(bright), 0, 4095)
    return stored.astype(np.uint16)


def write_corpus(work: Path, key: str, *, count: int, rows: int, columns: int,
                 per_study: int = 3, modality: str = "DX", body_part: str = "WRIST",
                 syntax: UID = ExplicitVRLittleEndian, distinct_pixels: int = 1,
                 seed: int = 0) -> list[Path]:
    """``count`` instances of ``rows`` x ``columns`` in studies of ``per_study``; reused when
    ``<work>/corpus/<key>`` already holds them.

    Parameters
    ----------
    syntax : UID
        Transfer syntax of the files (compressed ones are encoded by pydicom's encoder
        plugins: pyjpegls for JPEG-LS, OpenJPEG for JPEG 2000).
    distinct_pixels : int
        How many different pixel arrays to cycle through (encoding a 3000 x 2500 image
        takes seconds; one array is enough for uncompressed files).
    """
    folder = work / "corpus" / key
    listing = folder / "files.json"
    if listing.is_file():
        names = json.loads(listing.read_text(encoding="utf-8"))
        files = [folder / n for n in names]
        if len(files) == count and all(f.is_file() for f in files):
            return files
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    pixels = [radiograph_pixels(rows, columns, seed + i) for i in range(distinct_pixels)]
    encoded: dict[int, DataElement] = {}
    names = []
    placeholder = np.zeros((rows, columns), np.uint8)
    for number in range(count):
        study, instance = divmod(number, per_study)
        if instance == 0:
            identity = StudyIdentity(
                patient_id=f"BENCH-{study:05d}", patient_name=f"Bench^{study:05d}",
                accession_number=f"B{study:07d}", body_part=body_part,
            )
            series_uid = generate_uid()
        ds = radiograph_dataset(placeholder, identity, series_instance_uid=series_uid,
                                instance_number=instance + 1, modality=modality)
        which = number % distinct_pixels
        ds.PixelData = pixels[which].astype("<u2").tobytes()
        if syntax != ExplicitVRLittleEndian:
            if which not in encoded:
                ds.compress(syntax, generate_instance_uid=False)
                encoded[which] = ds["PixelData"]
            else:  # the same pixels: copy the encoded element
                ds["PixelData"] = copy.deepcopy(encoded[which])
                ds.file_meta.TransferSyntaxUID = syntax
        name = f"{study:05d}-{instance + 1}.dcm"
        ds.save_as(partial / name, enforce_file_format=True)
        names.append(name)
    (partial / "files.json").write_text(json.dumps(names), encoding="utf-8")
    partial.rename(folder)
    return [folder / n for n in names]


def sizes(files: list[Path]) -> int:
    """Total bytes of ``files``."""
    return sum(f.stat().st_size for f in files)


def study_uids(files: list[Path]) -> list[str]:
    """Study Instance UIDs of ``files``, in order of first appearance."""
    seen: dict[str, None] = {}
    for f in files:
        seen.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID))
    return list(seen)
