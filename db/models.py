"""Ingest and analysis state: studies, series, instances, jobs and predictions.

Identifiers needed for review and routing are kept as columns; everything else stays in the
stored DICOM file. Patient-identifying columns are read only by the authenticated API.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, UtcDateTime, enum_column, utcnow

UID = String(64)


class StudyStatus(StrEnum):
    """Where a study is: receiving, complete (job created), reopened by late arrivals."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    REOPENED = "reopened"


class Eligibility(StrEnum):
    """Whether an instance is analysed."""

    PENDING = "pending"
    ELIGIBLE = "eligible"
    OUT_OF_SCOPE = "out_of_scope"
    #: The instance names another patient than its study: stored, never analysed.
    IDENTITY_CONFLICT = "patient_conflict"  # the column holds 16 characters


class JobKind(StrEnum):
    """What a job does: analyse a completed study, or analyse one image as soon as it arrived."""

    STUDY = "analyse_study"
    #: One stored instance, before its study is complete: classify it and cache its prediction.
    IMAGE = "analyse_image"


class JobState(StrEnum):
    """The states of a queued job."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    #: Patient's Sex (0010,0040), a Code String: M, F or O.
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    #: Patient's Age (0010,1010), an Age String such as ``045Y`` (PS3.5 6.2).
    patient_age: Mapped[str | None] = mapped_column(String(4))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[StudyStatus] = mapped_column(
        enum_column(StudyStatus), default=StudyStatus.RECEIVING
    )
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    #: An instance named another patient: analysis and delivery are held until an admin
    #: resolves it (see :mod:`dicom_node.identity`).
    identity_conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Number of Study Related Instances (0020,1208) as the sender last gave it: the study is
    #: complete once that many instances are stored (see :mod:`dicom_node.grouping`).
    expected_instances: Mapped[int | None] = mapped_column(Integer)

    series: Mapped[list[Series]] = relationship(back_populates="study")
    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_status_last", "status", "last_received_at"),)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    storage_path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    eligibility: Mapped[Eligibility] = mapped_column(
        enum_column(Eligibility), default=Eligibility.PENDING
    )
    eligibility_reason: Mapped[str | None] = mapped_column(String(256))
    #: Rows and Columns (0028,0010-0011) of the stored image, kept at ingest so views need not
    #: open the file; None for objects without them (or not yet read, see ``dicom_node.sizes``).
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="instances")
    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """An analysis of one generation of a study, or of one arrived image of a study (``kind``):
    a row of the fenced queue ``db.jobs.JOBS``."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default=JobKind.STUDY.value)
    #: The instance of an image job (:attr:`JobKind.IMAGE`); None for a study's job.
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE", name="fk_jobs_instance_id_instances"),
        index=True,
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[JobState] = mapped_column(enum_column(JobState), default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_run_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: The fencing token: incremented by every claim; a worker's changes must match it.
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: When an administrator last queued the failed job again (``created_at`` is kept).
    retried_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="jobs")

    __table_args__ = (
        # One job per study generation; image jobs (several per generation) are left out.
        Index(
            "uq_jobs_study_generation_kind",
            "study_id",
            "generation",
            "kind",
            unique=True,
            sqlite_where=text("instance_id IS NULL"),
            postgresql_where=text("instance_id IS NULL"),
        ),
        Index("ix_jobs_state_next", "state", "next_run_at"),
    )


class ImagePrediction(Base):
    """One model's result for one instance."""

    __tablename__ = "image_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float] = mapped_column(Float)
    positive_high_sensitivity: Mapped[bool] = mapped_column(Boolean)
    positive_high_specificity: Mapped[bool] = mapped_column(Boolean)
    heatmap_path: Mapped[str | None] = mapped_column(String(512))
    peak_x: Mapped[float | None] = mapped_column(Float)
    peak_y: Mapped[float | None] = mapped_column(Float)
    inference_ms: Mapped[float | None] = mapped_column(Float)
    #: SHA-256 of the instance's stored bytes the prediction was computed from: a study job
    #: reuses an image job's prediction only for the same content (None: not recorded).
    instance_sha256: Mapped[str | None] = mapped_column(String(64))
    #: Suspected fracture regions (``inference.regions.Region.to_json`` each), strongest first;
    #: ``None`` for a model without a localisation output.
    regions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class StudyPrediction(Base):
    """One model's study-level result: the maximum over eligible images."""

    __tablename__ = "study_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float | None] = mapped_column(Float)
    positive: Mapped[bool | None] = mapped_column(Boolean)
    operating_point: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float] = mapped_column(Float)
    positive_high_specificity: Mapped[bool | None] = mapped_column(Boolean)
    n_images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ReconcileAction(StrEnum):
    """What start-up reconciliation did with a file that had no row (a column of each run)."""

    RECORDED = "recorded"
    KEPT_ASIDE = "kept_aside"
    REMOVED_TEMPORARY = "removed_temporary"
    REMOVED_PARTIAL = "removed_partial"


class StorageReconciliation(Base):
    """One start-up pass over the storage folder: what it found without a row, and did.

    Rows are only added, so the sums are counters (exported by ``/metrics``).
    """

    __tablename__ = "storage_reconciliations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: Complete instances whose row was lost after the rename: recorded as ingest would.
    recorded: Mapped[int] = mapped_column(Integer, default=0)
    #: Complete copies of an instance whose row points at another file: moved to conflicts/.
    kept_aside: Mapped[int] = mapped_column(Integer, default=0)
    #: Temporary files of interrupted writes: removed.
    removed_temporary: Mapped[int] = mapped_column(Integer, default=0)
    #: Files in instances/ that are not a complete instance as we write them: removed.
    removed_partial: Mapped[int] = mapped_column(Integer, default=0)
