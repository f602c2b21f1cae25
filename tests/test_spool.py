"""worker.spool: durable writes, atomic claims, UIDs as safe names."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.spool import Spool, safe_name


def test_safe_name_keeps_valid_uids_and_hashes_others() -> None:
    assert safe_name("1.2.840.10008.1.1") == "1.2.840.10008.1.1"
    for bad in ("../../etc/passwd", "1.2.3/4", "1.02.3", "1." + "1" * 70, "Doe^Jane"):
        name = safe_name(bad)
        assert name.startswith("x") and "/" not in name and ".." not in name
    assert safe_name("a") != safe_name("b")
    assert safe_name("1.2.3 ") == "1.2.3"  # UI padding


def test_store_writes_bytes_and_leaves_no_tmp(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.store("1.2.3", "1.2.3.4", b"DICM-bytes")
    assert path == tmp_path / "incoming" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM-bytes"
    assert list(spool.tmp.iterdir()) == []
    assert spool.incoming_studies() == ["1.2.3"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("worker.spool.os.fsync", boom)
    with pytest.raises(OSError):
        spool.store("1.2.3", "1.2.3.4", b"x")
    assert list(spool.tmp.iterdir()) == []
    assert spool.incoming_studies() == []


def test_claim_moves_study_and_new_instances_start_a_new_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store("1.2.3", "1.2.3.1", b"a")
    spool.store("1.2.3", "1.2.3.2", b"b")
    job = spool.claim("1.2.3")
    assert job is not None
    assert [p.name for p in job.instances()] == ["1.2.3.1.dcm", "1.2.3.2.dcm"]
    assert spool.claim("1.2.3") is None
    spool.store("1.2.3", "1.2.3.3", b"c")
    assert spool.incoming_studies() == ["1.2.3"]
    assert [j.path for j in spool.unfinished_jobs()] == [job.path]
    assert spool.unfinished_jobs()[0].study_uid == "1.2.3"


def test_finish_moves_to_done_or_failed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store("1.2.3", "1.2.3.1", b"a")
    spool.store("1.2.4", "1.2.4.1", b"a")
    ok = spool.claim("1.2.3")
    bad = spool.claim("1.2.4")
    assert ok is not None and bad is not None
    done = spool.finish(ok)
    failed = spool.finish(bad, error="no usable image")
    assert done.parent == spool.done and (done / "1.2.3.1.dcm").exists()
    assert failed.parent == spool.failed
    assert (failed / "error.txt").read_text().strip() == "no usable image"
    assert spool.unfinished_jobs() == []


def test_clear_tmp_removes_partials(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (spool.tmp / "abc.part").write_bytes(b"half")
    spool.clear_tmp()
    assert list(spool.tmp.iterdir()) == []
