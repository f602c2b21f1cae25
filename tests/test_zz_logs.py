"""No patient data in any log the suite produced (issue 12); runs last (pytest orders the
files by name).

What is searched:

- ``test-artifacts/suite.log``: every log record of the test process, at DEBUG (pytest's
  ``log_file``, set in pyproject.toml): the in-process services, handlers, stages and the
  third-party libraries under them (pynetdicom, highdicom) at their most talkative.
- every ``*.log`` file under this session's pytest base temporary folder: the logs of the
  ``ossa`` processes the tests started (``ossa serve`` logs to standard error, which
  :class:`tests.conftest.Served` and the other launchers write to ``ossa.log`` beside the
  config file; ``bench``'s launcher to ``ossa.log`` in its work folder; a killed
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
each form a log could hold it: UTF-8, Latin-1, ISO 2022 (Japanese), JSON and Python escapes,
and with ``?`` for each non-ASCII character (how the audit line prints an unprintable title).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: Where the fixtures' identities are written: the tests, the benchmarks' generator, the
#: synthetic radiographs and the phantom's DICOM export.
SOURCES = ("tests/*.py", "bench/*.py", "dicom_io/**/*.py", "worker/*.py", "models/**/*.py")
#: Logs of peers, not of Ossa: their file names (anywhere under the base temporary folder).
PEER_LOGS = {
    "orthanc.log": "Orthanc (tests/conftest.py OrthancPeer, bench/peers.py Orthanc)",
    "dcmtk.log": "DCMTK storescp, the benchmarks' comparison receiver (bench/peers.py)",
    "pynetdicom.log": "the benchmarks' plain pynetdicom receiver (bench/peers.py)",
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


def _suite_log(config: pytest.Config) -> Path:
    """The file pytest's ``log_file`` handler writes (flushed), as the logging plugin opened
    it (a relative ``log_file`` is relative to the directory pytest was started in)."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    if handler is None or not getattr(handler, "baseFilename", ""):
        pytest.fail("pytest's log_file is not set (pyproject.toml: log_file)")
    handler.flush()
    return Path(handler.baseFilename)


def _sources() -> list[Path]:
    own = Path(__file__).resolve()
    return sorted({p for pattern in SOURCES for p in ROOT.glob(pattern) if p.resolve() != own})


def test_fixture_identities_are_collected() -> None:
    needles = fixture_identities(_sources())
    # The default radiograph of tests/conftest.py, the non-ASCII names of the report tests,
    # an f-string of the load test, the phantom's DICOM export.
    for text in ("Doe^Jane", "PID-123", "Müller^Zoë", "山田^太郎", "Müller Zoë",
                 "LOAD-{sender}-{number:04d}", "Phantom^{study.body_part.title()}"):
        assert text in needles, sorted(needles)
    assert "{name}^" not in needles and "A1" not in needles  # too short to mean anything
    assert not any(text.startswith("^") for text in needles)  # regular expressions


def test_scan_finds_a_planted_line_in_each_form(tmp_path: Path) -> None:
    load = needle("LOAD-{sender}-{number:04d}", fstring=True)
    assert load is not None
    needles = [*fixture_identities(
        [], extra=["Doe^Jane", "PID-123", "Müller^Zoë", "Yamada^Tarou=山田^太郎"]
    ).values(), load]
    clean = tmp_path / "clean.txt"  # not *.log: the session's search must not find these
    clean.write_bytes(b"2024 INFO worker.handlers: Stored SOP Instance 1.2.3 (study 1.2)\n"
                      b"LOAD- nothing; PID-12 Doe^Jan\n")
    planted = tmp_path / "planted.txt"
    planted.write_bytes(
        b"first line\n"
        b"2024 INFO worker.x: refused 1.2.3 for Doe^Jane\n"
        b"third\n" + "latin-1 M\xfcller^Zo\xeb\n".encode("latin-1")
        + b'{"message": "M\\u00fcller^Zo\\u00eb"}\n'
        b"repr 'M\\xfcller^Zo\\xeb'\n"
        b"audit calling_ae=M?ller^Zo?\n" + "山田^太郎 utf-8\n".encode()
        + "山田^太郎 ISO 2022\n".encode("iso2022_jp")
        + b"sent LOAD-3-0042 ok\n"
        b"no newline at the end PID-123"
    )
    assert scan([clean], needles) == ([], 2)
    findings, lines = scan([planted], needles)
    assert lines == 11
    assert sorted((f.line_number, f.identity) for f in findings) == [
        (2, "Doe^Jane"), (4, "Müller^Zoë"), (5, "Müller^Zoë"), (6, "Müller^Zoë"),
        (7, "Müller^Zoë"), (8, "山田^太郎"), (9, "山田^太郎"),
        (10, "LOAD-{sender}-{number:04d}"), (11, "PID-123"),
    ]
    assert all(f.path == planted for f in findings)
    assert findings[0].line.startswith(b"2024 INFO") and "planted.txt:2:" in str(findings[0])


def test_no_log_of_the_suite_holds_patient_data(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logger.info("Searching the suite's logs for the fixtures' patient data")
    suite_log = _suite_log(request.config)
    assert suite_log.is_file(), f"{suite_log}: pytest's log_file was not written"
    service_logs = ossa_logs(tmp_path_factory.getbasetemp())
    needles = fixture_identities(_sources())
    findings, lines = scan([suite_log, *service_logs], needles.values())
    summary = (f"{1 + len(service_logs)} log file(s), {lines} line(s), {len(needles)} "
               f"identities: {suite_log} and {len(service_logs)} under the base temporary "
               f"folder")
    print(summary)
    assert lines >= 1, summary  # at least this test's own line in suite.log
    assert not findings, "\n".join([summary, *map(str, findings[:50])])
