"""Shared fixtures: DICOM datasets built in memory, and helpers for real peers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pydicom import Dataset

from dicom_io.synthetic import StudyIdentity, radiograph_dataset
from harness.peers import (
    Orthanc,
    PeerError,
    PostgresServer,
    free_port,
    port_open,
    wait_until,
)

if TYPE_CHECKING:
    from models.serving.predict import TwoStageClassifier


def _gradient_image(rows: int = 64, columns: int = 48) -> np.ndarray:
    """An 8-bit image with a bright 'bone' bar on a dark background."""
    image = np.full((rows, columns), 20, dtype=np.uint8)
    image[:, columns // 3 : 2 * columns // 3] = 220
    image[rows // 2, :] = 120
    return image


@pytest.fixture
def make_radiograph() -> Callable[..., Dataset]:
    """Factory of CR/DX instances: ``make_radiograph(identity=None, modality="CR")``."""
    series_uid: dict[str, str] = {}

    def _make(
        identity: StudyIdentity | None = None,
        *,
        modality: str = "CR",
        image: np.ndarray | None = None,
        instance_number: int = 1,
    ) -> Dataset:
        identity = identity or StudyIdentity(
            patient_id="PID-123", patient_name="Doe^Jane", accession_number="ACC1",
            body_part="WRIST",
        )
        uid = series_uid.setdefault(identity.study_instance_uid, _new_uid())
        return radiograph_dataset(
            _gradient_image() if image is None else image,
            identity,
            series_instance_uid=uid,
            instance_number=instance_number,
            modality=modality,
        )

    return _make


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dicom3tools' ``dciodvfy`` on a file and return its ``Error`` lines."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed; run `make test`")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


#: Start of the fake wall clock (state store tests): 2023-11-14, any fixed time would do.
T0 = 1_700_000_000.0


class FakeClock:
    """A wall clock (seconds, like ``time.time``) that moves only when a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`FakeClock` at :data:`T0`."""
    return FakeClock()


def evidence_sop_uids(sr: Dataset) -> set[str]:
    """SOP Instance UIDs in an SR's Current Requested Procedure Evidence Sequence."""
    return {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


@contextmanager
def running_storescp(out: Path, *options: str) -> Iterator[int]:
    """DCMTK ``storescp`` (AE title STORESCP) on loopback, writing into ``out`` (created),
    with extra command-line ``options``; its port."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), *options, "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), timeout=10, what="storescp to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK ``storescp`` (AE title STORESCP) on loopback: its port and the folder it writes."""
    out = tmp_path / "storescp"
    with running_storescp(out) as port:
        yield port, out


@pytest.fixture(scope="session")
def ossa_port() -> int:
    """The port the Ossa listener under test uses (Orthanc knows it as a modality)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, ossa_port: int) -> Iterator[Orthanc]:
    """One Orthanc PACS for the session, on loopback ports."""
    try:
        peer = Orthanc(tmp_path_factory.mktemp("orthanc"), ossa_port)
    except PeerError as exc:
        pytest.fail(f"{exc}: run `make test`")
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session."""
    try:
        peer = PostgresServer()
    except PeerError as exc:
        pytest.fail(f"{exc}: run `make test`")
    yield peer
    peer.close()


# --- the real `ossa` CLI in a subprocess ---

OSSA = str(Path(sys.executable).with_name("ossa"))


def dcmtk(tool: str) -> str:
    """Path of a DCMTK tool; fails the test if DCMTK is not installed."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} (Debian package dcmtk) is not installed; run `make test`")
    return exe


def echo(port: int, calling: str) -> subprocess.CompletedProcess[str]:
    """DCMTK ``echoscu`` to the Ossa listener on ``port`` as ``calling``."""
    return subprocess.run(
        [dcmtk("echoscu"), "-to", "5", "-aet", calling, "-aec", "OSSA", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


class Served:
    """``ossa serve`` running in a subprocess; its log collected from stderr."""

    def __init__(self, config: Path, port: int, *, prefix: Sequence[str] = ()) -> None:
        self.log_path = config.parent / "ossa.log"
        self.log = self.log_path.open("ab")  # a restart appends to the same log
        self.proc = subprocess.Popen(
            [*prefix, OSSA, "serve", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(
            lambda: self._alive() and echo(port, "STORESCU").returncode == 0,
            timeout=120,
            what="ossa serve to answer C-ECHO",
        )

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"ossa serve exited {self.proc.returncode}:\n{self.text()}")
        return True

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``: no signal handler, no clean-up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)


@pytest.fixture
def serve() -> Iterator[Callable[[Path, int], Served]]:
    """Start ``ossa serve`` subprocesses; any still running when the test ends is killed,
    whatever the test's outcome (no service outlives its test)."""
    started: list[Served] = []

    def _serve(config: Path, port: int) -> Served:
        served = Served(config, port)
        started.append(served)
        return served

    yield _serve
    for served in started:
        if served.proc.poll() is None:
            served.kill()


# --- models: a phantom in the MURA-v1.1 layout and a bundle trained on it (session-scoped) ---

#: Studies per class (7 bone types + OTHER) of the tests' phantom; the `test` training preset
#: is tuned for it.
TEST_PHANTOM_STUDIES = 80
TEST_SEED = 0


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory containing ``MURA-v1.1/``: 80 phantom studies per class (OTHER too), seed 0."""
    import os

    from models.datasets.phantom import PhantomConfig, write_phantom

    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, TEST_PHANTOM_STUDIES, TEST_SEED,
                  config=PhantomConfig(min_size=160, max_size=320), workers=os.cpu_count() or 1)
    return out


@pytest.fixture(scope="session")
def trained_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Path:
    """Bundle trained on ``phantom_root`` with ``--preset test --seed 0`` (a few minutes).

    Always on the CPU (float32), so that the bundle, and the accuracy the tests check, is the
    same on a machine with a GPU. A developer iterating on worker tests may point
    ``OSSA_TEST_BUNDLE`` at a bundle trained the same way to skip the training; CI never does.
    """
    import os

    from models.training import train

    reuse = os.environ.get("OSSA_TEST_BUNDLE")
    if reuse:
        return Path(reuse)
    phantom_root: Path = request.getfixturevalue("phantom_root")

    out = tmp_path_factory.mktemp("bundles") / "test-bundle"
    args = train.get_args_parser().parse_args(
        ["--data", str(phantom_root), "--out", str(out), "--preset", "test",
         "--seed", str(TEST_SEED), "--device", "cpu"]
    )
    assert train.main(args) == 0
    return out


@pytest.fixture(scope="session")
def classifier(trained_bundle: Path) -> TwoStageClassifier:
    """The two-stage classifier of ``trained_bundle``, loaded once per session."""
    from models.serving.predict import TwoStageClassifier

    return TwoStageClassifier.from_bundle(trained_bundle)


# --- after the session: no patient data in any log it produced -----------------------------

_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the session's base temporary folder for :func:`pytest_sessionfinish`."""
    request.config.stash[_BASETEMP] = tmp_path_factory.getbasetemp()


def _suite_log(config: pytest.Config) -> Path | None:
    """The file pytest's ``log_file`` handler writes (flushed), as the logging plugin opened
    it (a relative ``log_file`` is relative to the directory pytest was started in)."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    if handler is None or not getattr(handler, "baseFilename", ""):
        return None
    handler.flush()
    return Path(handler.baseFilename)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Search every log of the session for the fixtures' patient data
    (:mod:`tests.logscan`), once all tests have run: a finding fails the session."""
    from tests.logscan import search_logs

    basetemp = session.config.stash.get(_BASETEMP, None)
    if basetemp is None or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return
    found = search_logs(_suite_log(session.config), basetemp)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.line("")
        reporter.write_sep("=" if found.findings else "-", found.summary(),
                           red=bool(found.findings), bold=bool(found.findings))
        for finding in found.findings[:50]:
            reporter.write_line(str(finding))
    if found.findings:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
