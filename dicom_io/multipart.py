"""Multipart/related bodies (RFC 2387) of DICOMweb, parsed as they stream in.

STOW-RS requests Ossa receives and WADO-RS answers it retrieves carry one DICOM PS3.10 file
per part (PS3.18 8.6.1.2). :class:`PartCollector` takes python-multipart's parser callbacks
and spools each part into a temporary file (in memory up to :data:`PART_IN_MEMORY`): a whole
message is never held in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from python_multipart.multipart import parse_options_header

DICOM = "application/dicom"
#: A part is kept in memory up to this size, then in a temporary file.
PART_IN_MEMORY = 8 * 1024 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart message."""


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its content, spooled."""

    headers: dict[str, str]
    content: IO[bytes]
    size: int = 0

    @property
    def media_type(self) -> str:
        value, _ = parse_options_header(self.headers.get("content-type", DICOM))
        return value.decode("latin-1").lower()


@dataclass
class PartCollector:
    """python-multipart callbacks that gather the parts into spooled temporary files."""

    tmp_dir: str
    parts: list[Part] = field(default_factory=list)
    ended: bool = False
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _headers: dict[str, str] = field(default_factory=dict)
    _current: Part | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._headers = {}
        self._current = None

    def _header_end(self) -> None:
        name = bytes(self._field).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        content = tempfile.SpooledTemporaryFile(max_size=PART_IN_MEMORY, dir=self.tmp_dir)
        self._current = Part(self._headers, content)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.content.write(data[start:end])
            self._current.size += end - start

    def _part_end(self) -> None:
        if self._current is not None:
            self.parts.append(self._current)
        self._current = None

    def _end(self) -> None:
        self.ended = True

    def begin_whole(self, media_type: str) -> None:
        """Collect a body that is one part, not wrapped in a multipart message (a WADO-RS
        answer of type ``application/dicom``): :meth:`write` it, then :meth:`end_whole`."""
        self._headers = {"content-type": media_type}
        self._headers_finished()

    def write(self, data: bytes) -> None:
        """Add ``data`` to the part begun by :meth:`begin_whole`."""
        self._data(data, 0, len(data))

    def end_whole(self) -> None:
        """End the part begun by :meth:`begin_whole`, and the body."""
        self._part_end()
        self._end()

    def close(self) -> None:
        for part in self.parts:
            part.content.close()
        if self._current is not None:
            self._current.content.close()
