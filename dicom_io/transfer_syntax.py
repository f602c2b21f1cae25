"""The transfer syntaxes Ossa negotiates, in one table, and bounded inflation of deflated data.

A PACS forwards an image the way it stored it, so the listener accepts every transfer syntax a
PACS commonly sends (PS3.5 Section 10 and Annex A) whose pixel data this install can decode:
decoding is pydicom's, with its maintained plugins (pylibjpeg with its openjpeg, libjpeg and
rle plugins, pyjpegls, python-gdcm; pydicom's own for native and RLE data). A syntax whose
decoder is missing is not negotiated, so a sender falls back to one Ossa can read instead of
having the instance refused after the transfer.
"""

from __future__ import annotations

import zlib

from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
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
)

#: Every transfer syntax Ossa can accept, whether or not this install decodes it.
CANDIDATE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,  # PS3.5 A.2, uncompressed
    ImplicitVRLittleEndian,  # A.1, the default every AE supports
    ExplicitVRBigEndian,  # A.3, retired but still sent by older modalities
    DeflatedExplicitVRLittleEndian,  # A.5, zlib; inflated within listener.max_inflated_mb
    RLELossless,  # A.4.2, Annex G
    JPEGBaseline8Bit,  # A.4.1, process 1: lossy, 8 bit
    JPEGExtended12Bit,  # A.4.1, processes 2 and 4: lossy, 12 bit
    JPEGLossless,  # A.4.1, process 14, any predictor
    JPEGLosslessSV1,  # A.4.1, process 14 selection value 1: the usual lossless JPEG
    JPEGLSLossless,  # A.4.3
    JPEGLSNearLossless,  # A.4.3, bounded error
    JPEG2000Lossless,  # A.4.4, reversible wavelet only
    JPEG2000,  # A.4.4, lossy or lossless
    HTJ2KLossless,  # High-Throughput JPEG 2000 (ISO/IEC 15444-15), reversible
    HTJ2KLosslessRPCL,  # the same with RPCL progression order
    HTJ2K,  # High-Throughput JPEG 2000, lossy or lossless
)


def decoder_available(transfer_syntax: str) -> bool:
    """Whether this install can decode Pixel Data encoded in ``transfer_syntax``.

    Parameters
    ----------
    transfer_syntax : str
        A Transfer Syntax UID.

    Returns
    -------
    bool
        True when pydicom has a decoder for it: its own for a native syntax, else at least
        one installed plugin that is not in :data:`EXCLUDED_PLUGINS`.
    """
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except NotImplementedError:  # pydicom knows no decoder for this syntax at all
        return False
    if not decoder.is_available:
        return False
    if not UID(transfer_syntax).is_encapsulated:
        return True
    return any(p not in EXCLUDED_PLUGINS for p in decoder.available_plugins)


def decoder_plugins(transfer_syntax: str) -> tuple[str, ...]:
    """Names of the installed pydicom decoder plugins for ``transfer_syntax`` (sorted),
    ``()`` when there is none."""
    try:
        return tuple(get_decoder(UID(transfer_syntax)).available_plugins)
    except NotImplementedError:
        return ()


#: Decoder plugins tried first, where installed, for the syntaxes whose fastest plugin is not
#: pydicom's first choice: for JPEG-LS, pyjpegls (CharLS) decodes a 3000 x 2500 12-bit
#: radiograph in about 60% of GDCM's time.
PREFERRED_PLUGINS: dict[UID, str] = {
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
}


#: Decoder plugins never used. GDCM aborts the whole process (a C++ ``abort``, which no
#: ``except`` catches) on some corrupt RLE and JPEG-LS data (found by tests/test_fuzz.py),
#: and so would take the service down with it; every syntax GDCM decodes has another plugin
#: in the dependencies of pyproject.toml (pydicom, pylibjpeg, pyjpegls, Pillow), which raise
#: an exception instead.
EXCLUDED_PLUGINS = frozenset({"gdcm"})


def decoding_plugins(transfer_syntax: str) -> tuple[str, ...]:
    """The installed decoder plugins to try, in order, for ``transfer_syntax``: the
    preferred one (:data:`PREFERRED_PLUGINS`) first, then pydicom's, less
    :data:`EXCLUDED_PLUGINS`; ``("",)`` (pydicom's own decoding) for a native syntax, which
    has no plugins; ``()`` when :func:`decoder_available` says it cannot be decoded."""
    if not decoder_available(transfer_syntax):
        return ()
    if not UID(transfer_syntax).is_encapsulated:
        return ("",)
    preferred = preferred_plugin(transfer_syntax)
    ordered = ((preferred,) if preferred else ()) + tuple(
        p for p in decoder_plugins(transfer_syntax) if p != preferred
    )
    return tuple(p for p in ordered if p not in EXCLUDED_PLUGINS)


def preferred_plugin(transfer_syntax: str) -> str:
    """The pydicom decoding plugin to try first for ``transfer_syntax``; ``""`` (pydicom's
    own order) when none is preferred or the preferred one is not installed."""
    plugin = PREFERRED_PLUGINS.get(UID(transfer_syntax), "")
    return plugin if plugin in decoder_plugins(transfer_syntax) else ""


#: The transfer syntaxes negotiated by the listener, preferred first: the candidates this
#: install decodes.
TRANSFER_SYNTAXES: tuple[UID, ...] = tuple(
    uid for uid in CANDIDATE_TRANSFER_SYNTAXES if decoder_available(uid)
)

#: Inflated bytes produced per step while a deflated data set is measured.
_INFLATE_CHUNK = 1 << 20


class InflateLimitError(ValueError):
    """A deflated data set that inflates past the configured bound."""


def inflate(deflated: bytes, max_bytes: int) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5), at most ``max_bytes``.

    The stream is raw deflate (RFC 1951, no zlib header). It is inflated twice: first chunk
    by chunk, keeping only the count, so that a deflate bomb costs about one chunk
    (1 MiB) of memory before it is refused; then, known to fit, in one piece.

    Parameters
    ----------
    deflated : bytes
        The data set as received.
    max_bytes : int
        Largest inflated size accepted.

    Returns
    -------
    bytes
        The inflated data set (Explicit VR Little Endian).

    Raises
    ------
    InflateLimitError
        If it inflates to more than ``max_bytes``.
    ValueError
        If the stream is not valid raw deflate or ends before its final block.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    size = _inflated_size(deflated, max_bytes)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(deflated, size + 1)
    if len(data) != size:  # cannot happen for the same bytes; guards the bound regardless
        raise ValueError(f"deflate stream inflated to {len(data)} bytes, not {size} as measured")
    return data


def _inflated_size(deflated: bytes, max_bytes: int) -> int:
    """The inflated size of a raw deflate stream, or an error as soon as it passes
    ``max_bytes``; the output is discarded as it is produced."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = deflated
    size = 0
    try:
        while not inflater.eof:
            produced = len(inflater.decompress(pending, _INFLATE_CHUNK))
            size += produced
            if size > max_bytes:
                raise InflateLimitError(f"deflated data set inflates past {max_bytes} bytes")
            pending = inflater.unconsumed_tail
            if not produced and not pending and not inflater.eof:
                raise ValueError("deflated data set ends before its last deflate block")
    except zlib.error as exc:
        raise ValueError(f"deflated data set is not a valid deflate stream: {exc}") from exc
    return size
