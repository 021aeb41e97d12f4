"""A migrated database with result objects and outbox rows, for outbox and publish tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Job, Study
from db.results import OutboxEntry, ResultObject, ResultObjectKind
from dicom_node.storage import InstanceStore


@dataclass
class ResultsDb:
    """An engine, its session factory and a storage folder."""

    engine: Engine
    sessions: sessionmaker[Session]
    store: InstanceStore


def open_results_db(url: str, storage: Path) -> ResultsDb:
    """Migrate the database at ``url`` and open it with a store under ``storage``."""
    engine = make_engine(url)
    upgrade(engine)
    return ResultsDb(engine, make_session_factory(engine), InstanceStore(storage, fsync=False))


def tiny_secondary_capture(study_uid: str, sop_instance_uid: str) -> Dataset:
    """A small, valid Secondary Capture Image (PS3.3 A.8.1) with synthetic content."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Outbox^Test"
    ds.PatientID = "OUTBOX-1"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    return ds


def add_results(
    db: ResultsDb, count: int, destinations: list[str], *, sop_class_uid: str | None = None
) -> list[str]:
    """Store ``count`` small SC files, record them and queue each for every destination.

    Returns the SOP Instance UIDs, in outbox order. ``sop_class_uid`` overrides the class
    recorded for the objects (to provoke a context the peer does not accept).
    """
    study_uid = generate_uid()
    uids: list[str] = []
    with db.sessions() as session, session.begin():
        study = Study(study_instance_uid=study_uid)
        session.add(study)
        session.flush()
        job = Job(study_id=study.id)
        session.add(job)
        session.flush()
        for _ in range(count):
            uid = generate_uid()
            ds = tiny_secondary_capture(study_uid, uid)
            relative = f"results/{study_uid}/{uid}.dcm"
            path = db.store.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            obj = ResultObject(
                job_id=job.id,
                study_id=study.id,
                kind=ResultObjectKind.SC,
                sop_class_uid=sop_class_uid or str(ds.SOPClassUID),
                sop_instance_uid=uid,
                series_instance_uid=str(ds.SeriesInstanceUID),
                model_name="test-model",
                model_version="0.0.1",
                storage_path=relative,
            )
            session.add(obj)
            session.flush()
            for name in destinations:
                session.add(OutboxEntry(result_object_id=obj.id, destination=name))
            uids.append(uid)
    return uids


def schema_differences(engine: Engine, tables: set[str]) -> list[object]:
    """Differences between the migrated schema and the models, limited to ``tables``."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import db.all_models  # noqa: F401 - every table on the metadata
    from db.base import Base

    def mentions(diff: object) -> bool:
        items = diff if isinstance(diff, list) else [diff]
        return any(
            getattr(getattr(part, "table", part), "name", None) in tables
            for item in items
            for part in (item if isinstance(item, tuple) else (item,))
        )

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [d for d in compare_metadata(context, Base.metadata) if mentions(d)]
