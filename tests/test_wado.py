"""dicom_io.wado's streamed parsing of WADO-RS answers, fed as a socket delivers them."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_io.multipart import PART_IN_MEMORY
from dicom_io.wado import AnswerTooLargeError, MultipartError, _parse, qido_date_range

BOUNDARY = "ossa-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _message(*parts: bytes) -> bytes:
    body = b""
    for part in parts:
        body += (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n"
                 f"Content-Length: {len(part)}\r\n\r\n").encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_a_large_part_is_spooled_to_a_file_as_it_streams(tmp_path: Path) -> None:
    big = bytes(range(256)) * ((PART_IN_MEMORY + 1024) // 256)  # past what stays in memory
    small = b"DICM-small"
    parts = _parse(_chunks(_message(big, small), 65536), CONTENT_TYPE, str(tmp_path),
                   max_bytes=1 << 30)
    try:
        assert [p.size for p in parts] == [len(big), len(small)]
        assert parts[0].content._rolled  # type: ignore[attr-defined]  # on disk
        assert not parts[1].content._rolled  # type: ignore[attr-defined]
        parts[0].content.seek(0)
        assert parts[0].content.read() == big
        assert parts[0].media_type == "application/dicom"
    finally:
        for part in parts:
            part.content.close()


def test_an_answer_cut_short_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    body = _message(b"x" * 100_000)
    with pytest.raises(MultipartError, match="closing boundary"):
        _parse(_chunks(body[:50_000]), CONTENT_TYPE, str(tmp_path), max_bytes=1 << 30)
    assert list(tmp_path.iterdir()) == []


def test_an_answer_past_the_limit_stops_being_read(tmp_path: Path) -> None:
    read = []

    def counted() -> Iterator[bytes]:
        for chunk in _chunks(_message(b"y" * 1_000_000)):
            read.append(len(chunk))
            yield chunk

    with pytest.raises(AnswerTooLargeError):
        _parse(counted(), CONTENT_TYPE, str(tmp_path), max_bytes=100_000)
    assert sum(read) <= 100_000 + 4096  # not the whole answer


def test_a_bare_application_dicom_answer_is_one_part(tmp_path: Path) -> None:
    (part,) = _parse(_chunks(b"z" * 10_000), "application/dicom", str(tmp_path),
                     max_bytes=1 << 20)
    part.content.seek(0)
    assert part.content.read() == b"z" * 10_000
    part.content.close()


def test_an_answer_that_is_not_dicom_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MultipartError, match="text/html"):
        _parse(iter([b"<html>"]), "text/html; charset=utf-8", str(tmp_path), max_bytes=100)


def test_the_date_range_starts_on_the_local_day_of_the_watermark() -> None:
    midnight = datetime.datetime(2026, 12, 7).timestamp()  # local midnight
    assert qido_date_range(None) is None
    assert qido_date_range(midnight) == "20261207-"
    assert qido_date_range(midnight - 1) == "20261206-"
