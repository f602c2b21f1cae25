"""Time dicom_io.pixels.normalize_radiograph on the NEMA WG04 CR images of pydicom-data."""

from __future__ import annotations

import argparse
import statistics
import time

import pydicom
from pydicom.data import get_testdata_file

from dicom_io.pixels import normalize_radiograph

FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KI.dcm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name in FILES:
        raw = get_testdata_file(name)
        if not isinstance(raw, str):
            raise SystemExit(f"{name} is not in pydicom-data (pip install pydicom-data)")
        times = []
        for _ in range(args.repeat):
            ds = pydicom.dcmread(raw)  # fresh dataset: decoding is part of the cost
            start = time.perf_counter()
            normalize_radiograph(ds)
            times.append(time.perf_counter() - start)
        print(
            f"{name:14s} {ds.Rows}x{ds.Columns} {ds.file_meta.TransferSyntaxUID.name:45s} "
            f"median {statistics.median(times) * 1000:7.1f} ms"
        )


if __name__ == "__main__":
    main()
