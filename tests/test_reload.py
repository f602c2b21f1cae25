"""Live reconfiguration (issue 20): ``ossa serve`` re-reads ``config.toml`` on SIGHUP.

:func:`worker.reload.compare` sorts a change into the keys applied live and those that need
a restart; the integration test drives a running ``ossa serve`` with DCMTK ``echoscu``
and ``ossa reload``: a new AE title and allowed calling AE title take effect for new
associations while an association opened before the reload goes on and stores a study,
whose SR goes to a destination the reload added; a key that needs a restart is named as
such; an invalid file is refused with its reason and the running configuration kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_io.synthetic import StudyIdentity, radiograph_dataset
from harness.config import write_config
from harness.peers import free_port, wait_until
from models.datasets.phantom import render_study
from models.serving.predict import TwoStageClassifier
from tests.conftest import Served, dcmtk, running_storescp
from worker.cli import main
from worker.config import Config, DimseDestination, ListenerConfig, StorageConfig
from worker.reload import compare, running
from worker.service import build_service


def _destination(name: str, port: int) -> DimseDestination:
    return DimseDestination(name=name, ae_title="STORESCP", host="127.0.0.1", port=port)


def test_compare_sorts_live_keys_from_those_needing_a_restart() -> None:
    old = Config(listener=ListenerConfig(ae_title="OSSA", allowed_calling_aets=("PACS",)),
                 destinations=(_destination("pacs", 104), _destination("old", 105)))
    new = Config(
        listener=ListenerConfig(ae_title="OSSA2", allowed_calling_aets=("PACS", "CR1"),
                                port=11113, allowed_peers={"CR1": ("10.0.0.7",)}),
        destinations=(_destination("pacs", 4242), _destination("new", 106)),
        scope=old.scope.model_copy(update={"not_assessed": ("CHEST",)}),
        http=old.http.model_copy(update={"port": 8081}),
    )
    change = compare(old, new)
    assert set(change.live) == {
        "listener.ae_title", "listener.allowed_calling_aets", "listener.allowed_peers",
        "scope.not_assessed", "destinations.new (added)", "destinations.old (removed)",
        "destinations.pacs (changed)",
    }
    assert set(change.restart) == {"listener.port", "http.port"}
    assert not compare(old, old)

    kept = running(old, new)  # live keys from new, the others as they run
    assert kept.listener.ae_title == "OSSA2" and kept.listener.port == old.listener.port
    assert kept.http == old.http and kept.scope == new.scope
    assert [d.name for d in kept.destinations] == ["pacs", "new"]
    # the restart keys are still named by the next reload, until the service restarts
    assert set(compare(kept, new).restart) == {"listener.port", "http.port"}
    assert compare(kept, new).live == ()


def _config(path: Path, *, port: int, bundle: Path, ae_title: str, calling: list[str],
            destination_port: int | None) -> None:
    write_config(
        path,
        listener={"ae_title": ae_title, "port": port, "allowed_calling_aets": calling},
        study={"completion_timeout_s": 1},
        model={"bundle": bundle},
        destinations=[] if destination_port is None else [{
            "name": "pacs", "type": "dimse", "ae_title": "STORESCP", "host": "127.0.0.1",
            "port": destination_port}],
    )


def _echo(port: int, calling: str, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-to", "5", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30,
    )


def _study() -> list[pydicom.Dataset]:
    rendered = render_study("WRIST", True, 7, n_images=2)
    who = StudyIdentity(patient_id="PID-RELOAD", patient_name="Reload^Test",
                        accession_number="ACC-RELOAD", body_part="WRIST")
    series = pydicom.uid.generate_uid()
    return [radiograph_dataset(np.round(image * 255).astype(np.uint8), who,
                               series_instance_uid=series, instance_number=i + 1)
            for i, image in enumerate(rendered.images)]


@pytest.mark.integration
def test_sighup_applies_titles_and_destinations_without_dropping_an_association(
    tmp_path: Path, trained_bundle: Path, serve: Callable[[Path, int], Served],
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, config = free_port(), tmp_path / "config.toml"
    _config(config, port=port, bundle=trained_bundle, ae_title="OSSA", calling=["STORESCU"],
            destination_port=None)
    served = serve(config, port)
    assert _echo(port, "NEWCR", "OSSA").returncode != 0  # not allowed yet

    # An association opened before the reload, as the old configuration allows it.
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="OSSA")
    assert assoc.is_established
    try:
        with running_storescp(tmp_path / "pacs") as pacs_port:
            # The admin allows a new modality, renames Ossa's AE, adds a destination and
            # moves the port (which needs a restart).
            _config(config, port=free_port(), bundle=trained_bundle, ae_title="OSSA2",
                    calling=["STORESCU", "NEWCR"], destination_port=pacs_port)
            capsys.readouterr()
            assert main(["reload", "--config", str(config)]) == 0
            assert "Sent SIGHUP" in capsys.readouterr().out
            wait_until(lambda: "Configuration reloaded; applied" in served.text(),
                       timeout=60, what="the reload logged")
            log = served.text()
            assert "listener.ae_title" in log and "destinations.pacs (added)" in log
            assert "next restart only: listener.port" in log

            assert _echo(port, "NEWCR", "OSSA2").returncode == 0  # the new title, new AE
            refused = _echo(port, "STORESCU", "OSSA")  # the old title is no longer Ossa's
            assert refused.returncode != 0

            # The association from before is still up: C-ECHO and a study on it.
            assert assoc.send_c_echo().Status == 0x0000
            study = _study()
            for ds in study:
                assert assoc.send_c_store(ds).Status == 0x0000
            assoc.release()
            wait_until(lambda: any(p.is_file() and pydicom.dcmread(
                p, stop_before_pixels=True).Modality == "SR"
                for p in (tmp_path / "pacs").iterdir()),
                timeout=120, what="the SR at the destination the reload added")

        # An invalid file: `ossa reload` refuses it and sends nothing ...
        config.write_text(config.read_text().replace('ae_title = "OSSA2"',
                                                     'ae_title = "MUCH-TOO-LONG-AE-TITLE"'))
        assert main(["reload", "--config", str(config)]) == 2
        assert "listener.ae_title" in capsys.readouterr().err
        # ... and a SIGHUP sent anyway is refused by the service, which keeps running.
        os.kill(served.proc.pid, signal.SIGHUP)
        wait_until(lambda: "Configuration not reloaded" in served.text(), timeout=60,
                   what="the invalid file refused")
        assert "listener.ae_title" in served.text().split("Configuration not reloaded")[-1]
        assert _echo(port, "NEWCR", "OSSA2").returncode == 0
    finally:
        if assoc.is_established:
            assoc.abort()
    assert served.stop() == 0


def test_reload_rebuilds_only_the_lanes_that_changed(
    tmp_path: Path, classifier: TwoStageClassifier,
) -> None:
    """A changed destination's lane is retired (its thread ends) and a new one started; an
    unchanged destination keeps its running lane; a removed one stops; the report stage and
    the scope follow the new file; the listener is the same server throughout."""
    config = Config(
        listener=ListenerConfig(port=free_port(), allowed_calling_aets=("STORESCU",)),
        storage=StorageConfig(root=tmp_path / "var"),
        destinations=(_destination("pacs", 104), _destination("keep", 105),
                      _destination("gone", 106)),
    )
    service = build_service(config, classifier, stop_event=threading.Event())
    service.start()
    try:
        before = dict(service.lanes)
        server = service._server
        new = config.model_copy(update={
            "destinations": (_destination("pacs", 4242), _destination("keep", 105),
                             _destination("added", 107)),
            "scope": config.scope.model_copy(update={"not_assessed": ("CHEST", "SKULL")}),
        })
        change = service.reload(new)
        assert set(change.live) == {"destinations.pacs (changed)", "destinations.gone (removed)",
                                    "destinations.added (added)", "scope.not_assessed"}
        assert list(service.lanes) == ["destination pacs", "destination keep",
                                       "destination added"]
        assert service.lanes["destination keep"] is before["destination keep"]
        assert service.lanes["destination pacs"] is not before["destination pacs"]
        for retired in (before["destination pacs"], before["destination gone"]):
            assert retired.stop.is_set()
            assert not any(t.is_alive() for t in retired.threads)
        assert all(t.is_alive() for lane in service.lanes.values() for t in lane.threads)
        assert service.report.destinations == ("pacs", "keep", "added")
        assert service.classify.scope.not_assessed == {"CHEST", "SKULL"}
        assert service._server is server  # the listener was not restarted
        assert not service.reload(new)  # the same file again: nothing to do
    finally:
        service.stop(deadline_s=30)
