"""The pipeline's model step: predict every eligible image of a study, store the results.

Per image: calibrated probability, the label at both operating points, the Grad-CAM map (saved
with its transform, see :mod:`pipeline.heatmaps`) and its peak on the original image. Per study:
the maximum over eligible images. Rows carry the model's name and version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from db.engine import reading, writing
from db.jobs import ClaimedJob, ensure_held
from db.models import Eligibility, Instance
from db.models import ImagePrediction as ImagePredictionRow
from db.models import StudyPrediction as StudyPredictionRow
from dicom_node.storage import InstanceStore
from inference.errors import NotAnalysable
from inference.model_package import ModelCard, OperatingPointName, load_package
from inference.predictor import Predictor, StudyPrediction
from inference.preprocess import PreparedImage
from pipeline.heatmaps import save_heatmap
from pipeline.study import prepare_instance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyseStep:
    """Run the model on a study's eligible images and record the predictions of this job."""

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
        with reading(self.sessions) as session:
            instances = session.scalars(
                select(Instance)
                .where(
                    Instance.study_id == job.study_id,
                    Instance.eligibility == Eligibility.ELIGIBLE,
                )
                .order_by(Instance.series_id, Instance.instance_number, Instance.id)
            ).all()
        prepared: list[tuple[Instance, PreparedImage]] = []
        refused: dict[int, str] = {}
        for instance in instances:
            try:
                image = prepare_instance(self.store.absolute(instance.storage_path), self.card)
            except NotAnalysable as exc:
                refused[instance.id] = f"{exc.reason}: {exc.message}"[:256]
                continue
            prepared.append((instance, image))

        started = time.perf_counter()
        predictions = self.predictor.predict([p for _, p in prepared], batch_size=self.batch_size)
        per_image_ms = 1000 * (time.perf_counter() - started) / max(1, len(prepared))
        heatmaps = [
            save_heatmap(self.store, job.id, instance.id, pred.heatmap, pred.transform)
            for (instance, _), pred in zip(prepared, predictions, strict=True)
        ]
        study = StudyPrediction.from_images(predictions, self.card, None) if predictions else None
        threshold = self.card.operating_point(self.operating_point).threshold

        with writing(self.sessions) as session:
            # Only while the job is still ours: a worker whose lease lapsed writes nothing.
            ensure_held(session, job)
            # A retried attempt replaces what an interrupted one may have written.
            session.execute(delete(ImagePredictionRow).where(ImagePredictionRow.job_id == job.id))
            session.execute(delete(StudyPredictionRow).where(StudyPredictionRow.job_id == job.id))
            for instance_id, reason in refused.items():
                row = session.get(Instance, instance_id)
                if row is not None:
                    row.eligibility = Eligibility.OUT_OF_SCOPE
                    row.eligibility_reason = reason
            for (instance, _), pred, heatmap_path in zip(
                prepared, predictions, heatmaps, strict=True
            ):
                peak_x, peak_y = pred.peak_on_original()
                session.add(
                    ImagePredictionRow(
                        job_id=job.id,
                        instance_id=instance.id,
                        model_name=self.card.name,
                        model_version=self.card.version,
                        probability=pred.probability,
                        positive_high_sensitivity=pred.labels[OperatingPointName.HIGH_SENSITIVITY],
                        positive_high_specificity=pred.labels[OperatingPointName.HIGH_SPECIFICITY],
                        heatmap_path=heatmap_path,
                        peak_x=peak_x,
                        peak_y=peak_y,
                        inference_ms=per_image_ms,
                        regions=(
                            [region.to_json() for region in pred.regions]
                            if self.predictor.localising
                            else None
                        ),
                    )
                )
            session.add(
                StudyPredictionRow(
                    job_id=job.id,
                    study_id=job.study_id,
                    model_name=self.card.name,
                    model_version=self.card.version,
                    probability=None if study is None else study.probability,
                    positive=None if study is None else study.labels[self.operating_point],
                    operating_point=self.operating_point.value,
                    threshold=threshold,
                    positive_high_specificity=(
                        None if study is None else study.labels[OperatingPointName.HIGH_SPECIFICITY]
                    ),
                    n_images=len(prepared),
                )
            )
        log.info(
            "job %d: %d images analysed, %d refused, study probability %s",
            job.id,
            len(prepared),
            len(refused),
            "n/a" if study is None else f"{study.probability:.3f}",
        )
