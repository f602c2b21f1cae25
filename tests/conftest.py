"""Shared fixtures: DICOM datasets built in memory, and helpers for real peers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from dicom_io.synthetic import StudyIdentity, radiograph_dataset


def _gradient_image(rows: int = 64, columns: int = 48) -> np.ndarray:
    """An 8-bit image with a bright 'bone' bar on a dark background."""
    image = np.full((rows, columns), 20, dtype=np.uint8)
    image[:, columns // 3 : 2 * columns // 3] = 220
    image[rows // 2, :] = 120
    return image


@pytest.fixture
def make_radiograph() -> Callable[..., Dataset]:
    """Factory for CR/DX instances: ``make_radiograph(identity=None, modality="CR", image=None)``."""
    series_uid: dict[str, str] = {}

    def _make(
        identity: StudyIdentity | None = None,
        *,
        modality: str = "CR",
        image: np.ndarray | None = None,
        instance_number: int = 1,
    ) -> Dataset:
        identity = identity or StudyIdentity(
            patient_id="PID-123", patient_name="Doe^Jane", accession_number="ACC1",
            body_part="WRIST",
        )
        uid = series_uid.setdefault(identity.study_instance_uid, _new_uid())
        return radiograph_dataset(
            _gradient_image() if image is None else image,
            identity,
            series_instance_uid=uid,
            instance_number=instance_number,
            modality=modality,
        )

    return _make


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dicom3tools' ``dciodvfy`` on a file and return its ``Error`` lines."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed; run `make test`")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], object], *, timeout: float, what: str) -> object:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
