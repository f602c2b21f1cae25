"""Every transfer syntax the listener negotiates (dicom_io.transfer_syntax).

The same radiograph, encoded in each syntax by a real encoder (DCMTK, pydicom's encoder
plugins, OpenJPH for HTJ2K), gives the same normalized image: identical for the lossless
syntaxes, within a stated tolerance for the lossy ones. Each file then goes through a real
association into the listener, and the stored file keeps the syntax it was sent in.

Lossy tolerance, on the [0, 1] image of a 256 x 200 12-bit radiograph with noise (mean and
largest absolute difference from the uncompressed image), measured with these encoders:

====================================  ========  ========
encoding                              mean      max
====================================  ========  ========
JPEG baseline, DCMTK quality 90 (8b)  0.0066    0.067
JPEG extended, DCMTK quality 90       0.0008    0.0044
JPEG 2000, compression ratio 20       0.0062    0.069
HTJ2K, OpenJPH qstep 0.002            0.0006    0.0037
JPEG-LS near-lossless, NEAR = 2       0.0003    2 / 4095 (the codec's bound, asserted)
====================================  ========  ========

so a lossy syntax must stay within ``LOSSY_MEAN`` = 0.01 and ``LOSSY_MAX`` = 0.1. The NEMA WG04
lossy CRs of pydicom-data (``RG1_J2KI``, ``RG3_J2KI``) are within 0.0017 (mean) and 0.0134 (max)
of their originals.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    MPEG2MPML,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset

from dicom_io.pixels import normalize_radiograph
from dicom_io.synthetic import StudyIdentity, radiograph_dataset
from dicom_io.transfer_syntax import (
    CANDIDATE_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    InflateLimitError,
    decoder_available,
    decoder_plugins,
    inflate,
    preferred_plugin,
)
from harness.peers import free_port
from models.serving.predict import TwoStageClassifier
from models.serving.results import ImagePrediction
from tests.conftest import dcmtk
from worker.config import ListenerConfig
from worker.handlers import StoreStatus, handle_store
from worker.intake import Intake
from worker.spool import Spool
from worker.store import StateStore

ROWS, COLUMNS = 256, 200
#: Largest mean and largest absolute difference of a lossy syntax's image (see above).
LOSSY_MEAN = 0.01
LOSSY_MAX = 0.1
#: JPEG-LS near-lossless bound on each stored value (NEAR parameter).
NEAR = 2
MIB = 1024 * 1024


def _phantom() -> np.ndarray:
    """A 12-bit wrist-like image: soft tissue, two bones with a bright cortex, a fracture
    line and noise; 255 = bright after normalization."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float64)
    image = 400 + 900 * np.exp(-(((x - COLUMNS / 2) / (COLUMNS / 3)) ** 2))
    for center, half_width in ((70, 22), (130, 18)):
        distance = np.abs(x - center - 8 * np.sin(y / 40))
        image = np.where(distance < half_width, 2200 + 900 * (distance > half_width - 5), image)
    image[100:104, 60:140] = 900
    image += rng.normal(0, 25, image.shape)
    return np.clip(np.rint(image), 0, 4095).astype(np.uint16)


PHANTOM = _phantom()
IDENTITY = StudyIdentity(
    patient_id="PID-TS", patient_name="Syntax^Test", accession_number="TS1", body_part="WRIST"
)


def _source(*, eight_bit: bool = False) -> Dataset:
    """The uncompressed radiograph (12-bit MONOCHROME1 CR, or its 8-bit twin for JPEG
    baseline), a new instance each time."""
    ds = radiograph_dataset(
        np.zeros((ROWS, COLUMNS), np.uint8), IDENTITY,
        series_instance_uid=generate_uid(), instance_number=1,
    )
    if eight_bit:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.PixelData = (255 - (PHANTOM >> 4)).astype(np.uint8).tobytes()
    else:
        ds.PixelData = (4095 - PHANTOM).astype("<u2").tobytes()
    return ds


Encoder = Callable[[Path, Path], None]


def _dcmtk(tool: str, *options: str) -> Encoder:
    def encode(source: Path, out: Path) -> None:
        subprocess.run([dcmtk(tool), *options, str(source), str(out)], check=True,
                       capture_output=True, timeout=60)
    return encode


def _pydicom(syntax: UID, **kwargs: object) -> Encoder:
    def encode(source: Path, out: Path) -> None:
        ds = pydicom.dcmread(source)
        ds.compress(syntax, generate_instance_uid=False, **kwargs)  # type: ignore[arg-type]
        ds.save_as(out, enforce_file_format=True)
    return encode


def _openjph(syntax: UID, *options: str) -> Encoder:
    """HTJ2K with OpenJPH's ``ojph_compress`` (Debian openjph-tools), encapsulated by pydicom."""
    def encode(source: Path, out: Path) -> None:
        exe = shutil.which("ojph_compress")
        if exe is None:
            pytest.skip("no HTJ2K encoder: install the Debian package openjph-tools")
        ds = pydicom.dcmread(source)
        pgm, codestream = out.with_suffix(".pgm"), out.with_suffix(".j2c")
        pgm.write_bytes(b"P5\n%d %d\n4095\n" % (COLUMNS, ROWS)
                        + ds.pixel_array.astype(">u2").tobytes())
        subprocess.run([exe, "-i", str(pgm), "-o", str(codestream), *options], check=True,
                       capture_output=True, timeout=60)
        ds.PixelData = encapsulate([codestream.read_bytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(out, enforce_file_format=True)
    return encode


@dataclass(frozen=True)
class Encoding:
    """One way of encoding the radiograph."""

    name: str
    syntax: UID
    encode: Encoder
    lossless: bool = True
    near: int = 0  # JPEG-LS near-lossless bound on each stored value
    eight_bit: bool = False


ENCODINGS = (
    Encoding("explicit-dcmconv", ExplicitVRLittleEndian, _dcmtk("dcmconv", "+te")),
    Encoding("implicit-dcmconv", ImplicitVRLittleEndian, _dcmtk("dcmconv", "+ti")),
    Encoding("big-endian-dcmconv", ExplicitVRBigEndian, _dcmtk("dcmconv", "+tb")),
    Encoding("deflated-dcmconv", DeflatedExplicitVRLittleEndian, _dcmtk("dcmconv", "+td")),
    Encoding("rle-dcmcrle", RLELossless, _dcmtk("dcmcrle")),
    Encoding("rle-pydicom", RLELossless, _pydicom(RLELossless)),
    Encoding("jpeg-baseline-dcmcjpeg", JPEGBaseline8Bit, _dcmtk("dcmcjpeg", "+eb", "+un"),
             lossless=False, eight_bit=True),
    Encoding("jpeg-extended-dcmcjpeg", JPEGExtended12Bit, _dcmtk("dcmcjpeg", "+ee", "+un"),
             lossless=False),
    Encoding("jpeg-lossless-p14-dcmcjpeg", JPEGLossless, _dcmtk("dcmcjpeg", "+el", "+sv", "6")),
    Encoding("jpeg-lossless-sv1-dcmcjpeg", JPEGLosslessSV1, _dcmtk("dcmcjpeg", "+e1")),
    Encoding("jpeg-ls-dcmcjpls", JPEGLSLossless, _dcmtk("dcmcjpls", "+el")),
    Encoding("jpeg-ls-pyjpegls", JPEGLSLossless, _pydicom(JPEGLSLossless)),
    Encoding("jpeg-ls-near-dcmcjpls", JPEGLSNearLossless,
             _dcmtk("dcmcjpls", "+en", "+md", str(NEAR), "+un"), lossless=False, near=NEAR),
    Encoding("jpeg-ls-near-pyjpegls", JPEGLSNearLossless,
             _pydicom(JPEGLSNearLossless, jls_error=NEAR), lossless=False, near=NEAR),
    Encoding("j2k-lossless-openjpeg", JPEG2000Lossless, _pydicom(JPEG2000Lossless)),
    Encoding("j2k-lossy-openjpeg", JPEG2000, _pydicom(JPEG2000, j2k_cr=[20]), lossless=False),
    Encoding("htj2k-lossless-openjph", HTJ2KLossless,
             _openjph(HTJ2KLossless, "-reversible", "true", "-prog_order", "LRCP")),
    Encoding("htj2k-rpcl-openjph", HTJ2KLosslessRPCL,
             _openjph(HTJ2KLosslessRPCL, "-reversible", "true", "-prog_order", "RPCL")),
    Encoding("htj2k-lossy-openjph", HTJ2K, _openjph(HTJ2K, "-qstep", "0.002"), lossless=False),
)
#: What DCMTK 3.6.7's storescu can send as it is (it does not know the HTJ2K syntaxes).
STORESCU_SYNTAXES = tuple(uid for uid in TRANSFER_SYNTAXES if not uid.name.startswith("High"))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each encoding's file (a distinct SOP Instance each), plus ``reference-12`` and
    ``reference-8``: the uncompressed sources."""
    folder = tmp_path_factory.mktemp("encoded")
    files = {}
    for eight_bit in (False, True):
        name = f"reference-{8 if eight_bit else 12}"
        files[name] = folder / f"{name}.dcm"
        _source(eight_bit=eight_bit).save_as(files[name], enforce_file_format=True)
    for encoding in ENCODINGS:
        source = folder / f"{encoding.name}-source.dcm"
        _source(eight_bit=encoding.eight_bit).save_as(source, enforce_file_format=True)
        files[encoding.name] = folder / f"{encoding.name}.dcm"
        try:
            encoding.encode(source, files[encoding.name])
        except pytest.skip.Exception:
            del files[encoding.name]
    return files


def _image(path: Path) -> np.ndarray:
    return normalize_radiograph(pydicom.dcmread(path))


def test_every_candidate_syntax_is_decodable_and_negotiated() -> None:
    """pyproject installs a decoder for each, so the listener negotiates them all."""
    assert TRANSFER_SYNTAXES == CANDIDATE_TRANSFER_SYNTAXES
    assert len(TRANSFER_SYNTAXES) == 16
    assert {encoding.syntax for encoding in ENCODINGS} == set(TRANSFER_SYNTAXES)
    assert decoder_plugins(HTJ2K) == ("pylibjpeg",)
    assert "pyjpegls" in decoder_plugins(JPEGLSNearLossless)
    assert not decoder_available(MPEG2MPML)
    assert decoder_plugins("1.2.3.4") == ()
    from worker import service

    assert service.TRANSFER_SYNTAXES is TRANSFER_SYNTAXES


def test_jpeg_ls_prefers_pyjpegls() -> None:
    """pyjpegls (CharLS) decodes JPEG-LS faster than GDCM, which pydicom would try first."""
    assert preferred_plugin(JPEGLSLossless) == "pyjpegls"
    assert preferred_plugin(JPEGLSNearLossless) == "pyjpegls"
    assert preferred_plugin(ExplicitVRLittleEndian) == ""  # pydicom's own order
    assert preferred_plugin("1.2.3.4") == ""


def test_a_syntax_whose_only_decoders_are_excluded_is_not_decodable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Negotiation, the receipt check and decoding share one notion of "decodable": a
    syntax left with excluded plugins only (GDCM) is neither negotiated nor accepted."""
    from dicom_io import transfer_syntax

    assert decoder_available(JPEGLSLossless)
    assert transfer_syntax.decoding_plugins(JPEGLSLossless)[0] == "pyjpegls"
    assert transfer_syntax.decoding_plugins(ExplicitVRLittleEndian) == ("",)
    monkeypatch.setattr(transfer_syntax, "EXCLUDED_PLUGINS",
                        frozenset(decoder_plugins(JPEGLSLossless)))
    assert not decoder_available(JPEGLSLossless)
    assert transfer_syntax.decoding_plugins(JPEGLSLossless) == ()
    assert decoder_available(ExplicitVRLittleEndian)  # native: pydicom's own decoding


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw, as PS3.5 A.5
    return compressor.compress(data) + compressor.flush()


def test_inflate_is_exact_up_to_the_bound() -> None:
    data = bytes(range(256)) * 10_000 + bytes(3 * MIB)  # 5.4 MiB: several 1 MiB steps
    stream = _deflate(data)
    assert inflate(stream, len(data)) == data
    assert inflate(stream + b"\x00", len(data)) == data  # padded to an even length
    with pytest.raises(InflateLimitError, match=f"inflates past {len(data) - 1} bytes$"):
        inflate(stream, len(data) - 1)
    assert inflate(_deflate(b""), 1) == b""


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_deflate(bytes(range(256)) * 100)[:-20], "ends before its last deflate block"),
        (b"\xff\xff\xff\xff", "is not a valid deflate stream"),
        (zlib.compress(b"a zlib header is not raw deflate"), "is not a valid deflate stream"),
    ],
    ids=["truncated", "garbage", "zlib-wrapped"],
)
def test_inflate_refuses_a_broken_stream(stream: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        inflate(stream, MIB)
    assert not isinstance(info.value, InflateLimitError)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=[e.name for e in ENCODINGS])
def test_same_image_in_every_syntax(encoded: dict[str, Path], encoding: Encoding) -> None:
    if encoding.name not in encoded:
        pytest.skip("no HTJ2K encoder: install the Debian package openjph-tools")
    ds = pydicom.dcmread(encoded[encoding.name])
    assert ds.file_meta.TransferSyntaxUID == encoding.syntax
    image = normalize_radiograph(ds)
    reference = _image(encoded["reference-8" if encoding.eight_bit else "reference-12"])
    assert image.shape == (ROWS, COLUMNS)
    difference = np.abs(image.astype(np.float64) - reference)
    if encoding.lossless:
        np.testing.assert_array_equal(image, reference)
    elif encoding.near:
        # Stored values within NEAR of the original, under a full-range 12-bit window.
        assert 0 < difference.max() <= encoding.near / 4095 + 1e-6
    else:
        assert 0 < difference.mean() < LOSSY_MEAN
        assert difference.max() < LOSSY_MAX


#: Working size of the reduced-resolution tests: a factor 4 on the 256 x 200 radiograph.
REDUCED_SIDE = ROWS // 4


def _reduced(path: Path) -> np.ndarray:
    return normalize_radiograph(pydicom.dcmread(path), max_side=REDUCED_SIDE)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=[e.name for e in ENCODINGS])
def test_same_reduced_image_in_every_syntax(encoded: dict[str, Path], encoding: Encoding
                                            ) -> None:
    """At the reduced resolution the service asks for, lossless syntaxes give the reference's
    array, except JPEG 2000, decoded without its two highest wavelet levels: within 0.05 on
    average (its 5/3 low-pass band, centred on each block's first pixel, keeps more of the
    phantom's noise and step edges than a block mean; near the edges the difference reaches
    0.3); lossy ones within the lossy tolerances."""
    if encoding.name not in encoded:
        pytest.skip("no HTJ2K encoder: install the Debian package openjph-tools")
    image = _reduced(encoded[encoding.name])
    reference = _reduced(encoded["reference-8" if encoding.eight_bit else "reference-12"])
    assert image.shape == reference.shape == (ROWS // 4, COLUMNS // 4)
    difference = np.abs(image.astype(np.float64) - reference)
    if encoding.syntax in (JPEG2000Lossless, JPEG2000):
        assert difference.mean() < 0.05
    elif encoding.lossless:
        np.testing.assert_array_equal(image, reference)
    elif encoding.near:
        assert difference.max() <= encoding.near / 4095 + 1e-6
    else:
        assert difference.mean() < LOSSY_MEAN
        assert difference.max() < LOSSY_MAX


def test_same_reduced_prediction_in_every_syntax(
    encoded: dict[str, Path], classifier: TwoStageClassifier
) -> None:
    """At the reduced resolution: the same body part and verdict in every syntax, the
    abnormality probability within 0.05 (identical for the lossless ones other than JPEG
    2000)."""
    names = [e.name for e in ENCODINGS if e.name in encoded]
    by_name = {e.name: e for e in ENCODINGS}
    predictions = classifier.predict_images(
        [_reduced(encoded["reference-12"]), _reduced(encoded["reference-8"]),
         *(_reduced(encoded[n]) for n in names)]
    )
    expected = {False: predictions[0], True: predictions[1]}
    for name, got in zip(names, predictions[2:], strict=True):
        encoding = by_name[name]
        want = expected[encoding.eight_bit]
        assert got.body_part == want.body_part, name
        assert got.assessed == want.assessed, name
        if encoding.lossless and encoding.syntax not in (JPEG2000Lossless, JPEG2000):
            _assert_same(got, want, name)
        elif want.abnormal_probability is not None:
            assert got.abnormal_probability is not None
            assert abs(got.abnormal_probability - want.abnormal_probability) < 0.05, name


@pytest.mark.parametrize(
    ("twin", "original", "lossless"),
    [
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm", True),  # NEMA WG04 CR, 15-bit, JPEG 2000 lossless
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm", True),  # 10-bit
        ("RG1_J2KI.dcm", "RG1_UNCI.dcm", True),  # UNCI: the lossy J2KI, decompressed by WG04
        ("RG1_J2KI.dcm", "RG1_UNCR.dcm", False),  # lossy against the original
        ("RG3_J2KI.dcm", "RG3_UNCR.dcm", False),
        ("MR_small_implicit.dcm", "MR_small.dcm", True),  # signed 16-bit
        ("MR_small_bigendian.dcm", "MR_small.dcm", True),
        ("MR_small_RLE.dcm", "MR_small.dcm", True),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", True),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", True),
        ("JPEG2000.dcm", "JPEG2000_UNC.dcm", True),  # signed, no VOI
        ("693_J2KR.dcm", "693_UNCR.dcm", True),  # signed CT with rescale
    ],
)
def test_real_files_from_pydicom_data(twin: str, original: str, lossless: bool) -> None:
    twin_ds = pydicom.dcmread(get_testdata_file(twin))
    original_ds = pydicom.dcmread(get_testdata_file(original))
    assert twin_ds.file_meta.TransferSyntaxUID != original_ds.file_meta.TransferSyntaxUID
    image, reference = normalize_radiograph(twin_ds), normalize_radiograph(original_ds)
    if lossless:
        np.testing.assert_array_equal(image, reference)
    else:
        difference = np.abs(image.astype(np.float64) - reference)
        assert 0 < difference.mean() < 0.002
        assert difference.max() < 0.015


def test_monochrome1_and_its_inverted_monochrome2_twin_give_the_same_image() -> None:
    mono1 = _source()
    mono2 = _source()
    mono2.PhotometricInterpretation = "MONOCHROME2"
    mono2.PixelData = PHANTOM.astype("<u2").tobytes()
    # The window mirrored about the 12-bit range: LINEAR's centre is c - 0.5, so 4095 - c + 1.
    mono2.WindowCenter = 4095 - int(mono1.WindowCenter) + 1
    image = normalize_radiograph(mono2)
    np.testing.assert_allclose(normalize_radiograph(mono1), image, atol=1e-6)
    assert image[0, 0] < 0.3 and image[0, 70] > 0.5  # soft tissue dark, bone bright
    for ds in (mono1, mono2):
        del ds.WindowCenter, ds.WindowWidth  # and with the data range instead of a window
    np.testing.assert_allclose(normalize_radiograph(mono1), normalize_radiograph(mono2),
                               atol=1e-6)


def test_real_monochrome1_cr_and_its_inverted_twin() -> None:
    """NEMA WG04 RG3: a 10-bit MONOCHROME1 CR with a window."""
    original = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    twin = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    twin.PhotometricInterpretation = "MONOCHROME2"
    twin.PixelData = (1023 - twin.pixel_array).astype("<u2").tobytes()
    twin.WindowCenter = 1023 - int(original.WindowCenter) + 1
    np.testing.assert_allclose(normalize_radiograph(original), normalize_radiograph(twin),
                               atol=1e-6)


# --- through a real association into the listener ---


@dataclass(frozen=True)
class Listener:
    port: int
    spool: Spool
    store: StateStore


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """The service's AE (``build_ae``) with its C-STORE handler, on a free port."""
    from worker.service import build_ae

    root = tmp_path / "var"
    spool, store = Spool(root), StateStore.in_root(root)
    config = ListenerConfig(ae_title="OSSA")
    server = build_ae(config).start_server(
        ("127.0.0.1", port := free_port()), block=False,
        evt_handlers=[(evt.EVT_C_STORE, handle_store,
                       [Intake(spool, store), config.max_inflated_mb * MIB])],
    )
    yield Listener(port, spool, store)
    server.shutdown()
    store.close()


def _data_set_bytes(path: Path) -> bytes:
    """A file's bytes after its File Meta Information."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _stored(listener: Listener, calling_aet: str, sent: Path) -> Path:
    ds = pydicom.dcmread(sent, stop_before_pixels=True)
    relative = listener.spool.instance_path(calling_aet, ds.StudyInstanceUID, ds.SOPInstanceUID)
    return listener.spool.path(relative)


def test_every_syntax_is_accepted_and_stored_as_sent(
    encoded: dict[str, Path], listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom sends each file's data set bytes as they are (chunked send); the stored
    file holds exactly those bytes under a meta naming the same transfer syntax."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PYNETDICOM")
    for syntax in TRANSFER_SYNTAXES:
        ae.add_requested_context(ComputedRadiographyImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="OSSA")
    assert assoc.is_established
    sent = {e.name: (e.syntax, encoded[e.name]) for e in ENCODINGS if e.name in encoded}
    try:
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        assert accepted == set(TRANSFER_SYNTAXES)
        statuses = {name: assoc.send_c_store(path).Status for name, (_, path) in sent.items()}
    finally:
        assoc.release()
    assert statuses == dict.fromkeys(sent, StoreStatus.SUCCESS)
    for name, (syntax, path) in sent.items():
        stored = _stored(listener, "PYNETDICOM", path)
        meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == syntax, name
        assert _data_set_bytes(stored) == _data_set_bytes(path), name
    assert listener.store.summary().instances == {"stored": len(sent)}


def test_storescu_sends_every_syntax_it_knows(
    encoded: dict[str, Path], listener: Listener, tmp_path: Path
) -> None:
    """DCMTK storescu proposes one presentation context per syntax (an association
    configuration file) and sends each file in its own syntax."""
    sections = "\n".join(f"[TS{n}]\nTransferSyntax1 = {uid}"
                         for n, uid in enumerate(STORESCU_SYNTAXES, 1))
    contexts = "\n".join(f"PresentationContext{n} = ComputedRadiographyImageStorage\\TS{n}"
                         for n in range(1, len(STORESCU_SYNTAXES) + 1))
    config = tmp_path / "storescu.cfg"
    config.write_text(f"[[TransferSyntaxes]]\n{sections}\n[[PresentationContexts]]\n[Ossa]\n"
                      f"{contexts}\n[[Profiles]]\n[Ossa]\nPresentationContexts = Ossa\n")
    files = [encoded[e.name] for e in ENCODINGS if e.syntax in STORESCU_SYNTAXES]
    assert len(files) == 16
    proc = subprocess.run(
        [dcmtk("storescu"), "-xf", str(config), "Ossa", "-aet", "STORESCU", "-aec", "OSSA",
         "127.0.0.1", str(listener.port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Store Failed" not in proc.stdout + proc.stderr
    for path in files:
        stored = pydicom.dcmread(_stored(listener, "STORESCU", path))
        sent = pydicom.dcmread(path)
        assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID, path.name
        np.testing.assert_array_equal(normalize_radiograph(stored), normalize_radiograph(sent))
    assert listener.store.summary().instances == {"stored": len(files)}


def test_explicit_little_endian_reference_is_what_the_others_are_compared_to(
    encoded: dict[str, Path],
) -> None:
    """The references are uncompressed and render the phantom (bone bright)."""
    reference = pydicom.dcmread(encoded["reference-12"])
    assert reference.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    image = normalize_radiograph(reference)
    np.testing.assert_allclose(image, PHANTOM / 4095, atol=1e-3)


def test_same_prediction_in_every_syntax(
    encoded: dict[str, Path], classifier: TwoStageClassifier
) -> None:
    """The classifier sees the same radiograph whatever the syntax: lossless encodings give
    identical probabilities, lossy ones the same body part and an abnormality probability
    within 0.05."""
    names = [e.name for e in ENCODINGS if e.name in encoded]
    references = {False: _image(encoded["reference-12"]), True: _image(encoded["reference-8"])}
    by_name = {e.name: e for e in ENCODINGS}
    predictions = classifier.predict_images(
        [references[False], references[True], *(_image(encoded[n]) for n in names)]
    )
    expected = {False: predictions[0], True: predictions[1]}
    for name, got in zip(names, predictions[2:], strict=True):
        encoding = by_name[name]
        want = expected[encoding.eight_bit]
        assert got.body_part == want.body_part, name
        assert got.assessed == want.assessed, name
        if encoding.lossless:
            _assert_same(got, want, name)
        elif want.abnormal_probability is not None:
            assert got.abnormal_probability is not None
            assert abs(got.abnormal_probability - want.abnormal_probability) < 0.05, name


def _assert_same(got: ImagePrediction, want: ImagePrediction, name: str) -> None:
    """The same prediction for the same pixels; the floats to 1e-5 (ONNX Runtime's kernels
    may round an image differently at another position in a batch)."""
    assert (got.body_part, got.assessed, got.reason) == (want.body_part, want.assessed,
                                                        want.reason), name
    for key in ("body_part_probability", "abnormal_probability", "ood_score"):
        assert getattr(got, key) == pytest.approx(getattr(want, key), abs=1e-5), (name, key)
    assert len(got.findings) == len(want.findings), name
    for a, b in zip(got.findings, want.findings, strict=True):
        assert a.as_dict() == pytest.approx(b.as_dict(), abs=1e-3), name
