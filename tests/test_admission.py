"""worker.admission: the step C-STORE and STOW-RS share, fed DICOM files as STOW-RS is.

The C-STORE side of the same function is tested over a real association in
tests/test_handlers.py; STOW-RS over HTTP in tests/test_http.py.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.test_handlers import _deflate_bomb
from worker.admission import (
    Refusal,
    StoreOutcome,
    StoreStatus,
    Submission,
    admit,
    read_part10,
    refuse,
)
from worker.intake import Intake
from worker.spool import Spool
from worker.store import StateStore

MIB = 1024 * 1024


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[tuple[Intake, list[tuple[str, str, str]]]]:
    seen: list[tuple[str, str, str]] = []
    root = tmp_path / "var"
    with StateStore.in_root(root) as store:
        yield Intake(Spool(root), store, observer=lambda *args: seen.append(args)), seen


def _file(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _image(side: int) -> np.ndarray:
    return np.tile(np.arange(side, dtype=np.uint8), (side, 1))


def _data_set(data: bytes) -> bytes:
    """The data set bytes of a DICOM file, after its File Meta Information."""
    source = io.BytesIO(data)
    read_part10(source)
    return data[source.tell():]


def _submit(intake: Intake, data: bytes | BinaryIO, *, max_inflated_bytes: int = 64 * MIB,
            sop_uid: str | None = None) -> StoreStatus:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    meta = read_part10(source)
    decision = admit(intake, Submission(
        protocol="stowrs", calling_aet="STOW-RS", file_meta=meta, source=source,
        offset=source.tell(), sop_class_uid=str(meta.MediaStorageSOPClassUID),
        sop_uid=sop_uid or str(meta.MediaStorageSOPInstanceUID),
    ), max_inflated_bytes=max_inflated_bytes)
    return decision.status


def test_a_dicom_file_is_stored_once_as_sent_with_the_sender_in_its_meta(
    observed: tuple[Intake, list[tuple[str, str, str]]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    intake, seen = observed
    ds = make_radiograph()
    data = _file(ds)
    assert _submit(intake, data) == StoreStatus.SUCCESS
    assert _submit(intake, data) == StoreStatus.SUCCESS
    assert seen == [("stowrs", "stored", ""), ("stowrs", "duplicate", "")]
    (path,) = intake.spool.instance_files()
    written = intake.spool.path(path).read_bytes()
    assert written[128:132] == b"DICM"
    assert written.endswith(_data_set(data))  # the data set bytes as sent
    stored = pydicom.dcmread(intake.spool.path(path))
    assert stored.file_meta.SourceApplicationEntityTitle == "STOW-RS"
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert intake.store.summary().instances == {"stored": 1}


def test_meta_without_preamble_is_read_and_garbage_is_not(
    make_radiograph: Callable[..., Dataset],
) -> None:
    ds = make_radiograph()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)  # meta, no preamble: what dicomweb-client sends
    assert buffer.getvalue()[:4] != b"\x00" * 4
    meta = read_part10(io.BytesIO(buffer.getvalue()))
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert _data_set(buffer.getvalue()) == _data_set(_file(ds))
    for garbage in (b"", b"not DICOM at all", b"\x00" * 128 + b"DICM"):
        with pytest.raises(ValueError, match="not a DICOM file"):
            read_part10(io.BytesIO(garbage))


def test_refusals_name_the_status_and_the_reason(
    observed: tuple[Intake, list[tuple[str, str, str]]],
    make_radiograph: Callable[..., Dataset],
    tmp_path: Path,
) -> None:
    intake, seen = observed
    unknown_syntax = make_radiograph()
    unknown_syntax.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.10.511.99"
    buffer = io.BytesIO()
    unknown_syntax.save_as(buffer, implicit_vr=False, little_endian=True,
                           enforce_file_format=True)
    assert _submit(intake, buffer.getvalue()) == StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED

    other = make_radiograph()
    assert _submit(intake, _file(other), sop_uid="1.2.3.4") == (
        StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)

    bomb = tmp_path / "bomb.dcm"
    _deflate_bomb(bomb, make_radiograph, 8)
    assert _submit(intake, bomb.read_bytes(), max_inflated_bytes=MIB) == (
        StoreStatus.OUT_OF_RESOURCES)

    decision = refuse(intake, "stowrs", StoreStatus.CANNOT_UNDERSTAND, Refusal.UNDECODABLE,
                      "not a DICOM file")
    assert decision.outcome is StoreOutcome.REFUSED and not decision.ok
    assert seen == [("stowrs", "refused", "transfer_syntax"), ("stowrs", "refused", "uid_mismatch"),
                    ("stowrs", "refused", "inflate_limit"), ("stowrs", "refused", "undecodable")]
    assert intake.store.summary().instances == {}


def test_a_failing_observer_does_not_change_the_decision(
    tmp_path: Path, make_radiograph: Callable[..., Dataset]
) -> None:
    def broken(*args: str) -> None:
        raise RuntimeError("metrics down")

    root = tmp_path / "var"
    with StateStore.in_root(root) as store:
        intake = Intake(Spool(root), store, observer=broken)
        assert _submit(intake, _file(make_radiograph())) == StoreStatus.SUCCESS
        assert store.summary().instances == {"stored": 1}


def test_a_large_data_set_is_copied_to_the_spool_without_being_read_into_memory(
    observed: tuple[Intake, list[tuple[str, str, str]]],
    make_radiograph: Callable[..., Dataset],
    tmp_path: Path,
) -> None:
    intake, _ = observed
    ds = make_radiograph(image=_image(6000))  # 36 MB of pixel data
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    with path.open("rb") as source:
        tracemalloc.start()
        try:
            assert _submit(intake, source) == StoreStatus.SUCCESS
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * MIB, f"admission allocated {peak / MIB:.1f} MiB for a 32 MB data set"
    (stored,) = intake.spool.instance_files()
    assert intake.spool.path(stored).read_bytes().endswith(_data_set(path.read_bytes()))


def test_a_truncated_data_set_is_refused_and_nothing_is_stored(
    observed: tuple[Intake, list[tuple[str, str, str]]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    intake, seen = observed
    data = _file(make_radiograph(image=_image(1024)))  # 1 MiB: its value is skipped
    assert _submit(intake, data[:-1000]) == StoreStatus.CANNOT_UNDERSTAND
    small = _file(make_radiograph(image=_image(64)))  # 4 KiB: its value is read
    assert _submit(intake, small[:-1000]) == StoreStatus.CANNOT_UNDERSTAND
    assert seen == [("stowrs", "refused", "undecodable")] * 2
    assert list(intake.spool.instance_files()) == []
    assert list(intake.spool.tmp.iterdir()) == []


def test_a_deflated_data_set_longer_than_the_bound_is_refused_unread(
    observed: tuple[Intake, list[tuple[str, str, str]]],
    make_radiograph: Callable[..., Dataset],
) -> None:
    intake, seen = observed
    # Incompressible pixels: the deflated data set is about as long as the inflated one.
    ds = make_radiograph(image=np.frombuffer(os.urandom(512 * 512), np.uint8).reshape(512, 512))
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    deflated = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    assert _submit(intake, deflated.getvalue(), max_inflated_bytes=256 * 1024) == (
        StoreStatus.OUT_OF_RESOURCES)
    assert _submit(intake, deflated.getvalue(), max_inflated_bytes=MIB) == StoreStatus.SUCCESS
    assert seen == [("stowrs", "refused", "inflate_limit"), ("stowrs", "stored", "")]
