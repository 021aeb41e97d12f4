"""The pipeline's model step: predict a study's eligible images, or one arrived image, and store
the results.

Per image: calibrated probability, the label at both operating points, the Grad-CAM map (saved
with its transform, see :mod:`pipeline.heatmaps`) and its peak on the original image. Per study:
the maximum over eligible images. Rows carry the model's name and version, and the image rows
the digest of the bytes they were computed from.

An image job (``JobKind.IMAGE``, queued when the instance arrived) records its image's row
under its own job; the study job then reuses it (a copy under the study job, same heat map)
when the model and the instance's bytes are the same, and runs the model only for the images
without one. So when a study completes, what is left is the study-level result and the result
objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from db.engine import reading, writing
from db.jobs import ClaimedJob, ensure_held
from db.models import Eligibility, Instance, Job, JobKind
from db.models import ImagePrediction as ImagePredictionRow
from db.models import StudyPrediction as StudyPredictionRow
from dicom_node.storage import InstanceStore
from inference.errors import NotAnalysable
from inference.model_package import ModelCard, OperatingPointName, load_package
from inference.predictor import ImagePrediction, Predictor
from inference.preprocess import PreparedImage
from pipeline.heatmaps import save_heatmap
from pipeline.study import prepare_instance

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Fresh:
    """An image the model ran on in this job."""

    instance: Instance
    prediction: ImagePrediction
    heatmap_path: str
    inference_ms: float


@dataclass(frozen=True)
class AnalyseStep:
    """Run the model on a study's eligible images (or a job's one image) and record the results."""

    sessions: sessionmaker[Session]
    store: InstanceStore
    predictor: Predictor
    operating_point: OperatingPointName
    batch_size: int = 8

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], store: InstanceStore
    ) -> AnalyseStep:
        """Load and validate the model package once; the gradient model is built here too."""
        package = load_package(settings.inference.model_path)
        log.info("model %s %s loaded", package.card.name, package.card.version)
        return cls(
            sessions,
            store,
            Predictor(package),
            OperatingPointName(settings.inference.operating_point),
            settings.inference.batch_size,
        )

    @property
    def card(self) -> ModelCard:
        return self.predictor.card

    def __call__(self, job: ClaimedJob) -> None:
        if job.instance_id is not None:
            self._analyse_image(job, job.instance_id)
        else:
            self._analyse_study(job)

    # One arrived image -------------------------------------------------------------------------
    def _analyse_image(self, job: ClaimedJob, instance_id: int) -> None:
        with reading(self.sessions) as session:
            instance = session.get(Instance, instance_id)
            if instance is None or instance.eligibility is not Eligibility.ELIGIBLE:
                return  # gone, out of scope or in conflict: nothing to predict
        fresh, refused = self._predict([instance], job.id)
        with writing(self.sessions) as session:
            ensure_held(session, job)
            session.execute(delete(ImagePredictionRow).where(ImagePredictionRow.job_id == job.id))
            self._record_refusals(session, refused)
            for item in fresh:
                session.add(self._row(job.id, item))
        if fresh:
            log.info("job %d: image analysed on arrival", job.id)

    # A complete study --------------------------------------------------------------------------
    def _analyse_study(self, job: ClaimedJob) -> None:
        with reading(self.sessions) as session:
            instances = session.scalars(
                select(Instance)
                .where(
                    Instance.study_id == job.study_id,
                    Instance.eligibility == Eligibility.ELIGIBLE,
                )
                .order_by(Instance.series_id, Instance.instance_number, Instance.id)
            ).all()
            cached = self._cached(session, instances)
        fresh, refused = self._predict([i for i in instances if i.id not in cached], job.id)
        probabilities = [row.probability for row in cached.values()]
        probabilities += [item.prediction.probability for item in fresh]
        study_probability = max(probabilities) if probabilities else None
        labels = self._labels(study_probability)
        threshold = self.card.operating_point(self.operating_point).threshold

        with writing(self.sessions) as session:
            # Only while the job is still ours: a worker whose lease lapsed writes nothing.
            ensure_held(session, job)
            # A retried attempt replaces what an interrupted one may have written.
            session.execute(delete(ImagePredictionRow).where(ImagePredictionRow.job_id == job.id))
            session.execute(delete(StudyPredictionRow).where(StudyPredictionRow.job_id == job.id))
            self._record_refusals(session, refused)
            for row in cached.values():
                session.add(_copy(row, job.id))
            for item in fresh:
                session.add(self._row(job.id, item))
            session.add(
                StudyPredictionRow(
                    job_id=job.id,
                    study_id=job.study_id,
                    model_name=self.card.name,
                    model_version=self.card.version,
                    probability=study_probability,
                    positive=None if labels is None else labels[self.operating_point],
                    operating_point=self.operating_point.value,
                    threshold=threshold,
                    positive_high_specificity=(
                        None if labels is None else labels[OperatingPointName.HIGH_SPECIFICITY]
                    ),
                    n_images=len(probabilities),
                )
            )
        log.info(
            "job %d: %d images analysed (%d on arrival), %d refused, study probability %s",
            job.id,
            len(probabilities),
            len(cached),
            len(refused),
            "n/a" if study_probability is None else f"{study_probability:.3f}",
        )

    def _cached(
        self, session: Session, instances: Sequence[Instance]
    ) -> dict[int, ImagePredictionRow]:
        """The latest image-job prediction of each instance, by this model, of its current bytes."""
        digests = {instance.id: instance.sha256 for instance in instances}
        if not digests:
            return {}
        rows = session.scalars(
            select(ImagePredictionRow)
            .join(Job, Job.id == ImagePredictionRow.job_id)
            .where(
                Job.kind == JobKind.IMAGE.value,
                ImagePredictionRow.instance_id.in_(digests),
                ImagePredictionRow.model_name == self.card.name,
                ImagePredictionRow.model_version == self.card.version,
            )
            .order_by(ImagePredictionRow.id)
        ).all()
        return {
            row.instance_id: row
            for row in rows
            if row.instance_sha256 is not None
            and row.instance_sha256 == digests[row.instance_id]
            and row.heatmap_path is not None
            and self.store.absolute(row.heatmap_path).is_file()
        }

    # Shared ------------------------------------------------------------------------------------
    def _predict(
        self, instances: Sequence[Instance], job_id: int
    ) -> tuple[list[_Fresh], dict[int, str]]:
        """Prepare, predict and save the heat maps of ``instances``; refusals by instance id."""
        prepared: list[tuple[Instance, PreparedImage]] = []
        refused: dict[int, str] = {}
        for instance in instances:
            try:
                image = prepare_instance(self.store.absolute(instance.storage_path), self.card)
            except NotAnalysable as exc:
                refused[instance.id] = f"{exc.reason}: {exc.message}"[:256]
                continue
            prepared.append((instance, image))
        if not prepared:
            return [], refused
        started = time.perf_counter()
        predictions = self.predictor.predict([p for _, p in prepared], batch_size=self.batch_size)
        per_image_ms = 1000 * (time.perf_counter() - started) / len(prepared)
        return [
            _Fresh(
                instance,
                pred,
                save_heatmap(self.store, job_id, instance.id, pred.heatmap, pred.transform),
                per_image_ms,
            )
            for (instance, _), pred in zip(prepared, predictions, strict=True)
        ], refused

    def _labels(self, probability: float | None) -> dict[OperatingPointName, bool] | None:
        """The study's label at each operating point (its probability is the images' maximum)."""
        if probability is None:
            return None
        return {
            name: bool(probability >= point.threshold)
            for name, point in self.card.operating_points.items()
        }

    @staticmethod
    def _record_refusals(session: Session, refused: dict[int, str]) -> None:
        for instance_id, reason in refused.items():
            row = session.get(Instance, instance_id)
            if row is not None:
                row.eligibility = Eligibility.OUT_OF_SCOPE
                row.eligibility_reason = reason

    def _row(self, job_id: int, item: _Fresh) -> ImagePredictionRow:
        pred = item.prediction
        peak_x, peak_y = pred.peak_on_original()
        return ImagePredictionRow(
            job_id=job_id,
            instance_id=item.instance.id,
            instance_sha256=item.instance.sha256,
            model_name=self.card.name,
            model_version=self.card.version,
            probability=pred.probability,
            positive_high_sensitivity=pred.labels[OperatingPointName.HIGH_SENSITIVITY],
            positive_high_specificity=pred.labels[OperatingPointName.HIGH_SPECIFICITY],
            heatmap_path=item.heatmap_path,
            peak_x=peak_x,
            peak_y=peak_y,
            inference_ms=item.inference_ms,
            regions=(
                [region.to_json() for region in pred.regions] if self.predictor.localising else None
            ),
        )


def _copy(row: ImagePredictionRow, job_id: int) -> ImagePredictionRow:
    """An image job's prediction, recorded again under the study job (the heat map is shared)."""
    return ImagePredictionRow(
        job_id=job_id,
        instance_id=row.instance_id,
        instance_sha256=row.instance_sha256,
        model_name=row.model_name,
        model_version=row.model_version,
        probability=row.probability,
        positive_high_sensitivity=row.positive_high_sensitivity,
        positive_high_specificity=row.positive_high_specificity,
        heatmap_path=row.heatmap_path,
        peak_x=row.peak_x,
        peak_y=row.peak_y,
        inference_ms=row.inference_ms,
        regions=row.regions,
    )
