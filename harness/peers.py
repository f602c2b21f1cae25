"""The programs the tests and the benchmarks start and drive: receivers (``ossa serve``, DCMTK
``storescp``, a plain pynetdicom one), Orthanc, PostgreSQL and DCMTK ``storescu``; and the
helpers both use (:func:`free_port`, :func:`port_open`, :func:`wait_until`).

Every receiver runs in its own process group (``start_new_session``), on a free loopback port,
with its log in its work folder, and is stopped by its own process group id when the
benchmark is done with it (``with`` block), also when the benchmark fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

#: Debian's DCMTK keeps Nagle's algorithm on unless this is set; with it on, every small
#: instance waits for a delayed ACK (about 40 ms on loopback) whoever the receiver is.
NO_NAGLE = {"TCP_NODELAY": "1"}
#: Calling AE title of every ``storescu`` (Ossa's configuration allows it).
CALLING_AET = "STORESCU"
#: The shipped real model, served by the Ossa under test.
SHIPPED_BUNDLE = Path("bundles/fracatlas")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class PeerError(RuntimeError):
    """A peer program is missing, did not start, or failed."""


def executable(name: str) -> str:
    """Path of program ``name`` (raises :class:`PeerError` naming the Debian package)."""
    found = shutil.which(name)
    if found is None:
        package = {"Orthanc": "orthanc"}.get(name, "dcmtk")
        raise PeerError(f"{name} is not installed (Debian package {package}; `make test-deps`)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], object], *, timeout: float, what: str,
               interval: float = 0.05) -> object:
    """Poll ``condition`` until it is truthy; :class:`PeerError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def echo(port: int, called: str) -> bool:
    """Whether a DICOM C-ECHO to ``called`` on 127.0.0.1:``port`` succeeds (DCMTK echoscu)."""
    proc = subprocess.run(
        [executable("echoscu"), "-to", "5", "-aet", CALLING_AET, "-aec", called, "127.0.0.1",
         str(port)], capture_output=True, timeout=30,
    )
    return proc.returncode == 0


class Peer:
    """A program started in its own process group; a context manager that stops it."""

    label = "peer"

    def __init__(self, command: Sequence[str], workdir: Path, *,
                 env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.command = list(command)
        self.log_path = workdir / f"{self.label}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def check_alive(self) -> bool:
        if self.proc.poll() is not None:
            raise PeerError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return True

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def peak_rss_mib(self) -> float | None:
        """Peak resident set size of the main process so far (VmHWM), MiB."""
        return _status_kib(self.pid, "VmHWM")

    def rss_mib(self) -> float | None:
        """Resident set size of the main process now (VmRSS), MiB."""
        return _status_kib(self.pid, "VmRSS")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to the peer's process group, SIGKILL after ``timeout`` s."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(timeout=30)
        _signal_group(self.proc, signal.SIGKILL)  # children (storescp --fork) left behind
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this Popen created (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _status_kib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


# --- receivers ----------------------------------------------------------------------------


class Receiver(Peer):
    """A C-STORE SCP writing what it receives under ``self.storage``."""

    called_aet = "STORESCP"

    def __init__(self, command: Sequence[str], workdir: Path, port: int, storage: Path,
                 **kwargs: Any) -> None:
        self.port = port
        self.storage = storage
        super().__init__(command, workdir, **kwargs)
        wait_until(lambda: self.check_alive() and echo(port, self.called_aet), timeout=180,
                   what=f"{self.label} to answer C-ECHO", interval=0.2)

    def stored_files(self) -> int:
        """How many files the receiver wrote (a check that it really received everything)."""
        return sum(1 for p in self.storage.rglob("*") if p.is_file()
                   and p.suffix not in (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".log"))


class DcmtkStorescp(Receiver):
    """DCMTK ``storescp``: one child process per association (``--fork``), largest PDU."""

    label = "dcmtk"

    def __init__(self, workdir: Path) -> None:
        workdir = workdir.resolve()
        port = free_port()
        storage = workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        super().__init__([executable("storescp"), "--fork", "-pdu", "131072", "-aet",
                          self.called_aet, "-od", str(storage), str(port)],
                         workdir, port, storage, env=NO_NAGLE)


class PynetdicomStorescp(Receiver):
    """pynetdicom's ``storescp`` app (threads, one per association), unlimited PDU."""

    label = "pynetdicom"

    def __init__(self, workdir: Path) -> None:
        workdir = workdir.resolve()
        port = free_port()
        storage = workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        super().__init__([sys.executable, "-m", "pynetdicom", "storescp", "-q", "-pdu", "0",
                          "-aet", self.called_aet, "-od", str(storage), str(port)],
                         workdir, port, storage)


def ossa_config(workdir: Path, port: int, *, bundle: Path = SHIPPED_BUNDLE,
                completion_timeout_s: float = 86400.0,
                destination: tuple[str, int] | None = None, log_level: str = "INFO",
                database: str | None = None) -> Path:
    """Write ``workdir/config.toml`` for ``ossa serve`` from the example
    (:func:`harness.config.write_config`): loopback listener, HTTP off, storage in
    ``workdir/var`` (the state store there, or on PostgreSQL at ``database``), and at most
    one DIMSE destination (AE title, port on loopback)."""
    from harness.config import write_config

    return write_config(
        workdir / "config.toml",
        listener={"host": "127.0.0.1", "port": port, "allowed_calling_aets": [CALLING_AET]},
        study={"completion_timeout_s": completion_timeout_s},
        storage={"root": "var", "database": database},
        model={"bundle": bundle.resolve()},
        logging={"level": log_level},
        destinations=[] if destination is None else [{
            "name": "pacs", "type": "dimse", "ae_title": destination[0],
            "host": "127.0.0.1", "port": destination[1], "timeout_s": 30}],
    )


class Ossa(Receiver):
    """``ossa serve`` with a config written by :func:`ossa_config`.

    ``wrapper`` (such as ``["py-spy", "record", ...]``) runs before the command, to profile.
    """

    label = "ossa"
    called_aet = "OSSA"

    def __init__(self, workdir: Path, *, wrapper: Sequence[str] = (), **config: Any) -> None:
        workdir = workdir.resolve()
        port = free_port()
        self.config = ossa_config(workdir, port, **config)
        ossa = str(Path(sys.executable).with_name("ossa"))
        super().__init__([*wrapper, ossa, "serve", "--config", str(self.config)], workdir,
                         port, workdir / "var" / "instances")

    @property
    def state_store(self) -> Path:
        return self.workdir / "var" / "state.sqlite3"


RECEIVERS: dict[str, Callable[[Path], Receiver]] = {
    "ossa": Ossa,
    "dcmtk": DcmtkStorescp,
    "pynetdicom": PynetdicomStorescp,
}


# --- PostgreSQL: the state store of a cluster -----------------------------------------------


class PostgresServer:
    """A private PostgreSQL server (Debian's ``postgresql``) on a free loopback port, in a
    temporary folder: ``initdb`` and ``pg_ctl``, as the unprivileged ``postgres`` user when
    run as root (PostgreSQL refuses root). Trust authentication on 127.0.0.1 only; one
    database per user of it (:meth:`new_database`). Shared by the tests and the benchmarks.
    """

    user = "ossa"

    def __init__(self) -> None:
        import glob
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda p: int(Path(p).parts[-3]))
        if not found:
            raise PeerError("PostgreSQL is not installed (Debian package postgresql; "
                            "`make test-deps`)")
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        # Not under a root-only temporary folder: the server's user must reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="ossa-postgres-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "server.log"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.folder, "postgres", "postgres")
        self._databases = 0
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
                      "-E", "UTF8", "--no-instructions")
            self.start()
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True,
                              cwd=self.folder, timeout=120)
        if proc.returncode != 0:
            raise PeerError(f"PostgreSQL {tool} failed: {proc.stderr.decode(errors='replace')}")

    def start(self) -> None:
        """Start the server (again: its data persists); returns once it accepts queries."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 "
                        f"-c unix_socket_directories='' -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if it crashed)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """The URL of one of its databases."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"ossa_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Orthanc as the PACS ------------------------------------------------------------------


class Orthanc:
    """A real Orthanc with its DICOMweb plugin on loopback: the PACS Ossa reports to, the
    archive its sources poll, the benchmarks' destination.

    Parameters
    ----------
    workdir : pathlib.Path
        Its configuration, storage and ``orthanc.log``.
    ossa_port : int, optional
        The Ossa listener's port, registered as modality ``ossa`` (``OSSA`` on 127.0.0.1)
        for C-MOVE and C-STORE back.
    extra_config : dict, optional
        Orthanc configuration keys added to (or replacing) the defaults.
    """

    aet = "ORTHANC"
    label = "orthanc"

    def __init__(self, workdir: Path, ossa_port: int | None = None,
                 extra_config: dict[str, Any] | None = None) -> None:
        exe = executable("Orthanc")
        if not ORTHANC_DICOMWEB_PLUGIN.exists():
            raise PeerError("the Orthanc DICOMweb plugin is not installed (Debian package "
                            "orthanc-dicomweb; `make test-deps`)")
        workdir = workdir.resolve()
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ossa_port = ossa_port
        self.url = f"http://127.0.0.1:{self.http_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "OssaPACS",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,  # C-STORE from Ossa without a modality entry
            "DicomModalities": ({} if ossa_port is None
                                else {"ossa": ["OSSA", "127.0.0.1", ossa_port]}),
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            **(extra_config or {}),
        }
        self.exe = exe
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config), encoding="utf-8")
        self.log_path = workdir / "orthanc.log"
        self.start()

    def start(self) -> None:
        """Start Orthanc (again: its storage, and so what it received, persists)."""
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.exe, str(self.config_path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_until(self._ready, timeout=30, what="Orthanc to answer on its REST API")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise PeerError(f"Orthanc exited with {self.proc.returncode}; see {self.log.name}")
        try:
            return bool(self.get("/system")["DicomPort"] == self.dicom_port)
        except OSError:
            return False

    def get(self, path: str) -> Any:
        """GET a REST resource and decode its JSON."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: object) -> Any:
        """POST JSON to a REST resource and decode the JSON answer."""
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        """GET a REST resource as bytes."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return bytes(response.read())

    def instances_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Orthanc's instance resources (with tags) in a study, [] if the study is unknown."""
        return list(self.post("/tools/find", {
            "Level": "Instance", "Query": {"StudyInstanceUID": study_instance_uid},
            "Expand": True}))

    def sr_sop_uids(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs of the SRs Orthanc holds in a study (one per stored copy)."""
        uids = []
        for item in self.instances_of_study(study_instance_uid):
            tags = self.get(f"/instances/{item['ID']}/simplified-tags")
            if tags.get("Modality") == "SR":
                uids.append(str(tags["SOPInstanceUID"]))
        return uids

    def stop(self) -> None:
        """Stop Orthanc; :meth:`start` brings it back with the same ports and storage."""
        if self.proc.poll() is not None:
            self.log.close()
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the sender ---------------------------------------------------------------------------


def storescu(files: Sequence[Path], port: int, called: str, *, parallel: int = 1,
             env: dict[str, str] | None = None) -> float:
    """Send ``files`` with ``parallel`` DCMTK ``storescu`` processes (one association each,
    the files dealt round-robin) started together; wall-clock seconds until all are done.
    ``env`` is added to their environment (default :data:`NO_NAGLE`).

    Raises :class:`PeerError` if a ``storescu`` fails (a refused instance included).
    """
    exe = executable("storescu")
    chunks = [list(files[i::parallel]) for i in range(parallel)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([exe, "-aet", CALLING_AET, "-aec", called, "127.0.0.1", str(port),
                          *map(str, chunk)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env if env is not None else NO_NAGLE)})
        for chunk in chunks if chunk
    ]
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    elapsed = time.perf_counter() - start
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise PeerError(f"storescu to {called} exited {proc.returncode}: "
                            f"{out.decode(errors='replace')[-2000:]}")
    return elapsed
