"""The pipeline's results step: build the SR, heat-map SCs and presentation states, store them,
queue their delivery.

Runs after :class:`pipeline.analysis.AnalyseStep`, from the predictions that step recorded for
the job. Result UIDs are derived from the study, the model and the sources
(:mod:`reporting.uids`), so the step is idempotent: a retried job, or a re-analysis of the same
study by the same model, finds its objects already recorded and queues nothing twice. Objects
are written to ``<storage>/results/`` durably (temporary file, fsync, atomic rename) before they
are recorded, and recorded before they are queued, so the outbox never points at a missing file.

A study reopened by late images gets a new SR (its set of sources changed, so its UID did):
that SR lists every earlier SR of the study in its Predecessor Documents Sequence (PS3.3
C.17.2.3), so the PACS holds one current report and the ones it replaces; the worklist shows
the latest study prediction only.

Each destination receives the kinds of object it is configured for (``objects``: ``sr``, ``sc``,
``gsps``; by default the SR and the SCs). The SR and SCs are always made; a Grayscale Softcopy
Presentation State is made for each image with suspected fracture regions when at least one
destination receives presentation states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DEFAULT_RESULT_OBJECTS, RoutingRule, Settings
from db.engine import reading, writing
from db.jobs import ClaimedJob, PermanentJobError, ensure_held
from db.models import ImagePrediction, Instance, Study, StudyPrediction
from db.results import OutboxEntry, ResultObject, ResultObjectKind
from dicom_node.routing import StudyOutcome, choose_destinations
from dicom_node.storage import InstanceStore, safe_name
from inference.model_package import ModelCard, OperatingPointName
from inference.pixels import display_grey
from inference.regions import Region
from pipeline.heatmaps import heatmap_on_original_grid
from pipeline.study import hold_if_identity_conflict
from reporting import uids
from reporting.findings import (
    AlgorithmInfo,
    FindingRegion,
    ImageFinding,
    OperatingPoint,
    StudyFindings,
)
from reporting.gsps import build_gsps
from reporting.sc import build_gradcam_sc
from reporting.sr import build_sr

log = logging.getLogger(__name__)

RESULTS_FOLDER = "results"

#: What a destination receives when the step is not told otherwise.
DEFAULT_OBJECTS = frozenset(ResultObjectKind(name) for name in DEFAULT_RESULT_OBJECTS)


@dataclass(frozen=True, slots=True)
class _Analysed:
    """One analysed image of the job, as recorded by the analysis step."""

    instance: Instance
    prediction: ImagePrediction


@dataclass(frozen=True, slots=True)
class PlannedObject:
    """A result object the step makes, or finds already made: its identity."""

    kind: ResultObjectKind
    sop_instance_uid: str
    series_instance_uid: str
    source_instance_id: int | None


def algorithm_info(model_name: str, model_version: str, card: ModelCard | None) -> AlgorithmInfo:
    """TID 4019 identification of the model that made the predictions."""
    parameters: dict[str, str] = {}
    if card is not None and (card.name, card.version) == (model_name, model_version):
        parameters = {"input_size": str(card.input_size), "calibration": "platt"}
    return AlgorithmInfo(name=model_name, version=model_version, parameters=parameters)


def operating_point(prediction: StudyPrediction, card: ModelCard | None) -> OperatingPoint:
    """The operating point the study was called at, with its validation metrics when known."""
    sensitivity = specificity = None
    if card is not None and (card.name, card.version) == (
        prediction.model_name,
        prediction.model_version,
    ):
        point = card.operating_points.get(OperatingPointName(prediction.operating_point))
        if point is not None:
            sensitivity, specificity = point.sensitivity, point.specificity
    return OperatingPoint(
        name=prediction.operating_point,
        threshold=prediction.threshold,
        sensitivity=sensitivity,
        specificity=specificity,
    )


def image_positive(prediction: ImagePrediction, point_name: str) -> bool:
    """The image's call at the study's operating point."""
    if point_name == OperatingPointName.HIGH_SPECIFICITY:
        return prediction.positive_high_specificity
    return prediction.positive_high_sensitivity


def finding_regions(prediction: ImagePrediction, source: Dataset) -> tuple[FindingRegion, ...]:
    """The prediction's stored regions for reporting, clipped to the source's pixel grid."""
    rows, columns = int(source.Rows), int(source.Columns)
    regions = []
    for data in prediction.regions or []:
        region = Region.from_json(data)
        x0, x1 = min(max(region.x0, 0.0), columns), min(max(region.x1, 0.0), columns)
        y0, y1 = min(max(region.y0, 0.0), rows), min(max(region.y1, 0.0), rows)
        if x1 <= x0 or y1 <= y0:
            continue
        regions.append(
            FindingRegion(
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                probability=min(1.0, max(0.0, region.probability)),
                operating_points=region.operating_points,
            )
        )
    return tuple(regions)


def predecessor(study_uid: str, series_uid: str, sop_class_uid: str, sop_uid: str) -> Dataset:
    """What the Predecessor Documents Sequence needs of an earlier SR (no file is read)."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    return ds


def encode_file(dataset: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, File Meta Information, data set; PS3.10 7.1)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def result_path(store: InstanceStore, study_uid: str, sop_instance_uid: str) -> Path:
    """Where a result object is kept: ``<storage>/results/<study>/<sop>.dcm``."""
    return store.root / RESULTS_FOLDER / safe_name(study_uid) / f"{safe_name(sop_instance_uid)}.dcm"


def write_result(store: InstanceStore, study_uid: str, sop_instance_uid: str, data: bytes) -> str:
    """Write a result file durably; return its path relative to the storage root."""
    return store.write_file(result_path(store, study_uid, sop_instance_uid), data)


@dataclass(frozen=True)
class PublishStep:
    """Make, store and queue the result objects of a job's analysis."""

    sessions: sessionmaker[Session]
    store: InstanceStore
    destinations: tuple[str, ...]
    routing: tuple[RoutingRule, ...] = ()
    card: ModelCard | None = None
    uid_root: str | None = None
    #: Called after new deliveries were queued (wakes the outbox worker).
    on_queued: Callable[[], None] | None = None
    #: The kinds of object each destination receives; :data:`DEFAULT_OBJECTS` for one not named.
    objects: Mapping[str, frozenset[ResultObjectKind]] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        *,
        card: ModelCard | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> PublishStep:
        """The step for these settings' destinations and routing rules."""
        return cls(
            sessions,
            store,
            tuple(d.name for d in settings.destinations),
            tuple(settings.routing),
            card,
            on_queued=on_queued,
            objects={
                d.name: frozenset(ResultObjectKind(name) for name in d.objects)
                for d in settings.destinations
            },
        )

    def objects_for(self, destination: str) -> frozenset[ResultObjectKind]:
        """The kinds of result object ``destination`` receives."""
        return self.objects.get(destination, DEFAULT_OBJECTS)

    @property
    def makes_presentation_states(self) -> bool:
        """Whether any destination receives presentation states, so they are made at all."""
        return any(ResultObjectKind.GSPS in self.objects_for(name) for name in self.destinations)

    def __call__(self, job: ClaimedJob) -> None:
        with reading(self.sessions) as session:
            study = session.get(Study, job.study_id)
            if study is None:
                raise PermanentJobError(f"study {job.study_id} no longer exists")
            prediction = session.scalars(
                select(StudyPrediction)
                .where(StudyPrediction.job_id == job.id)
                .order_by(StudyPrediction.id.desc())
                .limit(1)
            ).first()
            if prediction is None or prediction.probability is None or prediction.n_images == 0:
                log.info("job %d: no analysed images, no result objects", job.id)
                return
            analysed = [
                _Analysed(instance, image)
                for image, instance in session.execute(
                    select(ImagePrediction, Instance)
                    .join(Instance, ImagePrediction.instance_id == Instance.id)
                    .where(
                        ImagePrediction.job_id == job.id,
                        ImagePrediction.model_name == prediction.model_name,
                        ImagePrediction.model_version == prediction.model_version,
                    )
                    .order_by(Instance.series_id, Instance.instance_number, Instance.id)
                ).all()
            ]
            earlier = session.execute(
                select(
                    ResultObject.sop_class_uid,
                    ResultObject.sop_instance_uid,
                    ResultObject.series_instance_uid,
                )
                .where(
                    ResultObject.study_id == job.study_id,
                    ResultObject.kind == ResultObjectKind.SR,
                    ResultObject.job_id != job.id,
                )
                .order_by(ResultObject.id)
            ).all()
        if not analysed:
            raise PermanentJobError(f"job {job.id} has a study prediction but no image predictions")
        planned = self._plan(study.study_instance_uid, prediction, analysed)
        (sr_uid,) = (p.sop_instance_uid for p in planned if p.kind is ResultObjectKind.SR)
        predecessors = [
            predecessor(study.study_instance_uid, series_uid, sop_class, sop_uid)
            for sop_class, sop_uid, series_uid in earlier
            if sop_uid != sr_uid
        ]
        missing = self._missing(planned)
        if missing:
            self._build_and_store(
                study.study_instance_uid, prediction, analysed, planned, missing, predecessors
            )
        queued = self._record_and_queue(job, study.study_instance_uid, prediction, planned)
        log.info(
            "job %d: %d result objects (%d new), %d deliveries queued",
            job.id,
            len(planned),
            len(missing),
            queued,
        )
        if queued and self.on_queued is not None:
            self.on_queued()

    # Steps ------------------------------------------------------------------------------------
    def _plan(
        self, study_uid: str, prediction: StudyPrediction, analysed: Sequence[_Analysed]
    ) -> list[PlannedObject]:
        """The objects this analysis yields, SCs first (the SR references them), then the SR,
        then a presentation state per image with regions if any destination receives them."""
        name, version, root = prediction.model_name, prediction.model_version, self.uid_root
        sc_series = uids.sc_series_uid(study_uid, name, version, root=root)
        planned = [
            PlannedObject(
                ResultObjectKind.SC,
                uids.sc_instance_uid(
                    study_uid, name, version, item.instance.sop_instance_uid, root=root
                ),
                sc_series,
                item.instance.id,
            )
            for item in analysed
        ]
        sources = [item.instance.sop_instance_uid for item in analysed]
        planned.append(
            PlannedObject(
                ResultObjectKind.SR,
                uids.sr_instance_uid(study_uid, name, version, sources, root=root),
                uids.sr_series_uid(study_uid, name, version, root=root),
                None,
            )
        )
        if self.makes_presentation_states:
            gsps_series = uids.gsps_series_uid(study_uid, name, version, root=root)
            planned.extend(
                PlannedObject(
                    ResultObjectKind.GSPS,
                    uids.gsps_instance_uid(
                        study_uid, name, version, item.instance.sop_instance_uid, root=root
                    ),
                    gsps_series,
                    item.instance.id,
                )
                for item in analysed
                if item.prediction.regions
            )
        return planned

    def _missing(self, planned: Sequence[PlannedObject]) -> set[str]:
        """SOP Instance UIDs of planned objects not yet recorded, or whose file is gone."""
        wanted = {p.sop_instance_uid for p in planned}
        with reading(self.sessions) as session:
            recorded = session.execute(
                select(ResultObject.sop_instance_uid, ResultObject.storage_path).where(
                    ResultObject.sop_instance_uid.in_(wanted)
                )
            ).all()
        present = {uid for uid, path in recorded if self.store.absolute(path).is_file()}
        return wanted - present

    def _findings(
        self, prediction: StudyPrediction, analysed: Sequence[_Analysed]
    ) -> StudyFindings:
        images = []
        for item in analysed:
            source = dcmread(self.store.absolute(item.instance.storage_path))
            if item.prediction.heatmap_path is None:
                raise PermanentJobError(f"image prediction {item.prediction.id} has no heat map")
            images.append(
                ImageFinding(
                    source=source,
                    probability=float(item.prediction.probability),
                    positive=image_positive(item.prediction, prediction.operating_point),
                    heatmap=heatmap_on_original_grid(self.store, item.prediction.heatmap_path),
                    display=display_grey(source),
                    regions=finding_regions(item.prediction, source),
                )
            )
        if prediction.probability is None:
            raise PermanentJobError(f"study prediction {prediction.id} has no probability")
        return StudyFindings(
            images=images,
            study_probability=float(prediction.probability),
            study_positive=bool(prediction.positive),
            operating_point=operating_point(prediction, self.card),
            algorithm=algorithm_info(prediction.model_name, prediction.model_version, self.card),
        )

    def _build_and_store(
        self,
        study_uid: str,
        prediction: StudyPrediction,
        analysed: Sequence[_Analysed],
        planned: Sequence[PlannedObject],
        missing: set[str],
        predecessors: Sequence[Dataset] = (),
    ) -> None:
        """Build every object (deterministic, so rebuilt ones equal the stored ones); write the
        missing ones. The SR lists ``predecessors``, the earlier SRs it replaces."""
        findings = self._findings(prediction, analysed)
        sc_plans = [p for p in planned if p.kind is ResultObjectKind.SC]
        (sr_plan,) = (p for p in planned if p.kind is ResultObjectKind.SR)
        datasets: dict[str, Dataset] = {}
        for number, (finding, plan) in enumerate(
            zip(findings.images, sc_plans, strict=True), start=1
        ):
            datasets[plan.sop_instance_uid] = build_gradcam_sc(
                finding,
                findings,
                series_instance_uid=plan.series_instance_uid,
                sop_instance_uid=plan.sop_instance_uid,
                instance_number=number,
            )
        if sr_plan.sop_instance_uid in missing:
            datasets[sr_plan.sop_instance_uid] = build_sr(
                findings,
                sc_datasets=[datasets[p.sop_instance_uid] for p in sc_plans],
                series_instance_uid=sr_plan.series_instance_uid,
                sop_instance_uid=sr_plan.sop_instance_uid,
                predecessors=predecessors,
            )
        by_instance = {
            item.instance.id: finding
            for item, finding in zip(analysed, findings.images, strict=True)
        }
        gsps_plans = [p for p in planned if p.kind is ResultObjectKind.GSPS]
        for number, plan in enumerate(gsps_plans, start=1):
            if plan.sop_instance_uid in missing and plan.source_instance_id is not None:
                datasets[plan.sop_instance_uid] = build_gsps(
                    by_instance[plan.source_instance_id],
                    findings,
                    series_instance_uid=plan.series_instance_uid,
                    sop_instance_uid=plan.sop_instance_uid,
                    instance_number=number,
                )
        for plan in planned:
            if plan.sop_instance_uid in missing:
                data = encode_file(datasets[plan.sop_instance_uid])
                write_result(self.store, study_uid, plan.sop_instance_uid, data)

    def _record_and_queue(
        self,
        job: ClaimedJob,
        study_uid: str,
        prediction: StudyPrediction,
        planned: Sequence[PlannedObject],
    ) -> int:
        """Record new objects and queue each for the routed destinations; returns rows queued."""
        outcome = StudyOutcome(
            positive=bool(prediction.positive),
            high_specificity_positive=bool(prediction.positive_high_specificity),
        )
        targets = choose_destinations(self.destinations, self.routing, outcome)
        queued = 0
        with writing(self.sessions) as session:
            # Nothing is recorded or queued for a study whose patient identity is in conflict,
            # nor by a worker whose lease lapsed (the job's row is locked after the study's).
            hold_if_identity_conflict(session, job.study_id, lock=True)
            ensure_held(session, job)
            existing = {
                obj.sop_instance_uid: obj
                for obj in session.scalars(
                    select(ResultObject).where(
                        ResultObject.sop_instance_uid.in_([p.sop_instance_uid for p in planned])
                    )
                )
            }
            for plan in planned:
                obj = existing.get(plan.sop_instance_uid)
                if obj is None:
                    obj = ResultObject(
                        job_id=job.id,
                        study_id=job.study_id,
                        kind=plan.kind,
                        sop_class_uid=str(SOP_CLASSES[plan.kind]),
                        sop_instance_uid=plan.sop_instance_uid,
                        series_instance_uid=plan.series_instance_uid,
                        source_instance_id=plan.source_instance_id,
                        model_name=prediction.model_name,
                        model_version=prediction.model_version,
                        storage_path=str(
                            result_path(self.store, study_uid, plan.sop_instance_uid).relative_to(
                                self.store.root
                            )
                        ),
                    )
                    session.add(obj)
                    session.flush()
                routed = set(
                    session.scalars(
                        select(OutboxEntry.destination).where(
                            OutboxEntry.result_object_id == obj.id
                        )
                    )
                )
                for name in targets:
                    if name not in routed and plan.kind in self.objects_for(name):
                        session.add(OutboxEntry(result_object_id=obj.id, destination=name))
                        queued += 1
        return queued


#: SOP classes of the objects this step makes (PS3.4 B.5).
SOP_CLASSES = {
    ResultObjectKind.SC: SecondaryCaptureImageStorage,
    ResultObjectKind.SR: Comprehensive3DSRStorage,
    ResultObjectKind.GSPS: GrayscaleSoftcopyPresentationStateStorage,
}
