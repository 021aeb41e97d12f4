"""The command line against a live node: echo, send (progress and per-file summary), db upgrade."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from typer.testing import CliRunner

from db.models import Instance
from gateway.cli import app
from gateway.service import Service
from tests.dicom_node.test_scp import small_dx
from tests.helpers.node import NodeFactory


def test_echo_reports_success_and_failure(node: Service) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["echo", "127.0.0.1", str(node.dicom_port), "-aec", "FRACTUREGW"])
    assert ok.exit_code == 0, ok.output
    assert "0x0000" in ok.output
    wrong = runner.invoke(app, ["echo", "127.0.0.1", str(node.dicom_port), "-aec", "WRONG"])
    assert wrong.exit_code == 1
    assert "rejected" in wrong.output


def test_send_folder_reports_each_file(node: Service, shared_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "to-send"
    (folder / "sub").mkdir(parents=True)
    dx = shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm"
    (folder / "sub" / "dx.dcm").write_bytes(dx.read_bytes())
    (folder / "notes.txt").write_text("not a DICOM file")
    result = CliRunner().invoke(
        app, ["send", "127.0.0.1", str(node.dicom_port), str(folder), "-aec", "FRACTUREGW"]
    )
    assert result.exit_code == 1  # one file could not be sent
    assert "1 sent, 1 failed" in result.output
    assert "not a DICOM file" in result.output
    with node.sessions() as session:
        (row,) = session.scalars(select(Instance)).all()
    assert row.sop_instance_uid == dcmread(dx, stop_before_pixels=True).SOPInstanceUID


def test_db_upgrade_creates_the_schema(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    # Every branch of the schema is at its head.
    assert "0002_results" in result.output
    assert "0005_review_idempotency" in result.output  # the review branch: 0003, then 0005
    assert (tmp_path / "home" / "fracture-gateway.sqlite3").exists()


def test_no_patient_data_in_scp_logs(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A canary name and ID, stored, refused and duplicated, never reach the logs."""
    from dicom_node.send import send_files

    caplog.set_level(logging.DEBUG)
    node = start_node(node={"duplicate_policy": "keep_first"})
    good = small_dx(PatientName="CANARY^PATIENT", PatientID="CANARY-ID-123")
    broken = small_dx(PatientName="CANARY^PATIENT", PatientID="CANARY-ID-123")
    del broken.StudyInstanceUID
    changed = small_dx(PatientName="CANARY^PATIENT", PatientID="CANARY-ID-123")
    changed.SOPInstanceUID = good.SOPInstanceUID
    changed.StudyInstanceUID = good.StudyInstanceUID
    paths = []
    for i, ds in enumerate([good, broken, changed]):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    statuses = [
        r.status for r in send_files(paths, "127.0.0.1", node.dicom_port, "FRACTUREGW", "T")
    ]
    assert statuses == [0, 0xC001, 0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in text  # the refusal was logged...
    assert "CANARY" not in text  # ...without the patient's name or ID


def test_service_logging_keeps_library_header_chatter_out() -> None:
    """pynetdicom (PDU contents) and highdicom (source UIDs) log at INFO; serve keeps warnings."""
    from gateway.cli import _configure_logging

    saved = {name: logging.getLogger(name).level for name in ("pynetdicom", "highdicom")}
    try:
        _configure_logging("INFO")
        for name in saved:
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
            assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
