"""Start-up reconciliation of the storage folder: what a crash left without a row is recorded
(complete instances) or removed (temporary and partial files), before the SCP accepts anything,
with the counts logged and exported as metrics. Real files, written by the ingest's own helpers.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from api.app import create_app
from config.settings import DuplicatePolicy
from db.engine import make_engine
from db.migrate import upgrade
from db.models import Instance, StorageReconciliation, Study, StudyStatus
from dicom_node.grouping import complete_quiet_studies
from dicom_node.ingest import file_meta_for, ingest_encoded
from dicom_node.reconcile import ReconcileReport
from dicom_node.storage import InstanceStore, file_digest
from gateway.service import Service
from tests.helpers.node import make_settings
from tests.helpers.results_db import schema_differences

CANARY_ID = "CANARY-RECON-5521"
CANARY_NAME = "CANARYNAME^RECONCILE"


class Sample:
    """A real CR file with its own UIDs, encoded as a C-STORE would carry it."""

    def __init__(self, source: Path, *, study_uid: str | None = None, sop_uid: str | None = None):
        ds = dcmread(source)
        ds.StudyInstanceUID = study_uid or generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
        ds.PatientID = CANARY_ID
        ds.PatientName = CANARY_NAME
        self.dataset = ds

    @property
    def encoded(self) -> bytes:
        buffer = BytesIO()
        self.dataset.save_as(buffer, enforce_file_format=True)
        raw = buffer.getvalue()
        stream = BytesIO(raw)
        pydicom.filereader.read_preamble(stream, False)
        pydicom.filereader._read_file_meta_info(stream)
        return raw[stream.tell() :]

    @property
    def syntax(self) -> str:
        return str(self.dataset.file_meta.TransferSyntaxUID)

    def ingest(self, service: Service) -> None:
        """Through the C-STORE handler's own ingest function: file and row."""
        ingest_encoded(
            service.sessions,
            service.store,
            self.encoded,
            transfer_syntax=self.syntax,
            sop_class_uid=str(self.dataset.SOPClassUID),
            sop_instance_uid=str(self.dataset.SOPInstanceUID),
            calling_ae_title="MODALITY",
            duplicate_policy=DuplicatePolicy.KEEP_FIRST,
        )

    def stored_without_row(self, store: InstanceStore) -> Path:
        """As ingest writes it (fsynced temporary file, rename), then a crash before commit."""
        meta = file_meta_for(
            str(self.dataset.SOPClassUID), self.dataset.SOPInstanceUID, self.syntax
        )
        tmp, digest = store.write_temporary(meta, self.encoded)
        final = store.path_for(
            self.dataset.StudyInstanceUID, self.dataset.SOPInstanceUID, digest.sha256
        )
        store.commit(tmp, final)
        return final

    def temporary(self, store: InstanceStore) -> Path:
        """A temporary file whose write was interrupted (half of it written)."""
        meta = file_meta_for(
            str(self.dataset.SOPClassUID), self.dataset.SOPInstanceUID, self.syntax
        )
        tmp, _ = store.write_temporary(meta, self.encoded)
        tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
        return tmp


@pytest.fixture
def cr_file(shared_dir: Path) -> Path:
    return shared_dir / "dicom/robyoung-dicom-test-files/data/WG04/REF/RG2_UNC"


def scrape(service: Service) -> dict[str, float]:
    """The storage reconciliation counters from ``/metrics``."""
    with TestClient(create_app(service.settings, service.sessions, store=service.store)) as client:
        text = client.get("/metrics").text
    prefix = "fracture_gateway_storage_reconciled_files_total{action="
    values = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            label, value = line[len(prefix) :].split("} ")
            values[label.strip('"')] = float(value)
    return values


def test_start_up_records_lost_rows_and_removes_partial_files(
    tmp_path: Path, cr_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path / "home")
    before = Service(settings)  # migrated database and storage folder, nothing started
    store = before.store

    acknowledged = Sample(cr_file)
    acknowledged.ingest(before)
    lost = Sample(cr_file, study_uid=str(acknowledged.dataset.StudyInstanceUID))
    lost_path = lost.stored_without_row(store)
    other_study = Sample(cr_file)
    other_study_path = other_study.stored_without_row(store)
    damaged_path = Sample(cr_file).stored_without_row(store)
    damaged_path.write_bytes(damaged_path.read_bytes()[:-1000])  # shorter than its name says
    differing = Sample(
        cr_file,
        study_uid=str(acknowledged.dataset.StudyInstanceUID),
        sop_uid=str(acknowledged.dataset.SOPInstanceUID),
    )
    differing.dataset.InstanceNumber = 99  # other content under an acknowledged UID
    differing_path = differing.stored_without_row(store)
    foreign = store.instances_dir / "stray" / "notes.txt"
    foreign.parent.mkdir()
    foreign.write_text("not an instance")
    Sample(cr_file).temporary(store)
    (store.tmp_dir / "abandoned.part").write_bytes(b"\0" * 128 + b"DI")
    before.engine.dispose()

    service = Service(settings)
    service.start(dicom=True, worker=False)
    try:
        assert service.reconciliation == ReconcileReport(
            recorded=2, kept_aside=1, removed_temporary=2, removed_partial=2
        )
        with service.sessions() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
            studies = {s.study_instance_uid: s for s in session.scalars(select(Study))}
        # The complete files are recorded as ingest would have, in their studies.
        for sample, path in ((lost, lost_path), (other_study, other_study_path)):
            row = rows[str(sample.dataset.SOPInstanceUID)]
            assert store.absolute(row.storage_path) == path
            assert (row.sha256, row.size_bytes) == file_digest(path)
            assert row.study_id == studies[str(sample.dataset.StudyInstanceUID)].id
        assert studies[str(other_study.dataset.StudyInstanceUID)].status is StudyStatus.RECEIVING
        assert studies[str(other_study.dataset.StudyInstanceUID)].patient_id == CANARY_ID
        # The acknowledged copy stays the analysed one; the differing copy is kept aside.
        kept = rows[str(acknowledged.dataset.SOPInstanceUID)]
        assert store.absolute(kept.storage_path).is_file()
        assert not differing_path.exists()
        assert len(list(store.conflicts_dir.iterdir())) == 1
        # Nothing partial or temporary is left.
        assert not damaged_path.exists()
        assert not foreign.exists()
        assert list(store.tmp_dir.iterdir()) == []
        on_disk = {
            str(p.relative_to(store.root)) for p in store.instances_dir.rglob("*") if p.is_file()
        }
        assert on_disk == {r.storage_path for r in rows.values()}
        # The recorded instances are grouped and analysed like any other.
        assert len(complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)) == 2
    finally:
        service.stop()

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "storage reconciled: 2 instances recorded, 1 kept aside, 2 temporary and 2 partial" in (
        logged
    )
    for secret in (CANARY_ID, "CANARYNAME", str(lost.dataset.SOPInstanceUID)):
        assert secret not in logged

    # A second start finds nothing; the counters keep what the first one did.
    again = Service(settings)
    again.start(dicom=True, worker=False)
    try:
        assert again.reconciliation == ReconcileReport()
        assert scrape(again) == {
            "recorded": 2.0,
            "kept_aside": 1.0,
            "removed_temporary": 2.0,
            "removed_partial": 2.0,
        }
        with again.sessions() as session:
            assert len(session.scalars(select(StorageReconciliation)).all()) == 2
    finally:
        again.stop()


def test_migration_matches_the_reconciliation_model(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    assert schema_differences(engine, {"storage_reconciliations"}) == []
    engine.dispose()
