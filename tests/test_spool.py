"""worker.spool: durable writes under the storage root, UIDs and AE titles as safe names."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import spool as spool_module
from worker.spool import Spool, aet_folder, safe_name

STUDY = "1.2.840.113619.2.55.3"
SOP = "1.2.840.113619.2.55.3.1"


def test_safe_name_keeps_valid_uids_and_hashes_others() -> None:
    assert safe_name("1.2.840.10008.1.1") == "1.2.840.10008.1.1"
    assert safe_name("0.1") == "0.1"
    for bad in ("../../etc/passwd", "1.2.3/4", "1.02.3", "1." + "1" * 70, "Doe^Jane", "", ".",
                "1..2", "1.2.", "1.2.3\\4"):
        name = safe_name(bad)
        assert name.startswith("x") and len(name) == 41, bad
        assert "/" not in name and "\\" not in name and ".." not in name, bad
    assert safe_name("a") != safe_name("b")
    assert safe_name("Doe^Jane") == safe_name("Doe^Jane")  # stable across calls
    assert "Doe" not in safe_name("Doe^Jane")


def test_safe_name_strips_ui_padding_and_respects_the_64_character_limit() -> None:
    assert safe_name("1.2.3 ") == "1.2.3"
    assert safe_name("1.2.3\x00") == "1.2.3"
    longest = "1." + "2" * 62
    assert len(longest) == 64 and safe_name(longest) == longest
    assert safe_name(longest + "3").startswith("x")


def test_aet_folder_is_safe_short_and_distinct() -> None:
    folder = aet_folder("STORESCU")
    assert folder.startswith("STORESCU-") and len(folder) == len("STORESCU-") + 8
    assert aet_folder("STORESCU") == folder
    for hostile in ("../..", "A/B", "A\\B", " ", "", "X" * 40):
        name = aet_folder(hostile)
        assert "/" not in name and "\\" not in name and ".." not in name, hostile
        assert len(name) <= 16 + 1 + 8, hostile
    # Titles that sanitise to the same characters still get their own folder.
    assert aet_folder("A/B") != aet_folder("A_B") != aet_folder("A B")
    assert aet_folder(" CR ") != aet_folder("CR")


def test_layout_of_instances_and_objects(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"tmp", "instances", "objects"}
    assert spool.instance_path("CR_ROOM", STUDY, SOP) == (
        f"instances/{aet_folder('CR_ROOM')}/{STUDY}/{SOP}.dcm"
    )
    assert spool.object_path(STUDY, SOP) == f"objects/{STUDY}/{SOP}.dcm"
    hostile = spool.instance_path("../..", "../../etc", "passwd")
    assert hostile.startswith("instances/") and ".." not in hostile
    assert hostile.count("/") == 3
    assert spool.object_path("Doe^Jane", "1.2") == f"objects/{safe_name('Doe^Jane')}/1.2.dcm"
    assert spool.path("objects/x.dcm") == tmp_path / "objects" / "x.dcm"


def test_write_puts_bytes_in_place_and_leaves_no_tmp(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    relative = spool.instance_path("CR_ROOM", STUDY, SOP)
    assert not spool.exists(relative)
    spool.write(relative, b"DICM-bytes")
    assert spool.exists(relative)
    assert (tmp_path / relative).read_bytes() == b"DICM-bytes"
    assert list(spool.tmp.iterdir()) == []
    spool.write(relative, b"re-sent")  # a re-sent instance replaces the file
    assert (tmp_path / relative).read_bytes() == b"re-sent"
    assert list(spool.tmp.iterdir()) == []


def test_write_fsyncs_every_folder_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    synced: list[Path] = []
    real = spool_module._fsync_dir

    def record(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", record)
    first = spool.instance_path("CR_ROOM", STUDY, SOP)
    spool.write(first, b"a")
    study_dir = (tmp_path / first).parent
    # The new study and AE folders, and the area root that gained the AE folder.
    assert {study_dir, study_dir.parent, spool.instances} <= set(synced)

    synced.clear()
    spool.write(spool.instance_path("CR_ROOM", STUDY, SOP + ".2"), b"b")
    assert study_dir in synced


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("worker.spool.os.fsync", boom)
    relative = spool.instance_path("CR_ROOM", STUDY, SOP)
    with pytest.raises(OSError, match="No space left"):
        spool.write(relative, b"x")
    assert list(spool.tmp.iterdir()) == []
    assert not spool.exists(relative)
    assert list(spool.instance_files()) == []


def test_failed_rename_leaves_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("worker.spool.os.replace", refuse)
    relative = spool.object_path(STUDY, SOP)
    with pytest.raises(PermissionError):
        spool.write(relative, b"sr")
    assert list(spool.tmp.iterdir()) == []
    assert not spool.exists(relative)


def test_clear_tmp_removes_partials(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (spool.tmp / "abc.part").write_bytes(b"half")
    (spool.tmp / "def.part").write_bytes(b"")
    kept = spool.instance_path("CR_ROOM", STUDY, SOP)
    spool.write(kept, b"whole")
    spool.clear_tmp()
    assert list(spool.tmp.iterdir()) == []
    assert spool.tmp.is_dir()
    assert spool.exists(kept)


def test_remove_deletes_empty_folders_but_not_the_area_roots(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    one = spool.instance_path("CR_ROOM", STUDY, SOP)
    two = spool.instance_path("CR_ROOM", STUDY, SOP + ".2")
    other_study = spool.instance_path("CR_ROOM", STUDY + ".9", SOP)
    sr = spool.object_path(STUDY, "1.2.3.4")
    for relative in (one, two, other_study, sr):
        spool.write(relative, b"x")

    spool.remove(one)
    assert not spool.exists(one)
    assert (tmp_path / two).parent.is_dir()  # the study still has a file

    spool.remove(two)
    assert not (tmp_path / two).parent.exists()  # empty study folder gone
    assert (tmp_path / two).parent.parent.is_dir()  # the AE folder still holds a study

    spool.remove(other_study)
    assert not (tmp_path / other_study).parent.parent.exists()  # empty AE folder gone
    assert spool.instances.is_dir()

    spool.remove(sr)
    assert not (tmp_path / sr).parent.exists()
    assert spool.objects.is_dir()
    assert list(spool.instances.iterdir()) == [] and list(spool.objects.iterdir()) == []
    assert spool.tmp.is_dir() and tmp_path.is_dir()

    spool.remove(sr)  # already gone: nothing to do, nothing raised
    assert spool.objects.is_dir()


def test_instance_files_lists_received_instances_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    b = spool.instance_path("DX_ROOM", "1.2.4", "1.2.4.1")
    a = spool.instance_path("CR_ROOM", "1.2.3", "1.2.3.1")
    a2 = spool.instance_path("CR_ROOM", "1.2.3", "1.2.3.2")
    for relative in (b, a2, a):
        spool.write(relative, b"x")
    spool.write(spool.object_path("1.2.3", "9.9.9"), b"sr")
    (spool.tmp / "junk.part").write_bytes(b"half")
    (tmp_path / a).with_name("notes.txt").write_text("not DICOM")
    files = list(spool.instance_files())
    assert files == sorted([a, a2, b])
    assert all(spool.exists(f) for f in files)
