"""Bad input over C-STORE and over STOW-RS, into one running ``ossa serve`` (issue 12).

Every case is built here, in memory, from a valid radiograph: files truncated in the header
and in the pixel data, Pixel Data shorter and longer than its attributes say, 65535 x 65535
declared, a deflate bomb, wrong VRs, missing and hostile UIDs (``../``, ``/``, NUL,
non-ASCII), zero-length and non-DICOM bytes, an SR, an RT plan and an MR image sent by
mistake, multi-frame, RGB and 1-bit images, an undefined Specific Character Set. Each is
sent to the same service between two valid instances of a study, over one association
(the case's data set bytes as they are, unparsed: pynetdicom's chunked send) and in one
STOW-RS request. For each: the documented status, a log line naming the instance (or why
there is none) and the reason, the service still answering; at the end, every valid
instance reported in an SR at the destination (DCMTK storescp), no file outside the spool,
and the service's resident memory grown by less than 200 MB over all the cases.

The unit tests at the end cover the fixes these cases led to.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import struct
import subprocess
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels import pack_bits
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    RTPlanStorage,
    generate_uid,
)
from pynetdicom import AE, _config

from dicom_io.derived import encode_file
from dicom_io.pixels import MAX_PIXELS, PixelDataError, check_pixel_module
from dicom_io.sr import build_sr
from dicom_io.synthetic import StudyIdentity, radiograph_dataset
from harness.config import write_config
from harness.peers import free_port, wait_until
from models.serving.taxonomy import MURA_TAXONOMY
from tests.conftest import OSSA, Served, dciodvfy_errors, echo, evidence_sop_uids, running_storescp
from tests.test_sr import _single
from worker.admission import StoreStatus, is_ui_value
from worker.logsafe import printable

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
#: The calling AE title of the C-STORE sender.
CALLING = "STORESCU"
#: What the service's resident memory may grow by over all the cases.
MAX_RSS_GROWTH = 200 * MIB
#: Context of a SOP Class that the listener does not negotiate: no status, a rejection.
REJECTED = None
#: HTTP statuses of a STOW-RS request (PS3.18 10.5.3).
HTTP_OK, HTTP_ACCEPTED = 200, 202


# --- building the cases -------------------------------------------------------------------


def _image() -> np.ndarray:
    image = np.full((64, 48), 20, dtype=np.uint8)
    image[:, 16:32] = 220
    return image


def _radiograph(identity: StudyIdentity, series_uid: str, number: int = 1) -> Dataset:
    """A valid CR (64 x 48, 8 bits) of ``identity``'s study."""
    return radiograph_dataset(_image(), identity, series_instance_uid=series_uid,
                              instance_number=number, modality="CR")


def _part10(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file, in the transfer syntax of its file meta."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meta_bytes(meta: FileMetaDataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return bytes(buffer.getvalue())


def _explicit_le(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def _data_set_offset(data: bytes) -> int:
    """Where the data set starts in a Part 10 file (after the File Meta Information)."""
    group_length = struct.unpack_from("<I", data, 128 + 4 + 8)[0]
    return 128 + 4 + 12 + int(group_length)


def _with_raw_uid(ds: Dataset, keyword: str, raw: bytes, *, in_meta: bool) -> bytes:
    """``ds`` as a file whose ``keyword`` (and, with ``in_meta``, the Media Storage SOP
    Instance UID) holds the bytes ``raw``, which pydicom would not write: written with a
    placeholder of the same even length, then replaced."""
    padded = raw + b"\x00" * (len(raw) % 2)
    placeholder = ("9" * len(padded)).encode()
    setattr(ds, keyword, placeholder.decode())
    if in_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = placeholder.decode()
    data = _part10(ds)
    assert data.count(placeholder) == (2 if in_meta else 1)
    return data.replace(placeholder, padded)


@dataclass(frozen=True)
class Hostile:
    """One case: its bytes and what each protocol answers.

    ``dimse`` is the C-STORE status, or :data:`REJECTED` when the SOP Class is not
    negotiated (``sop_class`` then names it); ``stow`` the Failure Reason of the STOW-RS
    part, ``SUCCESS`` when it is acknowledged (and then stored and reported). ``log`` is the
    reason the log line gives after the instance's UID (``uid``, as the log shows it).
    """

    name: str
    data: bytes
    uid: str
    dimse: StoreStatus | None
    stow: StoreStatus
    log: str
    sop_class: str = ComputedRadiographyImageStorage
    syntax: str = ExplicitVRLittleEndian
    stow_data: bytes | None = None  # another STOW-RS part than ``data``
    stow_log: str | None = None  # the STOW-RS log line, when it names no instance
    report_log: str | None = None  # what the report stage logs of a stored instance

    @property
    def stored(self) -> bool:
        return self.stow is StoreStatus.SUCCESS


def _truncated_header(ds: Dataset) -> Hostile:
    data = _part10(ds)
    start = _data_set_offset(data)
    pixels = data.index(b"\xe0\x7f\x10\x00")
    cut = data[: start + (pixels - start) // 2 + 3]  # in the middle of an element
    return Hostile("truncated-header", cut, ds.SOPInstanceUID, StoreStatus.CANNOT_UNDERSTAND,
                   StoreStatus.CANNOT_UNDERSTAND, "data set")


def _truncated_pixels(ds: Dataset) -> Hostile:
    data = _part10(ds)
    return Hostile("truncated-pixel-data", data[:-1001], ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "data set is truncated")


def _short_pixels(ds: Dataset) -> Hostile:
    ds.PixelData = ds.PixelData[:10]
    return Hostile("pixel-data-short", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "PixelData holds 10 bytes")


def _long_pixels(ds: Dataset) -> Hostile:
    ds.PixelData = ds.PixelData + bytes(1000)  # read as Rows x Columns; the rest is ignored
    return Hostile("pixel-data-long", _part10(ds), ds.SOPInstanceUID, StoreStatus.SUCCESS,
                   StoreStatus.SUCCESS, "Stored")


def _huge_native(ds: Dataset) -> Hostile:
    ds.Rows = ds.Columns = 65535
    return Hostile("65535x65535-native", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "Rows x Columns is 65535 x 65535")


def _huge_rle(ds: Dataset) -> Hostile:
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = 65535  # encapsulated: no length to compare, 8 GiB if decoded
    return Hostile("65535x65535-rle", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "Rows x Columns is 65535 x 65535", syntax=RLELossless)


def _deflate_bomb(ds: Dataset) -> Hostile:
    """1 GiB of zeros as Pixel Data, deflated to about 1 MiB (see tests/test_handlers.py)."""
    pixel_mib = 1024
    ds.Rows, ds.Columns = 16384, pixel_mib * 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    del ds.PixelData
    header = _explicit_le(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_mib * MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    mebibyte = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _meta_bytes(meta) + head + mebibyte * pixel_mib + compressor.flush()
    assert len(data) < 1.1 * MIB
    return Hostile("deflate-bomb", data, ds.SOPInstanceUID, StoreStatus.OUT_OF_RESOURCES,
                   StoreStatus.OUT_OF_RESOURCES, "deflated data set inflates past",
                   syntax=DeflatedExplicitVRLittleEndian)


def _rows_as_text(ds: Dataset) -> Hostile:
    del ds.Rows
    ds.add_new(0x00280010, "LO", "SIXTY-FOUR")  # Rows is US
    return Hostile("wrong-vr-rows-LO", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "malformed image pixel attributes")


def _study_uid_as_sequence(ds: Dataset) -> Hostile:
    del ds.StudyInstanceUID
    item = Dataset()
    item.CodeValue = "1"
    ds.add_new(0x0020000D, "SQ", [item])  # Study Instance UID is UI
    return Hostile("wrong-vr-study-uid-SQ", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   "Study Instance UID")


def _missing_study_uid(ds: Dataset) -> Hostile:
    del ds.StudyInstanceUID
    return Hostile("missing-study-uid", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   "Study or SOP Instance UID is missing")


def _missing_sop_uid(ds: Dataset) -> Hostile:
    del ds.SOPInstanceUID  # the file meta (and so the request) still names one
    return Hostile("missing-sop-uid", _part10(ds), ds.file_meta.MediaStorageSOPInstanceUID,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   "Study or SOP Instance UID is missing")


def _missing_series_uid(ds: Dataset) -> Hostile:
    del ds.SeriesInstanceUID  # stored, it would stop the study's SR from being built
    return Hostile("missing-series-uid", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   "Series Instance UID is missing")


#: A relative path that would land beside the storage root if a UID became a path.
ESCAPE = "escape-" + secrets.token_hex(4)


def _hostile_uid(name: str, raw: bytes) -> Callable[[Dataset], Hostile]:
    def build(ds: Dataset) -> Hostile:
        data = _with_raw_uid(ds, "SOPInstanceUID", raw, in_meta=True)
        shown = printable(raw.rstrip(b"\x00").decode("latin-1"))  # as pydicom decodes UI
        return Hostile(name, data, shown, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       "SOP Instance UID")
    return build


def _study_uid_dotdot(ds: Dataset) -> Hostile:
    data = _with_raw_uid(ds, "StudyInstanceUID", f"../../../../{ESCAPE}".encode(),
                         in_meta=False)
    return Hostile("study-uid-dotdot", data, ds.SOPInstanceUID,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Study Instance UID")


def _zero_length(ds: Dataset) -> Hostile:
    # C-STORE: a File Meta Information and no data set at all; STOW-RS: an empty part.
    return Hostile("zero-length", _meta_bytes(ds.file_meta), ds.SOPInstanceUID,
                   StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, StoreStatus.CANNOT_UNDERSTAND,
                   "Study or SOP Instance UID is missing", stow_data=b"",
                   stow_log="STOW-RS: refused a part of 0 bytes: not a DICOM file")


def _not_dicom(ds: Dataset) -> Hostile:
    junk = b"%PDF-1.4 this is not DICOM " + bytes(range(256)) * 8
    return Hostile("non-dicom-bytes", _meta_bytes(ds.file_meta) + junk, ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "data set is truncated", stow_data=junk,
                   stow_log=f"STOW-RS: refused a part of {len(junk)} bytes: not a DICOM file")


def _foreign_sr(ds: Dataset) -> Hostile:
    sr = Dataset()
    sr.SOPClassUID = Comprehensive3DSRStorage
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID = ds.StudyInstanceUID
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.Manufacturer = "Elsewhere"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return Hostile("sr-by-mistake", _part10(sr), sr.SOPInstanceUID,
                   StoreStatus.SOP_CLASS_NOT_SUPPORTED, StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                   "not a radiograph Ossa reads", sop_class=Comprehensive3DSRStorage)


def _other_class(name: str, sop_class: str, modality: str) -> Callable[[Dataset], Hostile]:
    def build(ds: Dataset) -> Hostile:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.Modality = modality
        if modality == "RTPLAN":
            for keyword in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored"):
                delattr(ds, keyword)
            ds.RTPlanLabel = "PLAN"
        return Hostile(name, _part10(ds), ds.SOPInstanceUID, REJECTED,
                       StoreStatus.SOP_CLASS_NOT_SUPPORTED, "not a radiograph Ossa reads",
                       sop_class=sop_class)
    return build


def _multi_frame(ds: Dataset) -> Hostile:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return Hostile("multi-frame", _part10(ds), ds.SOPInstanceUID,
                   StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND,
                   "NumberOfFrames is 2; only single-frame images are read")


def _rgb(ds: Dataset) -> Hostile:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = np.repeat(_image()[..., None], 3, axis=2).tobytes()
    return Hostile("rgb", _part10(ds), ds.SOPInstanceUID, StoreStatus.CANNOT_UNDERSTAND,
                   StoreStatus.CANNOT_UNDERSTAND,
                   "PhotometricInterpretation is 'RGB', not MONOCHROME1/2")


def _one_bit(ds: Dataset) -> Hostile:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = pack_bits(_image() > 100)
    return Hostile("1-bit", _part10(ds), ds.SOPInstanceUID, StoreStatus.SUCCESS,
                   StoreStatus.SUCCESS, "Stored",
                   report_log=f"SOP Instance {ds.SOPInstanceUID} not assessed: BitsStored is 1")


def _undefined_charset(ds: Dataset) -> Hostile:
    data = _part10(ds)
    assert data.count(b"ISO_IR 100") == 1
    return Hostile("undefined-character-set", data.replace(b"ISO_IR 100", b"ISO-8859-1"),
                   ds.SOPInstanceUID, StoreStatus.SUCCESS, StoreStatus.SUCCESS, "Stored")


CASES: list[Callable[[Dataset], Hostile]] = [
    _truncated_header,
    _truncated_pixels,
    _short_pixels,
    _long_pixels,
    _huge_native,
    _huge_rle,
    _deflate_bomb,
    _rows_as_text,
    _study_uid_as_sequence,
    _missing_study_uid,
    _missing_sop_uid,
    _missing_series_uid,
    _hostile_uid("sop-uid-dotdot", f"1.2.826.0.1.3/../../../../{ESCAPE}".encode()),
    _hostile_uid("sop-uid-slash", b"1.2.826.0.1.3/4"),
    _hostile_uid("sop-uid-nul", b"1.2.826.0.1.3\x00.4.5"),
    _hostile_uid("sop-uid-non-ascii", "1.2.826.0.1.3.é".encode()),
    _study_uid_dotdot,
    _zero_length,
    _not_dicom,
    _foreign_sr,
    _other_class("rt-plan-by-mistake", RTPlanStorage, "RTPLAN"),
    _other_class("mr-by-mistake", MRImageStorage, "MR"),
    _multi_frame,
    _rgb,
    _one_bit,
    _undefined_charset,
]


# --- the service ---------------------------------------------------------------------------


@dataclass
class Hostility:
    """The running service, its destination, and what the cases expect of it."""

    root: Path
    served: Served
    port: int
    http: str
    token: str
    pacs: Path
    cases: Path
    baseline_rss: int = 0
    #: Study Instance UID -> SOP Instance UIDs its SR must reference.
    expected: dict[str, set[str]] = field(default_factory=dict)
    #: Study Instance UID -> SOP Instance UIDs its SR must not reference.
    refused: dict[str, set[str]] = field(default_factory=dict)
    #: Lines the report stage must log.
    report_logs: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.served.proc.pid)


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _srs(pacs: Path) -> dict[str, set[str]]:
    """Study Instance UID -> SOP Instance UIDs referenced by the SRs storescp received."""
    found: dict[str, set[str]] = {}
    for path in pacs.iterdir():
        try:
            sr = pydicom.dcmread(path)
        except Exception:  # still being written
            continue
        if sr.get("Modality") == "SR":
            found.setdefault(str(sr.StudyInstanceUID), set()).update(evidence_sop_uids(sr))
    return found


@pytest.fixture(scope="module")
def hostility(tmp_path_factory: pytest.TempPathFactory, trained_bundle: Path
              ) -> Iterator[Hostility]:
    """``ossa serve`` (C-STORE and STOW-RS in, a DCMTK storescp as the PACS), warmed up by
    one valid study reported end to end, its peak resident size then reset."""
    root = tmp_path_factory.mktemp("hostile")
    pacs, cases = root / "pacs", root / "cases"
    cases.mkdir()
    with running_storescp(pacs) as pacs_port:
        yield from _hostile_service(root, pacs, cases, pacs_port, trained_bundle)


def _hostile_service(root: Path, pacs: Path, cases: Path, pacs_port: int,
                     trained_bundle: Path) -> Iterator[Hostility]:
    port, http_port = free_port(), free_port()
    token = secrets.token_hex(16)
    (root / "http.token").write_text(token + "\n", encoding="utf-8")
    config = write_config(
        root / "config.toml",
        listener={"port": port, "allowed_calling_aets": [CALLING]},
        study={"completion_timeout_s": 1.0},
        model={"bundle": trained_bundle},
        results={"secondary_capture": False},
        http={"enabled": True, "port": http_port, "token_file": "http.token"},
        delivery={"retry_initial_interval_s": 0.5, "retry_max_interval_s": 2},
        destinations=[{"name": "pacs", "type": "dimse", "ae_title": "STORESCP",
                       "host": "127.0.0.1", "port": pacs_port, "timeout_s": 10}],
    )
    served: Served | None = None
    try:
        served = Served(config, port)
        run = Hostility(root, served, port, f"http://127.0.0.1:{http_port}", token, pacs, cases)
        identity = _identity()
        warm = [_radiograph(identity, generate_uid())]
        _c_store(run, [_write(run, "warm", _part10(warm[0]))], [ComputedRadiographyImageStorage])
        wait_until(lambda: identity.study_instance_uid in _srs(pacs), timeout=120,
                   what="the warm-up study's SR")
        Path(f"/proc/{run.pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
        run.baseline_rss = _memory(run.pid)["VmRSS"]
        yield run
    finally:
        if served is not None:
            served.stop()


def _identity() -> StudyIdentity:
    return StudyIdentity(patient_id="HOSTILE-ID", patient_name="Hostile^Patient",
                         accession_number="H1", body_part="WRIST")


def _write(run: Hostility, name: str, data: bytes) -> Path:
    path = run.cases / f"{name}-{uuid.uuid4().hex}.dcm"
    path.write_bytes(data)
    return path


def _c_store(run: Hostility, files: list[Path], sop_classes: list[str],
             syntaxes: list[str] | None = None) -> tuple[list[int | None], set[str], int]:
    """C-STORE each file's data set bytes as they are (pynetdicom reads the File Meta
    Information only), over one association; the statuses (None: no accepted context), the
    abstract syntaxes of the rejected contexts and the local port (the audit's peer port)."""
    syntaxes = syntaxes or [ExplicitVRLittleEndian] * len(files)
    ae = AE(ae_title=CALLING)
    for pair in dict.fromkeys(zip(sop_classes, syntaxes, strict=True)):
        ae.add_requested_context(pair[0], [pair[1]])
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", run.port, ae_title="OSSA")
        assert assoc.is_established
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        local_port = int(assoc.dul.socket.socket.getsockname()[1])
        statuses: list[int | None] = []
        try:
            for path, sop_class in zip(files, sop_classes, strict=True):
                if sop_class in rejected:
                    statuses.append(None)
                    continue
                response = assoc.send_c_store(path)
                statuses.append(int(response.Status) if "Status" in response else -1)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return statuses, rejected, local_port


def _stow(run: Hostility, parts: list[bytes]) -> httpx.Response:
    boundary = uuid.uuid4().hex.encode()
    body = b"".join(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
                    + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    return httpx.post(
        run.http + "/dicomweb/studies", content=body, timeout=120,
        headers={"Authorization": f"Bearer {run.token}",
                 "Content-Type": "multipart/related; type=\"application/dicom\"; boundary="
                 + boundary.decode()},
    )


def _log_has(run: Hostility, *needles: str) -> bool:
    return any(all(n in line for n in needles) for line in run.served.text().splitlines())


def _alive(run: Hostility) -> None:
    assert run.served.proc.poll() is None, run.served.text()[-3000:]
    assert echo(run.port, CALLING).returncode == 0


@pytest.mark.parametrize("build", CASES, ids=[
    "truncated-header", "truncated-pixel-data", "pixel-data-short", "pixel-data-long",
    "65535x65535-native", "65535x65535-rle", "deflate-bomb", "wrong-vr-rows-LO",
    "wrong-vr-study-uid-SQ", "missing-study-uid", "missing-sop-uid", "missing-series-uid",
    "sop-uid-dotdot", "sop-uid-slash", "sop-uid-nul", "sop-uid-non-ascii", "study-uid-dotdot",
    "zero-length", "non-dicom-bytes", "sr-by-mistake", "rt-plan-by-mistake", "mr-by-mistake",
    "multi-frame", "rgb", "1-bit", "undefined-character-set",
])
def test_case_over_c_store_and_stow_rs(hostility: Hostility,
                                       build: Callable[[Dataset], Hostile]) -> None:
    run = hostility
    for protocol in ("dimse", "stowrs"):
        identity = _identity()
        series = generate_uid()
        first, last = _radiograph(identity, series, 1), _radiograph(identity, series, 3)
        case = build(_radiograph(identity, series, 2))
        valid = {first.SOPInstanceUID, last.SOPInstanceUID}
        if protocol == "dimse":
            files = [_write(run, "first", _part10(first)), _write(run, case.name, case.data),
                     _write(run, "last", _part10(last))]
            statuses, rejected, local_port = _c_store(
                run, files, [ComputedRadiographyImageStorage, case.sop_class,
                             ComputedRadiographyImageStorage],
                [ExplicitVRLittleEndian, case.syntax, ExplicitVRLittleEndian])
            assert statuses == [StoreStatus.SUCCESS, case.dimse, StoreStatus.SUCCESS], case.name
            log = ("Refused SOP Instance " + case.uid, case.log)
            if case.dimse is REJECTED:
                assert rejected == {case.sop_class}  # abstract-syntax-not-supported
                # No handler saw it: the audit names the rejected context, and the
                # association's line counts the two stored instances and no refusal.
                name = UID(case.sop_class).name
                assert _log_has(run, f"127.0.0.1:{local_port}", "presentation context(s)"
                                " rejected", f"{name}: abstract syntax not supported"), name
                log = (f"peer=127.0.0.1:{local_port} ", "stored=2 ", "refused=0 ",
                       "outcome=released")
        else:
            part = case.data if case.stow_data is None else case.stow_data
            response = _stow(run, [_part10(first), part, _part10(last)])
            body = Dataset.from_json(response.json())
            acknowledged = {i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence}
            if case.stored:
                assert response.status_code == HTTP_OK, response.text
                assert "FailedSOPSequence" not in body
            else:
                assert response.status_code == HTTP_ACCEPTED, response.text
                (failed,) = body.FailedSOPSequence
                assert failed.FailureReason == case.stow, case.name
                assert acknowledged == valid
            log = (case.stow_log,) if case.stow_log else ("Refused SOP Instance " + case.uid,
                                                          case.log)
        if case.stored:
            log = (f"Stored SOP Instance {case.uid} of study {identity.study_instance_uid}",)
            valid.add(case.uid)
            if case.report_log:
                run.report_logs.append(case.report_log)
        else:
            run.refused.setdefault(identity.study_instance_uid, set()).add(case.uid)
        wait_until(lambda log=log: _log_has(run, *log), timeout=10,  # type: ignore[misc]
                   what=f"a log line with {log} ({case.name}, {protocol})")
        run.expected[identity.study_instance_uid] = valid
        _alive(run)


def test_every_valid_instance_is_reported_and_no_refused_one(hostility: Hostility) -> None:
    run = hostility
    if not run.expected:
        pytest.skip("no case was sent")

    def reported() -> bool:
        srs = _srs(run.pacs)
        return all(uids <= srs.get(study, set()) for study, uids in run.expected.items())

    wait_until(reported, timeout=180, what="an SR for every study with a hostile instance")
    srs = _srs(run.pacs)
    for study, uids in run.refused.items():
        assert not uids & srs[study], study
    text = run.served.text()
    for line in run.report_logs:
        assert line in text
    assert "Traceback" not in text
    assert "Hostile" not in text and "HOSTILE-ID" not in text  # no patient data in the log
    status = subprocess.run([OSSA, "status", "--json", "--config", str(run.root / "config.toml")],
                            capture_output=True, text=True, timeout=60, check=True)
    summary = json.loads(status.stdout)
    assert "failed" not in summary["studies"], summary  # every study got its SR


def test_no_file_outside_the_spool_and_memory_bounded(hostility: Hostility) -> None:
    run = hostility
    _alive(run)
    var = run.root / "var"
    assert {p.name for p in run.root.iterdir()} <= {
        "var", "pacs", "cases", "config.toml", "http.token", "ossa.log"}
    for path in var.rglob("*"):
        relative = path.relative_to(var)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name), relative
        assert ".." not in relative.parts
    for path in var.joinpath("instances").rglob("*.dcm"):
        assert path.resolve().is_relative_to(var.resolve())
    # Where "../" in a UID would have led, from the spool's study folders and from the root.
    for base in [var, *var.joinpath("instances").glob("*/*")]:
        for depth in range(1, 12):
            assert not (base / ("../" * depth) / ESCAPE).exists()
    memory = _memory(run.pid)
    grown = max(memory["VmHWM"], memory["VmRSS"]) - run.baseline_rss
    assert grown < MAX_RSS_GROWTH, f"RSS grew {grown / MIB:.0f} MiB: {memory}"


# --- unit tests of the fixes ---------------------------------------------------------------


def test_ui_values_and_printable_log_values() -> None:
    assert is_ui_value("1.2.840.10008.1.1") and is_ui_value("1.2.03")  # leading zero: allowed
    for bad in ("", "1.2/3", "../../x", "1.2.3\x00.4", "1.2.3.é", "1" * 65, "1.2.3 "):
        assert not is_ui_value(bad), bad
    assert printable("1.2.3") == "1.2.3"
    assert printable("1.2\n3\x00é") == "1.2\\x0a3\\x00\\xe9"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Rows": 65535, "Columns": 65535}, "Rows x Columns is 65535 x 65535; at most"),
        ({"Rows": 0}, "Rows x Columns is 0 x 48: no pixels"),
        ({"BitsAllocated": 12}, "BitsAllocated is 12, not 1, 8, 16 or 32"),
    ],
)
def test_pixel_module_refuses_sizes_nothing_should_decode(change: dict[str, int],
                                                          message: str) -> None:
    ds = _radiograph(_identity(), generate_uid())
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    with pytest.raises(PixelDataError, match=re.escape(message)):
        check_pixel_module(ds)
    assert MAX_PIXELS >= 4096 * 5120  # every real detector fits


@pytest.mark.parametrize("charset", [b"ISO-8859-1", b"LATIN1-XYZ", b"ISO_IR 100\\UTF8  "])
def test_sr_of_a_source_with_an_undefined_character_set(charset: bytes, tmp_path: Path) -> None:
    """The SR is built (UTF-8, the source's text as pydicom decoded it) and valid."""
    ds = _radiograph(_identity(), generate_uid())
    ds.PatientName = "Müller^Zoë"
    data = _part10(ds)
    assert data.count(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == 1
    tag = b"\x08\x00\x05\x00CS"
    padded = charset + b" " * (len(charset) % 2)
    data = data.replace(tag + b"\x0a\x00ISO_IR 100", tag + struct.pack("<H", len(padded))
                        + padded)
    source = pydicom.dcmread(io.BytesIO(data))
    prediction = _single("WRIST")
    sr = build_sr([source], prediction, taxonomy=MURA_TAXONOMY)
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode_file(sr))
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    if charset == b"ISO-8859-1":  # pydicom reads it as Latin-1
        assert str(back.PatientName) == "Müller^Zoë"
    assert json.dumps(str(back.PatientName))  # text, whatever it was decoded as
