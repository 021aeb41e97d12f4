"""SIGKILL of the serving process in the middle of a stream, then restart: nothing acknowledged
is lost, nothing partial is left, nothing on disk lacks its row, grouping and jobs resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from db.engine import make_engine, make_session_factory
from db.models import Instance, Job, JobState, Study, StudyStatus
from dicom_node.conformance import DX_PRESENTATION_STORAGE
from dicom_node.storage import file_digest
from tests.helpers.tools import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def dx(study_uid: str, series_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "CRASH-1"
    ds.PatientName = "CRASH^TEST"
    ds.Modality = "DX"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (number % 251).to_bytes(2, "little") * (512 * 512)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def start_serving(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FRACTURE_GATEWAY_HOME": str(home),
        "FRACTURE_GATEWAY_NODE__BIND_ADDRESS": "127.0.0.1",
        "FRACTURE_GATEWAY_NODE__PORT": str(port),
        "FRACTURE_GATEWAY_GROUPING__QUIET_PERIOD_S": "2",
        "FRACTURE_GATEWAY_GROUPING__POLL_INTERVAL_S": "0.2",
        "FRACTURE_GATEWAY_INFERENCE__ENABLED": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--no-api"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_port(port, timeout_s=60, process=process)
    return process


def test_sigkill_mid_stream_then_restart(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    server = start_serving(home, port)
    study_uid, series_uid = generate_uid(), generate_uid()
    acknowledged: list[str] = []
    stop_sending = threading.Event()

    errors: list[BaseException] = []

    def stream() -> None:
        try:
            send_until_stopped()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    def send_until_stopped() -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACTUREGW")
        assert assoc.is_established
        for number in range(1, 10_000):
            if stop_sending.is_set() or not assoc.is_established:
                break
            ds = dx(study_uid, series_uid, number)
            status = assoc.send_c_store(ds)
            if status and int(status.Status) == 0:
                acknowledged.append(ds.SOPInstanceUID)
            else:
                break
        if assoc.is_established:
            assoc.release()

    sender = threading.Thread(target=stream)
    sender.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)  # in the middle of the stream
    server.wait(30)
    stop_sending.set()
    sender.join(60)
    assert not [e for e in errors if not isinstance(e, (ConnectionError, RuntimeError))], errors
    assert len(acknowledged) >= 5

    server = start_serving(home, port)
    try:
        engine = make_engine(f"sqlite:///{home / 'fracture-gateway.sqlite3'}")
        sessions = make_session_factory(engine)
        storage = home / "storage"
        # No temporary or partial file survives the restart.
        assert list((storage / "tmp").iterdir()) == []
        with sessions() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        # Every instance that got Success is on disk, intact, and in the database.
        for uid in acknowledged:
            assert uid in rows, "an acknowledged instance was lost"
            digest, size = file_digest(storage / rows[uid].storage_path)
            assert (digest, size) == (rows[uid].sha256, rows[uid].size_bytes)
        # Nothing on disk that the database does not know: the file in flight when the
        # process died (renamed into place, row not committed) was recorded at start-up.
        on_disk = {str(p.relative_to(storage)) for p in (storage / "instances").rglob("*.dcm")}
        assert on_disk == {r.storage_path for r in rows.values()}

        # Grouping resumes: the study completes after the quiet period and its job runs.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions() as session:
                study = session.scalars(select(Study)).one()
                job = session.scalars(select(Job)).first()
            if study.status is StudyStatus.COMPLETE and job and job.state is JobState.DONE:
                break
            time.sleep(0.2)
        assert study.status is StudyStatus.COMPLETE
        assert job is not None
        assert job.state is JobState.DONE
        engine.dispose()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert server.returncode == 0
