"""Durable on-disk spool of received instances and study jobs.

Layout under the storage root::

    tmp/                         partial writes (removed at start-up)
    incoming/<study>/<sop>.dcm   instances of studies still being received
    work/<study>.<n>/            a study claimed for processing (a job)
    done/<study>.<n>/            processed jobs, with the SR written under sr/
    failed/<study>.<n>/          jobs that could not be processed, with ``error.txt``

A write is durable before it is acknowledged: the bytes are written to ``tmp/``, fsync'ed,
renamed into place and the directory is fsync'ed (the C-STORE success status of PS3.4
B.2.3 promises that the SCP has the instance). Claiming a study is one atomic rename, so an
instance that arrives while its study is being processed starts a new ``incoming/`` folder
and a later job. Directory names come from UIDs, never from patient identifiers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Job:
    """A claimed study: its UID and the directory holding its instances."""

    study_uid: str
    path: Path

    def instances(self) -> list[Path]:
        """The instance files of the job, in name order."""
        return sorted(self.path.glob("*.dcm"))


class Spool:
    """The storage root and the operations on it.

    Parameters
    ----------
    root : pathlib.Path
        Storage root; sub-directories are created.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.incoming = root / "incoming"
        self.work = root / "work"
        self.done = root / "done"
        self.failed = root / "failed"
        self._lock = threading.Lock()
        for folder in (self.tmp, self.incoming, self.work, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True)

    def clear_tmp(self) -> None:
        """Remove partial writes left by a crash; they were never acknowledged."""
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def store(self, study_uid: str, sop_instance_uid: str, data: bytes) -> Path:
        """Durably write one instance; return its final path.

        Raises
        ------
        OSError
            If the instance could not be written; nothing is left behind then.
        """
        part = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with part.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            with self._lock:
                folder = self.incoming / safe_name(study_uid)
                folder.mkdir(exist_ok=True)
                target = folder / f"{safe_name(sop_instance_uid)}.dcm"
                os.replace(part, target)
                _fsync_dir(folder)
                _fsync_dir(self.incoming)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return target

    def incoming_studies(self) -> list[str]:
        """Folder names of studies with instances not yet claimed."""
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir())

    def claim(self, study_name: str) -> Job | None:
        """Atomically move a study's received instances into a new job folder."""
        with self._lock:
            source = self.incoming / study_name
            if not source.is_dir():
                return None
            target = self.work / f"{study_name}.{uuid.uuid4().hex[:12]}"
            os.replace(source, target)
            _fsync_dir(self.incoming)
            _fsync_dir(self.work)
        return Job(study_uid=study_name, path=target)

    def unfinished_jobs(self) -> list[Job]:
        """Jobs claimed but not finished, e.g. by a process that was killed."""
        jobs = []
        for path in sorted(self.work.iterdir()):
            if path.is_dir():
                jobs.append(Job(study_uid=path.name.rsplit(".", 1)[0], path=path))
        return jobs

    def finish(self, job: Job, *, error: str | None = None) -> Path:
        """Move a job to ``done/`` or, with an error, to ``failed/`` with ``error.txt``."""
        if error is not None:
            (job.path / "error.txt").write_text(error + "\n", encoding="utf-8")
        target = (self.failed if error is not None else self.done) / job.path.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(job.path, target)
        return target
