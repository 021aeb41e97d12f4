"""The study pipeline a job runs: classify the study's instances, analyse, publish results.

A study's job runs every step; an image job (one instance, queued as it arrived, see
:mod:`dicom_node.grouping`) runs only the image steps (classify and analyse that instance), so
its prediction is ready, cached in the database, when the study completes.

Each step is a callable ``(ClaimedJob) -> None`` that reads and writes the database, so the
steps share nothing in memory and any executor can run them. The model and results steps are
added by :func:`gateway.service.build_pipeline` when those parts are configured.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import reading, writing
from db.jobs import ClaimedJob, JobHeldError, PermanentJobError, ensure_held
from db.models import Eligibility, Instance, Study
from dicom_node.conformance import RADIOGRAPH_SOP_CLASSES
from dicom_node.storage import InstanceStore
from inference.decode import check_elements
from inference.errors import NotAnalysable
from inference.model_package import ModelCard
from inference.pixels import check_analysable, to_model_input
from inference.preprocess import PreparedImage
from inference.scope import check_in_scope

log = logging.getLogger(__name__)

PipelineStep = Callable[[ClaimedJob], None]


def classify_instance(store: InstanceStore, instance: Instance) -> tuple[Eligibility, str | None]:
    """Decide whether one stored instance can be analysed, with the reason when it cannot.

    Reads the stored file's header and checks it with the pixel pipeline's own guard, so an
    instance is eligible exactly when the model path will accept it.
    """
    if instance.sop_class_uid not in RADIOGRAPH_SOP_CLASSES:
        return Eligibility.OUT_OF_SCOPE, "not a CR or DX radiograph storage SOP class"
    try:
        ds = dcmread(store.absolute(instance.storage_path), defer_size="1 MB")
        check_analysable(ds)
    except NotAnalysable as exc:
        return Eligibility.OUT_OF_SCOPE, f"{exc.reason}: {exc.message}"[:256]
    except (InvalidDicomError, ValueError, EOFError) as exc:
        return Eligibility.OUT_OF_SCOPE, f"unreadable: {type(exc).__name__}"
    except struct.error:  # pydicom: the data set ends inside an element's header
        return Eligibility.OUT_OF_SCOPE, "unreadable: the data set ends inside an element"
    except OSError as exc:
        if exc.errno is not None:
            raise  # the storage failed, not the file: the job is retried
        # pydicom: a sequence item that the data set ends inside (an OSError without errno)
        return Eligibility.OUT_OF_SCOPE, "unreadable: the data set ends inside an element"
    return Eligibility.ELIGIBLE, None


def prepare_instance(path: Path, card: ModelCard) -> PreparedImage:
    """Read an eligible stored instance and turn it into the model's input, or refuse it.

    The whole file is read (pixels included), checked against the model's scope and converted
    as the card says. Nothing else may escape: the analysis step records a refusal for this
    image and goes on with the study's others, whereas any other exception fails the job.

    Raises
    ------
    NotAnalysable
        From :func:`inference.decode.check_elements`, :func:`inference.scope.check_in_scope`
        or :func:`inference.pixels.to_model_input`.
    """
    ds = dcmread(path)
    check_elements(ds)  # the scope check below reads elements too
    check_in_scope(ds, card.body_parts)
    return to_model_input(ds, card.input_size, crop=card.preprocessing.crop)


def hold_if_identity_conflict(session: Session, study_id: int, *, lock: bool = False) -> Study:
    """The job's study; :class:`JobHeldError` while its patient identity is in conflict.

    With ``lock`` the study row is locked (``FOR UPDATE``; SQLite's write lock), which
    serialises the check with ingest (it locks the study before recording an instance): a
    conflict either commits before the check and holds the job, or after the caller's commit,
    and then the outbox holds the deliveries.
    """
    study = session.get(Study, study_id, with_for_update=True if lock else None)
    if study is None:
        raise PermanentJobError(f"study {study_id} no longer exists")
    if study.identity_conflict:
        raise JobHeldError(f"study {study_id} has an unresolved patient identity conflict")
    return study


@dataclass(frozen=True)
class ClassifyStep:
    """Classify each not-yet-classified instance of the job's study (of an image job: its one
    instance) as eligible or out of scope."""

    sessions: sessionmaker[Session]
    store: InstanceStore

    def __call__(self, job: ClaimedJob) -> None:
        # Files are read between two transactions: the read one lists, the short write one
        # records, and only for instances still pending (ingest may have changed one meanwhile).
        with reading(self.sessions) as session:
            hold_if_identity_conflict(session, job.study_id)
            only = () if job.instance_id is None else (Instance.id == job.instance_id,)
            pending = session.scalars(
                select(Instance).where(
                    Instance.study_id == job.study_id,
                    Instance.eligibility == Eligibility.PENDING,
                    *only,
                )
            ).all()
        decided = {instance.id: classify_instance(self.store, instance) for instance in pending}
        if not decided:
            return
        with writing(self.sessions) as session:
            ensure_held(session, job)
            hold_if_identity_conflict(session, job.study_id)
            for instance in session.scalars(
                select(Instance).where(
                    Instance.id.in_(decided), Instance.eligibility == Eligibility.PENDING
                )
            ):
                instance.eligibility, instance.eligibility_reason = decided[instance.id]
                if instance.eligibility is Eligibility.OUT_OF_SCOPE:
                    log.info(
                        "instance %d out of scope: %s", instance.id, instance.eligibility_reason
                    )


@dataclass(frozen=True)
class StudyPipeline:
    """Runs the steps in order; a step's exception fails the attempt (retried by the executor).

    A study's job runs ``steps``; an image job (``instance_id`` set) runs ``image_steps``.
    """

    steps: Sequence[PipelineStep]
    image_steps: Sequence[PipelineStep] = ()

    def __call__(self, job: ClaimedJob) -> None:
        for step in self.image_steps if job.instance_id is not None else self.steps:
            step(job)
