"""The search of the suite's logs for patient data (issue 12), run once the session has
finished by the ``pytest_sessionfinish`` hook in ``tests/conftest.py``: every test has
written its logs by then, whatever the order the files ran in.

What is searched:

- ``test-artifacts/suite.log``: every log record of the test process, at DEBUG (pytest's
  ``log_file``, set in pyproject.toml): the in-process services, handlers, stages and the
  third-party libraries under them (pynetdicom, highdicom) at their most talkative.
- every ``*.log`` file under this session's pytest base temporary folder: the logs of the
  ``ossa`` processes the tests started (``ossa serve`` logs to standard error, which
  :class:`tests.conftest.Served` and the other launchers write to ``ossa.log`` beside the
  config file; the harness's launcher to ``ossa.log`` in its work folder; a killed
  ``ossa train`` to ``killed.log``).

What is not: the logs of the peers, which are not Ossa's (Orthanc's ``orthanc.log``, the
benchmarks' DCMTK and pynetdicom receivers, :data:`PEER_LOGS`); DCMTK ``storescp`` in
tests/conftest.py logs to /dev/null. Standard output of ``ossa predict``/``ossa status``
is a command's answer, not a log, and holds file paths, UIDs and verdicts, no patient
attribute; output a test captured in memory (``subprocess.run(capture_output=True)``) is
not on disk and is checked by the test that ran it.

What is searched for: the patient names, patient IDs and accession numbers the fixtures put
into data sets, collected from the sources (:func:`fixture_identities`): keyword arguments and
attributes (``patient_name=``, ``PatientID =``, ...) given a string literal, and any literal
that reads as a DICOM person name (``Family^Given``). An f-string becomes a pattern
(``f"LOAD-{sender}-{number:04d}"`` finds ``LOAD-3-0042``). A non-ASCII name is searched in
each form a log could hold it: UTF-8, Latin-1, ISO 2022 (Japanese), JSON and Python escapes
(how :func:`worker.logsafe.printable` writes a value from the wire), and with ``?`` for each
non-ASCII character.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: Where the fixtures' identities are written: the tests, the benchmarks' generator, the
#: synthetic radiographs and the phantom's DICOM export.
SOURCES = ("tests/*.py", "bench/*.py", "harness/*.py", "dicom_io/**/*.py", "worker/**/*.py",
           "models/**/*.py")
#: The scanner's own tests plant identities in every form on purpose.
PLANTED = ROOT / "tests" / "test_logscan.py"
#: Logs of peers, not of Ossa: their file names (anywhere under the base temporary folder).
PEER_LOGS = {
    "orthanc.log": "Orthanc (harness.peers.Orthanc)",
    "dcmtk.log": "DCMTK storescp, the benchmarks' comparison receiver (harness.peers)",
    "pynetdicom.log": "the benchmarks' plain pynetdicom receiver (harness.peers)",
}
#: Values found but not searched for: too short or too common to mean a patient.
NOT_IDENTIFYING = frozenset({"CHANGED"})
#: Identities used without a field name or a caret (a caret-less name of the report tests).
EXTRA_IDENTITIES = ("Müller Zoë",)
#: Fewest literal characters in a searched value (``"A1"`` or ``"ACC1"`` would match
#: hexadecimal and ordinary words).
MIN_LITERAL = 5

_FIELD = re.compile(
    r"""\b(?:patient_name|patient_id|accession_number|PatientName|PatientID|AccessionNumber"""
    r"""|OtherPatientIDs|PatientBirthName|PatientMotherBirthName)\s*[=:,]\s*"""
    r"""(?P<f>f?)(?P<q>["'])(?P<value>[^"'\n\\]*)(?P=q)"""
)
_LITERAL = re.compile(r"""(?<![\w\\])(?P<f>f?)(?P<q>["'])(?P<value>[^"'\n\\]*\^[^"'\n\\]*)(?P=q)""")
#: A DICOM person name (with f-string placeholders removed): letters first, a caret.
_PERSON_NAME = re.compile(r"[^\W\d_][\w '.-]*\^[\w^= '.-]*")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class Needle:
    """One identity to search for: ``text`` as written in the source, ``pattern`` (bytes)
    finds each of its encoded forms."""

    text: str
    pattern: re.Pattern[bytes]


@dataclass(frozen=True)
class Finding:
    """A log line holding an identity."""

    path: Path
    line_number: int
    identity: str
    line: bytes

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.identity!r} in {self.line[:300]!r}"


def _forms(value: str) -> set[bytes]:
    """The byte forms a log could hold ``value`` in."""
    forms = {value.encode("utf-8")}
    if not value.isascii():
        forms.add(json.dumps(value)[1:-1].encode("ascii"))  # "M\\u00fcller"
        forms.add(value.encode("unicode_escape"))  # "M\\xfcller" (repr, %r)
        forms.add("".join(c if c.isascii() else "?" for c in value).encode("ascii"))
        for codec in ("latin-1", "iso2022_jp"):
            try:
                forms.add(value.encode(codec))
            except UnicodeEncodeError:
                pass
    return forms


def needle(value: str, *, fstring: bool = False) -> Needle | None:
    """The :class:`Needle` of a literal (an f-string's placeholders match any word
    characters); ``None`` if it has fewer than :data:`MIN_LITERAL` literal characters."""
    pieces = _PLACEHOLDER.split(value) if fstring else [value]
    if sum(len(p) for p in pieces) < MIN_LITERAL or value in NOT_IDENTIFYING:
        return None
    if len(pieces) == 1:
        alternatives = sorted(re.escape(form) for form in _forms(value))
    else:  # placeholders: identifiers made of digits and letters (ASCII in the fixtures)
        alternatives = [rb"[\w.-]+".join(re.escape(p.encode("utf-8")) for p in pieces)]
    return Needle(value, re.compile(b"|".join(alternatives)))


def _literals(text: str) -> Iterator[tuple[str, bool]]:
    """``(value, is_fstring)`` of the identity literals of one source file."""
    for match in _FIELD.finditer(text):
        yield match["value"], bool(match["f"])
    for match in _LITERAL.finditer(text):
        value = match["value"]
        if _PERSON_NAME.fullmatch(_PLACEHOLDER.sub("", value) if match["f"] else value):
            yield value, bool(match["f"])


def fixture_identities(paths: Iterable[Path], extra: Sequence[str] = EXTRA_IDENTITIES
                       ) -> dict[str, Needle]:
    """Every identity literal of ``paths`` (and ``extra``), by its source text."""
    found: dict[str, Needle] = {}
    candidates = [(value, False) for value in extra]
    for path in paths:
        candidates.extend(_literals(path.read_text(encoding="utf-8")))
    for value, fstring in candidates:
        # A person name also by each of its groups (alphabetic=ideographic=phonetic).
        groups = value.split("=") if "^" in value and "=" in value else []
        for text in (value, *groups):
            made = needle(text, fstring=fstring)
            if made is not None:
                found.setdefault(made.text, made)
    return found


def scan(paths: Iterable[Path], needles: Iterable[Needle]) -> tuple[list[Finding], int]:
    """Search each file for each needle: the findings, and how many lines were read."""
    needles = list(needles)
    findings: list[Finding] = []
    lines = 0
    for path in paths:
        data = path.read_bytes()
        lines += data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        for item in needles:
            for match in item.pattern.finditer(data):
                start = data.rfind(b"\n", 0, match.start()) + 1
                end = data.find(b"\n", match.end())
                findings.append(Finding(path, data.count(b"\n", 0, start) + 1, item.text,
                                        data[start : end if end >= 0 else len(data)]))
    return findings, lines


def ossa_logs(basetemp: Path) -> list[Path]:
    """Every ``*.log`` file under ``basetemp`` but the peers' (:data:`PEER_LOGS`)."""
    return sorted(p for p in basetemp.rglob("*.log") if p.is_file() and p.name not in PEER_LOGS)


def sources() -> list[Path]:
    """The files the fixtures' identities are collected from (:data:`SOURCES`)."""
    return sorted({p for pattern in SOURCES for p in ROOT.glob(pattern)
                   if p.resolve() != PLANTED})


@dataclass(frozen=True)
class Search:
    """What :func:`search_logs` read and found."""

    files: int
    lines: int
    identities: int
    findings: list[Finding]

    def summary(self) -> str:
        return (f"patient data in logs: {self.files} log file(s), {self.lines} line(s), "
                f"{self.identities} identities searched, {len(self.findings)} found")


def search_logs(suite_log: Path | None, basetemp: Path) -> Search:
    """Search the suite's log (if any) and the Ossa logs under ``basetemp`` for every
    identity of :func:`sources`."""
    logs = [*([suite_log] if suite_log is not None and suite_log.is_file() else []),
            *ossa_logs(basetemp)]
    needles = fixture_identities(sources())
    findings, lines = scan(logs, needles.values())
    return Search(len(logs), lines, len(needles), findings)
