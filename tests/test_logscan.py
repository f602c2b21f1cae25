"""The search of the suite's logs for patient data (:mod:`tests.logscan`), which the
``pytest_sessionfinish`` hook of tests/conftest.py runs once every test has finished."""

from __future__ import annotations

from pathlib import Path

from tests.logscan import fixture_identities, needle, scan, search_logs, sources


def test_fixture_identities_are_collected() -> None:
    needles = fixture_identities(sources())
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


def test_search_logs_finds_an_ossa_log_and_skips_a_peer_log(tmp_path: Path) -> None:
    """What the session-finish hook runs: an ``ossa.log`` under the base temporary folder
    is searched, Orthanc's log is not (a peer's, not Ossa's). The planted logs are removed
    at the end: the session's own search would find them."""
    suite = tmp_path / "suite.txt"
    suite.write_bytes(b"2024 INFO worker.handlers: Stored SOP Instance 1.2.3\n")
    peer = tmp_path / "run" / "orthanc" / "orthanc.log"
    ours = tmp_path / "run" / "ossa.log"
    try:
        peer.parent.mkdir(parents=True)
        peer.write_bytes(b"stored Doe^Jane\n")
        assert search_logs(suite, tmp_path).findings == []
        ours.write_bytes(b"ok\nrefused a study of Doe^Jane\n")
        found = search_logs(suite, tmp_path)
        assert found.files == 2 and found.lines == 3
        assert {(f.path.name, f.line_number) for f in found.findings} == {("ossa.log", 2)}
        assert "Doe^Jane" in str(found.findings[0])
        assert f"{len(found.findings)} found" in found.summary()
    finally:
        peer.unlink(missing_ok=True)
        ours.unlink(missing_ok=True)
