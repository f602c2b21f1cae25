"""Durable files under the storage root: received instances and the objects Ossa produces.

Layout under the storage root::

    tmp/<node>/                           partial writes of one node (removed at its start)
    instances/<aet>/<study>/<sop>.dcm     received instances, as the sender encoded them
    objects/<study>/<sop>.dcm             SRs (and later secondary captures) Ossa wrote
    state.sqlite3                         the state store (:mod:`worker.store`)

The files hold bytes only; what they are, and what became of them, is in the state store.
A write is durable before it is acknowledged: the bytes are written to ``tmp/``, fsync'ed,
renamed into place and the directory is fsync'ed (the C-STORE success status of PS3.4
B.2.3 promises that the SCP has the instance). Folder names come from UIDs and AE titles,
never from patient identifiers; each received file's File Meta Information carries the
calling AE title (Source Application Entity Title, PS3.10 7.1), so a file is registered
again from its own content if the state store ever lacks its row.

Several nodes may share the storage root (NFS, with the state store on PostgreSQL): each
writes its partial files in a folder of its own, and clears only that one at its start, so
no node removes what a live node is writing; the final names derive from UIDs, and two
nodes writing the same object write the same name, each by an atomic rename.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_AET_CHARS = re.compile(r"[^A-Za-z0-9_-]")
#: Buffer of a copy from a received data set's temporary file into the spool.
COPY_CHUNK_BYTES = 1024 * 1024


def safe_name(uid: str) -> str:
    """A file-system-safe name for a UID.

    A conformant UID (PS3.5 9.1: digits and dots, at most 64 characters) is its own name;
    anything else, which a non-conformant sender may still send, is replaced by a hash so
    that it can never escape the spool or collide with a valid UID.
    """
    uid = uid.strip().rstrip("\x00")
    if len(uid) <= 64 and _UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def aet_folder(ae_title: str) -> str:
    """A file-system-safe folder name for an AE title: its safe characters and a short hash."""
    digest = hashlib.sha256(ae_title.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{_AET_CHARS.sub('_', ae_title.strip())[:16]}-{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The storage root and the durable file operations on it.

    Paths returned and accepted are relative to the root (``instances/...``), as the
    state store records them.

    Parameters
    ----------
    root : pathlib.Path
        Storage root; sub-directories are created.
    node : str, optional
        The node writing (its partial writes have a folder of their own).
    """

    def __init__(self, root: Path, *, node: str = "local") -> None:
        self.root = root
        self.tmp = root / "tmp" / aet_folder(node)  # safe characters and a hash
        self.instances = root / "instances"
        self.objects = root / "objects"
        self._lock = threading.Lock()
        for folder in (self.tmp, self.instances, self.objects):
            folder.mkdir(parents=True, exist_ok=True)

    def clear_tmp(self) -> None:
        """Remove this node's partial writes left by a crash (they were never acknowledged),
        and those of an Ossa that wrote them straight under ``tmp/`` (before node folders)."""
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        for leftover in self.tmp.parent.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def instance_path(self, calling_aet: str, study_uid: str, sop_uid: str) -> str:
        """Relative path of a received instance."""
        study, sop = safe_name(study_uid), safe_name(sop_uid)
        return f"instances/{aet_folder(calling_aet)}/{study}/{sop}.dcm"

    def object_path(self, study_uid: str, sop_uid: str) -> str:
        """Relative path of an object Ossa produced."""
        return f"objects/{safe_name(study_uid)}/{safe_name(sop_uid)}.dcm"

    def write(self, relative: str, data: bytes, tail: BinaryIO | None = None) -> int:
        """Durably write ``data`` (then the rest of ``tail``) at ``relative``, replacing an
        earlier file there; return the number of bytes written.

        The file is fsync'ed before it is renamed into place, then so is its folder and the
        parent of every folder the write created (a new AE title's or study's folder).

        Raises
        ------
        OSError
            If the file could not be written; nothing is left behind then.
        """
        part = self.tmp / f"{uuid.uuid4().hex}.part"
        target = self.root / relative
        try:
            with part.open("wb") as handle:
                handle.write(data)
                if tail is not None:
                    shutil.copyfileobj(tail, handle, COPY_CHUNK_BYTES)
                handle.flush()
                size = handle.tell()
                os.fsync(handle.fileno())
            with self._lock:  # against remove() taking away an empty folder meanwhile
                folders = (target.parent, *target.parent.parents)
                created = list(itertools.takewhile(lambda f: not f.exists(), folders))
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)
            # The folder that gained the file, and each folder that gained a new folder;
            # outside the lock, so that writers to other folders sync concurrently.
            for folder in (target.parent, *(f.parent for f in created)):
                _fsync_dir(folder)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size

    def path(self, relative: str) -> Path:
        """Absolute path of a file named relative to the root."""
        return self.root / relative

    def exists(self, relative: str) -> bool:
        """Whether the file is on disk."""
        return (self.root / relative).is_file()

    def remove(self, relative: str) -> None:
        """Delete a file and, when they become empty, its folders up to the area's root."""
        target = self.root / relative
        target.unlink(missing_ok=True)
        with self._lock:
            for folder in target.parents:
                if folder in (self.root, self.instances, self.objects):
                    break
                try:
                    folder.rmdir()
                except OSError:  # not empty, or already gone
                    break

    def instance_files(self) -> Iterator[str]:
        """Relative paths of every received instance file on disk."""
        for path in sorted(self.instances.glob("*/*/*.dcm")):
            yield path.relative_to(self.root).as_posix()
