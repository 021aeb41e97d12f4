"""The publish step: SR and heat-map SCs built from recorded predictions, stored, queued once."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import get_args

import numpy as np
import pydicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update

from config.settings import Destination, OutboxSettings, ResultObjectName, RoutingRule, Settings
from db import jobs
from db.base import utcnow
from db.jobs import ClaimedJob, LeaseLostError
from db.models import (
    Eligibility,
    ImagePrediction,
    Instance,
    Job,
    Series,
    Study,
    StudyPrediction,
)
from db.results import OutboxEntry, OutboxState, ResultObject, ResultObjectKind
from dicom_node.outbox import OutboxWorker, list_outbox
from inference.pixels import display_grey
from inference.preprocess import prepare
from inference.regions import Region
from pipeline.heatmaps import save_heatmap
from pipeline.publish import SOP_CLASSES, PublishStep
from reporting import uids
from tests.helpers.dcmtk import StoreSCPFactory, storescp_factory
from tests.helpers.orthanc import Orthanc, orthanc
from tests.helpers.results_db import ResultsDb, open_results_db

__all__ = ["orthanc", "storescp_factory"]

DX_MONOCHROME1 = "highdicom/data/test_files/dx_image.dcm"
NON_ASCII_NAME = "Müller^Jürgen"
MODEL = ("fracture-test", "1.0.0")


@pytest.fixture(autouse=True)
def _raise_on_invalid_values() -> Iterator[None]:
    """Every value written while building results must be valid (pydicom RAISE)."""
    settings = pydicom.config.settings
    before = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.RAISE
    yield
    settings.writing_validation_mode = before


@dataclass
class AnalysedStudy:
    db: ResultsDb
    study_id: int
    study_uid: str
    instances: list[Instance]
    sources: list[Dataset]


def two_image_study(shared_dir: Path) -> list[Dataset]:
    """A real DX image and a second image of the same study, for a patient with a UTF-8 name."""
    first = dcmread(shared_dir / "dicom" / DX_MONOCHROME1)
    first.SpecificCharacterSet = "ISO_IR 192"
    first.PatientName = NON_ASCII_NAME
    second = copy.deepcopy(first)
    second.SeriesInstanceUID = generate_uid(entropy_srcs=[str(first.SOPInstanceUID), "series"])
    second.SOPInstanceUID = generate_uid(entropy_srcs=[str(first.SOPInstanceUID), "instance"])
    second.InstanceNumber = 2
    return [first, second]


def ingest(db: ResultsDb, sources: list[Dataset]) -> AnalysedStudy:
    """Store the sources and record them as received, as the SCP would."""
    study_uid = str(sources[0].StudyInstanceUID)
    instances = []
    with db.sessions() as session, session.begin():
        study = Study(study_instance_uid=study_uid)
        session.add(study)
        session.flush()
        for source in sources:
            series = session.scalars(
                select(Series).where(Series.series_instance_uid == source.SeriesInstanceUID)
            ).first()
            if series is None:
                series = Series(study_id=study.id, series_instance_uid=source.SeriesInstanceUID)
                session.add(series)
                session.flush()
            path = db.store.path_for(study_uid, str(source.SOPInstanceUID))
            path.parent.mkdir(parents=True, exist_ok=True)
            source.save_as(path, enforce_file_format=True)
            data = path.read_bytes()
            instance = Instance(
                study_id=study.id,
                series_id=series.id,
                sop_instance_uid=str(source.SOPInstanceUID),
                sop_class_uid=str(source.SOPClassUID),
                transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
                instance_number=int(source.get("InstanceNumber") or 1),
                storage_path=str(path.relative_to(db.store.root)),
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
                calling_ae_title="PACS",
                eligibility=Eligibility.ELIGIBLE,
            )
            session.add(instance)
            session.flush()
            instances.append(instance)
        study_id = study.id
    return AnalysedStudy(db, study_id, study_uid, instances, sources)


def record_analysis(
    study: AnalysedStudy,
    probabilities: list[float],
    *,
    model: tuple[str, str] = MODEL,
    threshold: float = 0.4,
    high_specificity_threshold: float = 0.8,
    regions: list[list[Region]] | None = None,
) -> ClaimedJob:
    """Record a job and its predictions as the analysis step does (heat maps and regions)."""
    db = study.db
    with db.sessions() as session, session.begin():
        generation = session.scalar(
            select(func.count()).select_from(Job).where(Job.study_id == study.study_id)
        )
        job = Job(study_id=study.study_id, generation=generation or 0)
        session.add(job)
        session.flush()
        job_id = job.id
    with db.sessions() as session, session.begin():
        per_image = regions or [[] for _ in probabilities]
        for instance, source, probability, boxes in zip(
            study.instances, study.sources, probabilities, per_image, strict=True
        ):
            prepared = prepare(display_grey(source), 64, crop=False)
            y, x = np.mgrid[0:64, 0:64]
            heat = np.exp(-((y - 30.0) ** 2 + (x - 20.0) ** 2) / 200.0).astype(np.float32)
            session.add(
                ImagePrediction(
                    job_id=job_id,
                    instance_id=instance.id,
                    model_name=model[0],
                    model_version=model[1],
                    probability=probability,
                    positive_high_sensitivity=probability >= threshold,
                    positive_high_specificity=probability >= high_specificity_threshold,
                    heatmap_path=save_heatmap(
                        db.store, job_id, instance.id, heat, prepared.transform
                    ),
                    regions=[box.to_json() for box in boxes] or None,
                )
            )
        study_probability = max(probabilities)
        session.add(
            StudyPrediction(
                job_id=job_id,
                study_id=study.study_id,
                model_name=model[0],
                model_version=model[1],
                probability=study_probability,
                positive=study_probability >= threshold,
                operating_point="high_sensitivity",
                threshold=threshold,
                positive_high_specificity=study_probability >= high_specificity_threshold,
                n_images=len(probabilities),
            )
        )
    return claimed_job(db, job_id)


def claimed_job(db: ResultsDb, job_id: int) -> ClaimedJob:
    """The job, claimed as a worker would claim it (the step checks the claim's token)."""
    claimed = jobs.claim(db.sessions, job_id, lease_s=600)
    assert claimed is not None
    return claimed


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ResultsDb]:
    opened = open_results_db(f"sqlite:///{tmp_path / 'gw.sqlite3'}", tmp_path / "storage")
    yield opened
    opened.engine.dispose()


@pytest.fixture
def study(db: ResultsDb, shared_dir: Path) -> AnalysedStudy:
    return ingest(db, two_image_study(shared_dir))


def make_step(
    db: ResultsDb, destinations: list[str], rules: list[RoutingRule] | None = None
) -> PublishStep:
    return PublishStep(db.sessions, db.store, tuple(destinations), tuple(rules or ()))


def result_rows(db: ResultsDb) -> list[ResultObject]:
    with db.sessions() as session:
        return list(session.scalars(select(ResultObject).order_by(ResultObject.id)))


def outbox_pairs(db: ResultsDb) -> list[tuple[str, str]]:
    with db.sessions() as session:
        rows = session.execute(
            select(ResultObject.sop_instance_uid, OutboxEntry.destination).join(OutboxEntry)
        ).all()
    return sorted((uid, name) for uid, name in rows)


def test_publish_builds_stores_records_and_queues(study: AnalysedStudy) -> None:
    db = study.db
    job = record_analysis(study, [0.9, 0.1])
    woken: list[bool] = []
    step = PublishStep(
        db.sessions, db.store, ("pacs", "ris"), (), on_queued=lambda: woken.append(True)
    )
    step(job)
    rows = result_rows(db)
    assert [r.kind for r in rows] == [ResultObjectKind.SC, ResultObjectKind.SC, ResultObjectKind.SR]
    assert woken == [True]
    sources = [str(s.SOPInstanceUID) for s in study.sources]
    expected_scs = [uids.sc_instance_uid(study.study_uid, *MODEL, source) for source in sources]
    expected_sr = uids.sr_instance_uid(study.study_uid, *MODEL, sources)
    assert [r.sop_instance_uid for r in rows] == [*expected_scs, expected_sr]
    assert [r.source_instance_id for r in rows] == [i.id for i in study.instances] + [None]
    assert {(r.model_name, r.model_version, r.job_id) for r in rows} == {(*MODEL, job.id)}
    assert len(outbox_pairs(db)) == 6

    datasets = {r.sop_instance_uid: dcmread(db.store.absolute(r.storage_path)) for r in rows}
    for row in rows:
        ds = datasets[row.sop_instance_uid]
        assert row.storage_path.startswith("results/")
        assert ds.SOPClassUID == row.sop_class_uid
        assert ds.SeriesInstanceUID == row.series_instance_uid
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.PatientName == NON_ASCII_NAME
        assert ds.PatientID == study.sources[0].PatientID
    for sc_uid, source in zip(expected_scs, sources, strict=True):
        (reference,) = datasets[sc_uid].SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source
    sr = datasets[expected_sr]
    referenced = {
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert referenced == {*sources, *expected_scs}


def test_publish_is_idempotent_for_retries_and_reanalysis(study: AnalysedStudy) -> None:
    db = study.db
    step = make_step(db, ["pacs"])
    first_job = record_analysis(study, [0.9, 0.1])
    step(first_job)
    before = [(r.id, r.sop_instance_uid, r.storage_path) for r in result_rows(db)]
    files = {p: p.read_bytes() for p in (db.store.root / "results").rglob("*.dcm")}
    step(first_job)  # the job retried after publishing
    step(record_analysis(study, [0.9, 0.1]))  # the same study analysed again, same model
    assert [(r.id, r.sop_instance_uid, r.storage_path) for r in result_rows(db)] == before
    assert len(outbox_pairs(db)) == 3
    assert {p: p.read_bytes() for p in (db.store.root / "results").rglob("*.dcm")} == files


def test_delivered_objects_are_not_queued_again(study: AnalysedStudy) -> None:
    db = study.db
    step = make_step(db, ["pacs"])
    job = record_analysis(study, [0.9, 0.1])
    step(job)
    with db.sessions() as session, session.begin():
        for row in session.scalars(select(OutboxEntry)):
            row.state = OutboxState.SENT
    step(job)
    assert {v.state for v in list_outbox(db.sessions)} == {OutboxState.SENT}


def test_a_worker_whose_lease_lapsed_publishes_nothing(study: AnalysedStudy) -> None:
    db = study.db
    stale = record_analysis(study, [0.9, 0.1])
    with db.sessions() as session, session.begin():  # the stale worker stopped renewing
        session.execute(
            update(Job).where(Job.id == stale.id).values(lease_expires_at=utcnow() - timedelta(1))
        )
    current = jobs.claim(db.sessions, stale.id, lease_s=600)
    assert current is not None
    with pytest.raises(LeaseLostError):
        make_step(db, ["pacs"])(stale)
    assert result_rows(db) == []
    make_step(db, ["pacs"])(current)
    assert len(result_rows(db)) == 3


def test_a_new_model_version_gives_new_objects(study: AnalysedStudy) -> None:
    db = study.db
    step = make_step(db, ["pacs"])
    step(record_analysis(study, [0.9, 0.1]))
    step(record_analysis(study, [0.8, 0.2], model=(MODEL[0], "1.1.0")))
    rows = result_rows(db)
    assert len(rows) == 6
    assert len({r.sop_instance_uid for r in rows}) == 6
    assert {r.model_version for r in rows} == {"1.0.0", "1.1.0"}
    assert len(outbox_pairs(db)) == 6


def test_lost_file_is_rewritten_without_new_rows(study: AnalysedStudy) -> None:
    db = study.db
    step = make_step(db, ["pacs"])
    job = record_analysis(study, [0.9, 0.1])
    step(job)
    rows = result_rows(db)
    lost = db.store.absolute(rows[0].storage_path)
    original = lost.read_bytes()
    lost.unlink()
    step(job)
    rewritten, before = dcmread(lost), dcmread(BytesIO(original))
    assert rewritten.SOPInstanceUID == before.SOPInstanceUID
    assert rewritten.PixelData == before.PixelData
    assert [r.id for r in result_rows(db)] == [r.id for r in rows]


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0.1, 0.2], {"pacs"}),
        ([0.5, 0.2], {"pacs", "ris"}),
        ([0.95, 0.2], {"pacs", "ris", "clinic"}),
    ],
)
def test_routing_rules_choose_destinations(
    study: AnalysedStudy, probabilities: list[float], expected: set[str]
) -> None:
    rules = [
        RoutingRule(when="always", destinations=["pacs"]),
        RoutingRule(when="positive", destinations=["ris"]),
        RoutingRule(when="high_specificity_positive", destinations=["clinic"]),
    ]
    step = make_step(study.db, ["pacs", "ris", "clinic"], rules)
    step(record_analysis(study, probabilities))
    pairs = outbox_pairs(study.db)
    assert {name for _, name in pairs} == expected
    assert len(pairs) == 3 * len(expected)


def test_nothing_is_published_without_analysed_images(study: AnalysedStudy) -> None:
    db = study.db
    with db.sessions() as session, session.begin():
        job = Job(study_id=study.study_id)
        session.add(job)
        session.flush()
        session.add(
            StudyPrediction(
                job_id=job.id,
                study_id=study.study_id,
                model_name=MODEL[0],
                model_version=MODEL[1],
                probability=None,
                positive=None,
                operating_point="high_sensitivity",
                threshold=0.4,
                positive_high_specificity=None,
                n_images=0,
            )
        )
        job_id = job.id
    make_step(db, ["pacs"])(claimed_job(db, job_id))
    assert result_rows(db) == []


def test_from_settings_takes_destinations_and_rules(db: ResultsDb, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        destinations=[Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)],
        routing=[RoutingRule(when="positive", destinations=["pacs"])],
    )
    step = PublishStep.from_settings(settings, db.sessions, db.store)
    assert step.destinations == ("pacs",)
    assert [r.when for r in step.routing] == ["positive"]
    assert step.objects_for("pacs") == {ResultObjectKind.SR, ResultObjectKind.SC}
    assert not step.makes_presentation_states


# Presentation states (GSPS) --------------------------------------------------------------------
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
ALL_OBJECTS = frozenset(ResultObjectKind)

#: Suspected fractures on the first image (the DX is 211 x 169): one at both operating points,
#: one at high sensitivity only. The second image has none.
FIRST_IMAGE_REGIONS = [
    Region(100.0, 60.0, 140.0, 100.0, 0.9, 0.9, ("high_sensitivity", "high_specificity")),
    Region(20.0, 20.0, 50.0, 40.0, 0.5, 0.5, ("high_sensitivity",)),
]


def analyse_with_regions(study: AnalysedStudy) -> ClaimedJob:
    return record_analysis(study, [0.9, 0.1], regions=[FIRST_IMAGE_REGIONS, []])


def test_presentation_states_go_only_where_configured(study: AnalysedStudy) -> None:
    db = study.db
    step = PublishStep(
        db.sessions, db.store, ("viewer", "archive"), objects={"viewer": ALL_OBJECTS}
    )
    assert step.objects_for("archive") == {ResultObjectKind.SR, ResultObjectKind.SC}
    step(analyse_with_regions(study))
    rows = result_rows(db)
    kinds = [r.kind for r in rows]
    assert kinds == [ResultObjectKind.SC] * 2 + [ResultObjectKind.SR, ResultObjectKind.GSPS]
    (gsps_row,) = (r for r in rows if r.kind is ResultObjectKind.GSPS)
    first = str(study.sources[0].SOPInstanceUID)
    assert gsps_row.sop_instance_uid == uids.gsps_instance_uid(study.study_uid, *MODEL, first)
    assert gsps_row.source_instance_id == study.instances[0].id
    assert gsps_row.sop_class_uid == GSPS_CLASS

    pairs = outbox_pairs(db)
    assert (gsps_row.sop_instance_uid, "viewer") in pairs
    assert (gsps_row.sop_instance_uid, "archive") not in pairs
    assert len(pairs) == 4 + 3

    gsps = dcmread(db.store.absolute(gsps_row.storage_path))
    assert gsps.SOPClassUID == GSPS_CLASS
    assert gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        first
    )
    assert gsps.SpecificCharacterSet == "ISO_IR 192"
    assert gsps.PatientName == NON_ASCII_NAME
    layers = {a.GraphicLayer: a for a in gsps.GraphicAnnotationSequence}
    assert set(layers) == {"HIGH_SPECIFICITY", "HIGH_SENSITIVITY"}
    (solid,) = layers["HIGH_SPECIFICITY"].GraphicObjectSequence
    assert list(solid.GraphicData[:2]) == [100.0, 60.0]
    assert solid.LineStyleSequence[0].LineDashingStyle == "SOLID"
    (text,) = layers["HIGH_SPECIFICITY"].TextObjectSequence
    assert text.UnformattedTextValue.endswith("0.90")


def test_no_presentation_state_by_default(study: AnalysedStudy) -> None:
    make_step(study.db, ["pacs"])(analyse_with_regions(study))
    assert ResultObjectKind.GSPS not in {r.kind for r in result_rows(study.db)}


def test_a_destination_can_take_presentation_states_alone(study: AnalysedStudy) -> None:
    db = study.db
    step = PublishStep(
        db.sessions, db.store, ("viewer",), objects={"viewer": frozenset({ResultObjectKind.GSPS})}
    )
    job = analyse_with_regions(study)
    step(job)
    with db.sessions() as session:
        queued = session.scalars(
            select(ResultObject.kind).join(OutboxEntry).where(OutboxEntry.destination == "viewer")
        ).all()
    assert queued == [ResultObjectKind.GSPS]
    step(job)  # a retry: nothing new
    assert len(outbox_pairs(db)) == 1


def test_settings_name_the_objects_each_destination_receives(db: ResultsDb, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        destinations=[
            Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
            Destination(
                name="viewer", ae_title="VIEW", host="127.0.0.1", port=105, objects=["gsps", "sr"]
            ),
        ],
    )
    step = PublishStep.from_settings(settings, db.sessions, db.store)
    assert step.objects_for("pacs") == {ResultObjectKind.SR, ResultObjectKind.SC}
    assert step.objects_for("viewer") == {ResultObjectKind.GSPS, ResultObjectKind.SR}
    assert step.makes_presentation_states


def test_every_configurable_object_is_a_result_kind() -> None:
    assert set(get_args(ResultObjectName)) == {kind.value for kind in ResultObjectKind}
    assert set(SOP_CLASSES) == set(ResultObjectKind)


@pytest.mark.integration
def test_orthanc_stores_the_gsps_with_the_sr_and_scs(
    study: AnalysedStudy, orthanc: Orthanc
) -> None:
    """The real delivery path: publish, the outbox's C-STORE, a real PACS keeping everything."""
    db = study.db
    for source in study.sources:  # the PACS holds the originals, as it would
        buffer = BytesIO()
        source.save_as(buffer, enforce_file_format=True)
        assert orthanc.upload(buffer.getvalue())["Status"] == "Success"
    PublishStep(db.sessions, db.store, ("pacs",), objects={"pacs": ALL_OBJECTS})(
        analyse_with_regions(study)
    )
    worker = OutboxWorker(
        db.sessions,
        db.store,
        [
            Destination(
                name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
            )
        ],
        OutboxSettings(association_timeout_s=30),
        calling_ae_title="FRACTUREGW",
    )
    assert worker.run_once() == 4
    assert {v.state for v in list_outbox(db.sessions)} == {OutboxState.SENT}

    (study_id,) = orthanc.get("/studies")
    instances = orthanc.study_instances(study_id)
    held = {}
    for instance in instances:
        response = orthanc.client.get(f"/instances/{instance['ID']}/file")
        response.raise_for_status()
        ds = dcmread(BytesIO(response.content))
        held[str(ds.SOPInstanceUID)] = ds
    by_class: dict[str, list[Dataset]] = {}
    for ds in held.values():
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    assert len(held) == 2 + 4
    assert len(by_class[GSPS_CLASS]) == 1
    assert len(by_class["1.2.840.10008.5.1.4.1.1.7"]) == 2
    assert len(by_class["1.2.840.10008.5.1.4.1.1.88.34"]) == 1
    (gsps,) = by_class[GSPS_CLASS]
    referenced = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID in held  # the original it annotates is there
    assert {orthanc.get(f"/instances/{i['ID']}/patient")["ID"] for i in instances} == {
        orthanc.get(f"/studies/{study_id}/patient")["ID"]
    }
    assert str(gsps.PatientName) == NON_ASCII_NAME
    tags = orthanc.tags(
        next(
            i["ID"]
            for i in instances
            if i["MainDicomTags"]["SOPInstanceUID"] == gsps.SOPInstanceUID
        )
    )
    assert tags["Modality"] == "PR"


@pytest.mark.integration
def test_published_results_reach_a_real_peer_once(
    study: AnalysedStudy, storescp_factory: StoreSCPFactory
) -> None:
    db = study.db
    scp = storescp_factory()
    job = record_analysis(study, [0.9, 0.1])
    make_step(db, ["pacs"])(job)
    worker = OutboxWorker(
        db.sessions,
        db.store,
        [Destination(name="pacs", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)],
        OutboxSettings(association_timeout_s=10),
        calling_ae_title="FRACTUREGW",
    )
    assert worker.run_once() == 3
    make_step(db, ["pacs"])(record_analysis(study, [0.9, 0.1]))  # re-analysis: nothing new
    assert worker.run_once() == 0
    received = scp.received_sop_instance_uids()
    assert received == {r.sop_instance_uid: 1 for r in result_rows(db)}
