"""The real ``ossa`` CLI in a subprocess, with real peers: storescu in, Orthanc as the PACS."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.sr import study_finding
from dicom_io.synthetic import StudyIdentity, write_study
from harness.config import write_config
from harness.peers import Orthanc, free_port, wait_until
from models.datasets.phantom import render_study
from tests.conftest import OSSA, Served, dciodvfy_errors, dcmtk, echo, evidence_sop_uids


def _config(tmp_path: Path, port: int, bundle: Path, orthanc: Orthanc | None) -> Path:
    return write_config(
        tmp_path / "config.toml",
        listener={"port": port, "allowed_calling_aets": ["STORESCU", "ORTHANC"]},
        study={"completion_timeout_s": 1.0},
        model={"bundle": bundle},
        logging={"level": "DEBUG"},
        destinations=[] if orthanc is None else [{
            "name": "orthanc", "type": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1",
            "port": orthanc.dicom_port, "timeout_s": 10}],
    )


@pytest.fixture
def served(
    tmp_path: Path, ossa_port: int, trained_bundle: Path, orthanc: Orthanc
) -> Iterator[Served]:
    running = Served(_config(tmp_path, ossa_port, trained_bundle, orthanc), ossa_port)
    yield running
    running.stop()


def _sr_instances(orthanc: Orthanc, study_uid: str) -> list[str]:
    return [
        item["ID"]
        for item in orthanc.instances_of_study(study_uid)
        if orthanc.get(f"/instances/{item['ID']}/simplified-tags").get("Modality") == "SR"
    ]


@pytest.mark.integration
def test_storescu_to_orthanc_end_to_end(
    served: Served, ossa_port: int, orthanc: Orthanc, tmp_path: Path
) -> None:
    study = render_study("WRIST", True, 2024, n_images=3)
    identity = StudyIdentity(
        patient_id="SECRET-ID-42",
        patient_name="Secret^Patient",
        accession_number="ACC42",
        body_part="WRIST",
    )
    images = [np.round(image * 255).astype(np.uint8) for image in study.images]
    files = write_study(images, identity, tmp_path / "study")
    sources = [pydicom.dcmread(f) for f in files]

    sent = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            "OSSA",
            "127.0.0.1",
            str(ossa_port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr

    sr_ids = wait_until(
        lambda: _sr_instances(orthanc, identity.study_instance_uid),
        timeout=180,
        what="the SR in Orthanc",
    )
    assert len(sr_ids) == 1  # type: ignore[arg-type]
    data = orthanc.get_bytes(f"/instances/{sr_ids[0]}/file")  # type: ignore[index]
    sr = pydicom.dcmread(io.BytesIO(data))

    assert sr.StudyInstanceUID == identity.study_instance_uid
    assert sr.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert sr.PatientID == identity.patient_id
    assert evidence_sop_uids(sr) == {ds.SOPInstanceUID for ds in sources}
    assert study_finding(sr) is study.abnormal
    assert "not for diagnos" in sr.SeriesDescription.lower()

    sr_path = tmp_path / "from-orthanc.dcm"
    sr_path.write_bytes(data)
    assert dciodvfy_errors(sr_path) == []

    # A PACS rule forwarding Ossa's SR back: Orthanc C-STOREs it to Ossa, Ossa acknowledges
    # it (Orthanc's job succeeds) and reports nothing new.
    orthanc.post("/modalities/ossa/store", {"Resources": [sr_ids[0]], "Synchronous": True})
    assert f"Acknowledged SOP Instance {sr.SOPInstanceUID}" in served.text()

    # The secondary captures (one per assessed image) reach Orthanc too, and forwarded back
    # are acknowledged the same way.
    captures = wait_until(lambda: [
        item["ID"] for item in orthanc.instances_of_study(identity.study_instance_uid)
        if orthanc.get(f"/instances/{item['ID']}/simplified-tags").get("SOPClassUID")
        == "1.2.840.10008.5.1.4.1.1.7"], timeout=60, what="the secondary captures in Orthanc")
    assert 1 <= len(captures) <= len(sources)  # type: ignore[arg-type]
    capture = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{captures[0]}/file")))  # type: ignore[index]
    assert capture.BurnedInAnnotation == "YES" and "not for diagnosis" in capture.SeriesDescription
    orthanc.post("/modalities/ossa/store", {"Resources": captures[:1], "Synchronous": True})  # type: ignore[index]
    assert f"Acknowledged SOP Instance {capture.SOPInstanceUID}" in served.text()
    status = subprocess.run([OSSA, "status", "--json", "--config", str(tmp_path / "config.toml")],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["jobs"] == {"done": 1}
    assert len(_sr_instances(orthanc, identity.study_instance_uid)) == 1

    log = served.text()
    assert sources[0].SOPInstanceUID in log
    assert "Secret" not in log and "SECRET-ID-42" not in log and "ACC42" not in log


@pytest.mark.integration
def test_calling_ae_not_allowed_is_rejected(served: Served, ossa_port: int) -> None:
    wrong = echo(ossa_port, "WRONG")
    assert wrong.returncode != 0
    assert "reject" in (wrong.stdout + wrong.stderr).lower()
    assert echo(ossa_port, "STORESCU").returncode == 0  # still serving


def _mapped_libraries(pid: int) -> set[str]:
    """Shared objects mapped into a running process (Linux /proc/PID/maps)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in lines if ".so" in line.split()[-1]}


def test_serve_runs_on_onnxruntime_without_torch_and_sigterm_exits_zero(
    tmp_path: Path, trained_bundle: Path, serve: Callable[[Path, int], Served]
) -> None:
    port = free_port()
    running = serve(_config(tmp_path, port, trained_bundle, None), port)
    libraries = _mapped_libraries(running.proc.pid)
    assert any("onnxruntime" in lib for lib in libraries)
    assert not [lib for lib in libraries if "libtorch" in lib or "/torch/" in lib]
    assert running.stop() == 0
    assert "Listening as OSSA" in running.text()


def test_predict_prints_json_lines_and_names_bad_files(
    tmp_path: Path, trained_bundle: Path, phantom_root: Path
) -> None:
    from pydicom.data import get_testdata_file

    study = next((phantom_root / "MURA-v1.1" / "valid" / "XR_WRIST").glob("*/study*"))
    pngs = sorted(study.glob("*.png"))
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not DICOM at all")
    chest = get_testdata_file("RG1_UNCR.dcm")
    proc = subprocess.run(
        [OSSA, "predict", "--bundle", str(trained_bundle), *map(str, pngs), str(bad), chest],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1  # one file could not be read; the others were predicted
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    images, studies = lines[: len(pngs) + 2], lines[len(pngs) + 2 :]
    assert [line["file"] for line in images] == [*map(str, pngs), str(bad), chest]
    assert "error" in images[len(pngs)] and "broken.dcm" in proc.stderr
    assert all(line["body_part"] == "WRIST" and line["assessed"] for line in images[: len(pngs)])
    assert images[-1]["assessed"] is False and images[-1]["reason"]
    assert len(studies) == 2  # the PNG folder and the chest study
    assert studies[0]["images"] == len(pngs) and studies[0]["verdict"] in ("NORMAL", "ABNORMAL")
    assert studies[0]["verdict"] == ("ABNORMAL" if "positive" in study.name else "NORMAL")
    assert studies[1]["verdict"] == "NOT ASSESSED"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port = ", "port = 99999 #", "listener.port"),
        ('ae_title = "OSSA"', 'ae_title = ""', "listener.ae_title"),
    ],
)
def test_invalid_config_exits_non_zero_naming_the_key(
    tmp_path: Path, trained_bundle: Path, old: str, new: str, key: str
) -> None:
    config = _config(tmp_path, free_port(), trained_bundle, None)
    config.write_text(config.read_text().replace(old, new, 1))
    proc = subprocess.run(
        [OSSA, "serve", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert key in proc.stderr


def test_missing_bundle_exits_non_zero(tmp_path: Path) -> None:
    config = _config(tmp_path, free_port(), tmp_path / "no-bundle", None)
    proc = subprocess.run(
        [OSSA, "serve", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "model.bundle" in proc.stderr


def test_export_dicom_writes_studies_storescu_can_send(tmp_path: Path, phantom_root: Path) -> None:
    out = tmp_path / "dicom"
    proc = subprocess.run(
        [OSSA, "export-dicom", "--data", str(phantom_root), "--out", str(out), "--studies", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(lines) == 2 and {label for _, label in lines} <= {"normal", "abnormal"}
    for folder, _ in lines:
        files = sorted(Path(folder).glob("*.dcm"))
        assert files
        for f in files:
            ds = pydicom.dcmread(f)
            assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME1"
            assert dciodvfy_errors(f) == []
