"""A small, real world for API tests: a migrated database, stored DICOM files, predictions,
heat maps, result objects with deliveries, and users.

Everything is built directly (no network, no model): studies with CR images written by
pydicom into a temporary storage folder, heat maps saved with ``pipeline.heatmaps.save_heatmap``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from api.accounts import create_user
from audit.events import Actor
from config.settings import Settings
from db.base import utcnow
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import (
    Eligibility,
    ImagePrediction,
    Instance,
    Job,
    JobState,
    Series,
    Study,
    StudyPrediction,
    StudyStatus,
)
from db.results import OutboxEntry, OutboxState, ResultObject, ResultObjectKind
from db.review import Role
from dicom_node.storage import InstanceStore
from inference.preprocess import CropBox, GeometryTransform
from pipeline.heatmaps import save_heatmap

PASSWORD = "correct-horse-battery"
SETUP_ACTOR = Actor("cli:test-setup")
HEATMAP_SIZE = 32

#: The suspected fracture a positive seeded image reports (as the analysis step stores it).
REGIONS = [
    {
        "x0": 60.0,
        "y0": 35.0,
        "x1": 80.0,
        "y1": 55.0,
        "score": 0.7,
        "probability": 0.8,
        "operating_points": ["high_sensitivity"],
    }
]


@dataclass
class SeededStudy:
    id: int
    image_ids: list[int]
    rows: int
    columns: int
    prediction_id: int | None
    sop_instance_uids: list[str] = field(default_factory=list)


@dataclass
class World:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: InstanceStore
    home: Path


def make_settings(home: Path, **overrides: object) -> Settings:
    api = {"secret_key": "test-secret-key-for-jwt-signing-32b"}
    inference = {"model_path": home / "no-model", "enabled": True}
    values: dict[str, object] = {"home": home, "api": api, "inference": inference}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def open_world(home: Path, url: str | None = None, **overrides: object) -> World:
    settings = make_settings(home, **overrides)
    engine = make_engine(url or settings.database_url)
    upgrade(engine)
    store = InstanceStore(settings.storage_folder, fsync=False)
    return World(settings, engine, make_session_factory(engine), store, home)


def add_user(world: World, username: str, role: Role, password: str = PASSWORD) -> int:
    with world.sessions() as session, session.begin():
        return create_user(session, SETUP_ACTOR, username, password, role).id


def radiograph(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    patient_name: str,
    body_part: str,
    rows: int = 96,
    columns: int = 128,
    burned_in: str | None = None,
) -> Dataset:
    """A small 12-bit CR image: dark background with a bright 'bone' bar."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = "PID-" + sop_uid[-6:]
    ds.AccessionNumber = "ACC" + sop_uid[-5:]
    ds.StudyDate = "20240105"
    ds.Modality = "CR"
    ds.BodyPartExamined = body_part
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = np.full((rows, columns), 300, dtype=np.uint16)
    pixels[rows // 4 : 3 * rows // 4, columns // 3 : columns // 2] = 3500
    ds.PixelData = pixels.tobytes()
    return ds


def heat_for(rows: int, columns: int) -> tuple[np.ndarray, GeometryTransform]:
    """A model-grid heat map with one hot spot and the letterbox transform of the image."""
    scale = HEATMAP_SIZE / max(rows, columns)
    pad_x = (HEATMAP_SIZE - round(columns * scale)) // 2
    pad_y = (HEATMAP_SIZE - round(rows * scale)) // 2
    transform = GeometryTransform(
        original_width=columns,
        original_height=rows,
        crop=CropBox(0, 0, columns, rows),
        scale=scale,
        pad_x=pad_x,
        pad_y=pad_y,
        size=HEATMAP_SIZE,
    )
    heat = np.zeros((HEATMAP_SIZE, HEATMAP_SIZE), dtype=np.float32)
    heat[10:20, 12:18] = 1.0
    return heat, transform


def seed_study(
    world: World,
    *,
    patient_name: str = "TEST^PATIENT",
    body_part: str = "HAND",
    probability: float | None = 0.8,
    threshold: float = 0.5,
    n_images: int = 1,
    status: StudyStatus = StudyStatus.COMPLETE,
    received_at: datetime | None = None,
    result_after: timedelta = timedelta(seconds=30),
    burned_in: str | None = None,
    deliveries: tuple[OutboxState, ...] = (),
    rows: int = 96,
    columns: int = 128,
) -> SeededStudy:
    """One study with ``n_images`` stored CR images; a result unless ``probability`` is None."""
    received = received_at or utcnow()
    study_uid, series_uid = generate_uid(), generate_uid()
    with world.sessions() as session, session.begin():
        study = Study(
            study_instance_uid=study_uid,
            patient_name=patient_name,
            patient_id="PID-" + study_uid[-6:],
            accession_number="ACC" + study_uid[-5:],
            study_date="20240105",
            study_description=f"XR {body_part}",
            status=status,
            first_received_at=received,
            last_received_at=received,
        )
        session.add(study)
        session.flush()
        series = Series(
            study_id=study.id,
            series_instance_uid=series_uid,
            modality="CR",
            body_part_examined=body_part,
            series_number=1,
        )
        session.add(series)
        session.flush()
        job = Job(study_id=study.id, state=JobState.DONE)
        session.add(job)
        session.flush()
        image_ids: list[int] = []
        sop_uids: list[str] = []
        for number in range(n_images):
            sop_uid = generate_uid()
            ds = radiograph(
                study_uid,
                series_uid,
                sop_uid,
                patient_name=patient_name,
                body_part=body_part,
                burned_in=burned_in,
                rows=rows,
                columns=columns,
            )
            digest = secrets.token_hex(32)  # the name's digest part; the content is not checked
            path = world.store.path_for(study_uid, sop_uid, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            instance = Instance(
                study_id=study.id,
                series_id=series.id,
                sop_instance_uid=sop_uid,
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=ExplicitVRLittleEndian,
                instance_number=number + 1,
                rows=rows,
                columns=columns,
                storage_path=str(path.relative_to(world.store.root)),
                sha256=digest,
                size_bytes=path.stat().st_size,
                calling_ae_title="TESTSCU",
                received_at=received,
                eligibility=Eligibility.ELIGIBLE,
            )
            session.add(instance)
            session.flush()
            image_ids.append(instance.id)
            sop_uids.append(sop_uid)
            if probability is not None:
                heat, transform = heat_for(rows, columns)
                heat_path = save_heatmap(world.store, job.id, instance.id, heat, transform)
                session.add(
                    ImagePrediction(
                        job_id=job.id,
                        instance_id=instance.id,
                        model_name="tiny",
                        model_version="1.2.3",
                        probability=probability,
                        positive_high_sensitivity=probability >= threshold,
                        positive_high_specificity=probability >= 0.9,
                        heatmap_path=heat_path,
                        peak_x=70.0,
                        peak_y=45.0,
                        inference_ms=12.5,
                        regions=REGIONS if probability >= threshold else [],
                        created_at=received + result_after,
                    )
                )
        prediction_id = None
        if probability is not None:
            prediction = StudyPrediction(
                job_id=job.id,
                study_id=study.id,
                model_name="tiny",
                model_version="1.2.3",
                probability=probability,
                positive=probability >= threshold,
                operating_point="high_sensitivity",
                threshold=threshold,
                positive_high_specificity=probability >= 0.9,
                n_images=n_images,
                created_at=received + result_after,
            )
            session.add(prediction)
            session.flush()
            prediction_id = prediction.id
            for number, state in enumerate(deliveries):
                obj = ResultObject(
                    job_id=job.id,
                    study_id=study.id,
                    kind=ResultObjectKind.SR if number == 0 else ResultObjectKind.SC,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                    sop_instance_uid=generate_uid(),
                    series_instance_uid=generate_uid(),
                    source_instance_id=None if number == 0 else image_ids[0],
                    model_name="tiny",
                    model_version="1.2.3",
                    storage_path=f"results/{number}.dcm",
                )
                session.add(obj)
                session.flush()
                session.add(
                    OutboxEntry(
                        result_object_id=obj.id,
                        destination="pacs",
                        state=state,
                        attempts=8 if state is OutboxState.DEAD_LETTER else 1,
                        last_error="association rejected"
                        if state is OutboxState.DEAD_LETTER
                        else None,
                    )
                )
    return SeededStudy(study.id, image_ids, rows, columns, prediction_id, sop_uids)


def make_undecodable(world: World, image_id: int, reason: str) -> None:
    """Turn a seeded image into one the node stored but could not decode: out of scope, no result.

    The stored file keeps its header but loses its pixel data, so the preview cannot be made.
    """
    with world.sessions() as session, session.begin():
        instance = session.get(Instance, image_id)
        assert instance is not None
        path = world.store.absolute(instance.storage_path)
        ds = dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
        instance.eligibility = Eligibility.OUT_OF_SCOPE
        instance.eligibility_reason = reason
        session.execute(delete(ImagePrediction).where(ImagePrediction.instance_id == image_id))
