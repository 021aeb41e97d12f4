"""Results soon after the last image: images analysed as they arrive, completion at the
announced instance count, and a late image that replaces the study's result rather than
adding a second one."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from api.worklist import WorklistFilter, latest_study_prediction, worklist
from config.settings import Destination, Settings
from db.models import ImagePrediction, Instance, Job, JobKind, Study, StudyPrediction, StudyStatus
from dicom_node.grouping import complete_studies, queue_arrived_instances
from dicom_node.send import send_files
from gateway.service import Service, build_pipeline
from gateway.worker import run_one
from tests.gateway.test_end_to_end_orthanc import download, encoded, wait_for_instances
from tests.helpers.node import make_settings
from tests.helpers.orthanc import Orthanc, orthanc
from tests.training.packages import make_package

__all__ = ["orthanc"]

RG2 = "dicom/robyoung-dicom-test-files/data/WG04/REF/RG2_UNC"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    make_package(folder, size=64)
    return folder


def study_images(shared_dir: Path, count: int, **attributes: object) -> list[Dataset]:
    """``count`` images of one new study of one patient (a real CR, new UIDs each)."""
    source = dcmread(shared_dir / RG2)
    study_uid = generate_uid()
    images = []
    for number in range(1, count + 1):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID = study_uid
        ds.PatientID, ds.PatientName = "ARRIVAL-1", "ARRIVAL^TEST"
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        images.append(ds)
    return images


def send(service: Service, images: list[Dataset], folder: Path) -> None:
    paths = []
    for ds in images:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    results = send_files(paths, "127.0.0.1", service.dicom_port, "FRACTUREGW", "MODALITY")
    assert [r.status for r in results] == [0] * len(paths)


def run_due_jobs(service: Service) -> None:
    pipeline = build_pipeline(service.settings, service.sessions, service.store)
    while run_one(service.sessions, pipeline, service.settings.jobs):
        pass


@pytest.fixture
def node(tmp_path: Path, tiny_package: Path) -> Iterator[Service]:
    """A node with the model and no worker or timer work of its own: the test drives the jobs."""
    settings = Settings(
        home=tmp_path / "home",
        node={"bind_address": "127.0.0.1", "port": 0},
        inference={"model_path": tiny_package},
        api={"enabled": False},
        grouping={"quiet_period_s": 3600, "analyse_on_arrival": False},
    )
    service = Service(settings)
    service.start(dicom=True, worker=False)
    yield service
    service.stop()


def test_images_are_analysed_before_their_study_completes(
    node: Service, shared_dir: Path, tmp_path: Path
) -> None:
    send(node, study_images(shared_dir, 2), tmp_path)
    assert len(queue_arrived_instances(node.sessions, max_attempts=3)) == 2
    run_due_jobs(node)

    with node.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.status is StudyStatus.RECEIVING  # the quiet period (an hour) is not over
        assert session.scalars(select(Job).where(Job.kind == JobKind.STUDY.value)).all() == []
        instances = {i.id: i for i in session.scalars(select(Instance))}
        on_arrival = session.scalars(select(ImagePrediction)).all()
        assert sorted(p.instance_id for p in on_arrival) == sorted(instances)
        for prediction in on_arrival:
            assert prediction.instance_sha256 == instances[prediction.instance_id].sha256
        cached = {p.instance_id: (p.probability, p.heatmap_path) for p in on_arrival}

    # Completion: the study job reuses the cached predictions and runs no model.
    (study_job,) = complete_studies(node.sessions, quiet_period_s=0, max_attempts=3)
    run_due_jobs(node)
    with node.sessions() as session:
        rows = session.scalars(
            select(ImagePrediction).where(ImagePrediction.job_id == study_job)
        ).all()
        assert {r.instance_id: (r.probability, r.heatmap_path) for r in rows} == cached
        (study_prediction,) = session.scalars(select(StudyPrediction)).all()
        assert study_prediction.n_images == 2
        assert study_prediction.probability == max(p for p, _ in cached.values())
    assert not (node.store.root / "heatmaps" / str(study_job)).exists()


def test_a_replaced_copy_is_analysed_again(
    tmp_path: Path, tiny_package: Path, shared_dir: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        node={"bind_address": "127.0.0.1", "port": 0, "duplicate_policy": "replace"},
        inference={"model_path": tiny_package},
        api={"enabled": False},
        grouping={"quiet_period_s": 3600, "analyse_on_arrival": False},
    )
    service = Service(settings)
    service.start(dicom=True, worker=False)
    try:
        (image,) = study_images(shared_dir, 1)
        send(service, [image], tmp_path)
        queue_arrived_instances(service.sessions, max_attempts=3)
        run_due_jobs(service)
        changed = copy.deepcopy(image)
        changed.BodyPartExamined = "WRIST"  # other bytes, same SOP Instance UID
        send(service, [changed], tmp_path)
        assert len(queue_arrived_instances(service.sessions, max_attempts=3)) == 1
        run_due_jobs(service)
        complete_studies(service.sessions, quiet_period_s=0, max_attempts=3)
        run_due_jobs(service)
        with service.sessions() as session:
            instance = session.scalars(select(Instance)).one()
            (study_job,) = session.scalars(select(Job).where(Job.kind == JobKind.STUDY.value))
            (row,) = session.scalars(
                select(ImagePrediction).where(ImagePrediction.job_id == study_job.id)
            )
            assert row.instance_sha256 == instance.sha256  # the current copy's result
    finally:
        service.stop()


def test_study_completes_at_its_announced_instance_count(tmp_path: Path, shared_dir: Path) -> None:
    service = Service(make_settings(tmp_path / "home"))
    service.start(dicom=True, worker=False)
    try:
        first, second = study_images(shared_dir, 2, NumberOfStudyRelatedInstances=2)
        send(service, [first], tmp_path)
        assert complete_studies(service.sessions, quiet_period_s=3600, max_attempts=3) == []
        send(service, [second], tmp_path)
        # The service's own grouping timer may complete it first: either way, one study job,
        # well before the hour-long quiet period.
        complete_studies(service.sessions, quiet_period_s=3600, max_attempts=3)
        with service.sessions() as session:
            study = session.scalars(select(Study)).one()
            assert (study.expected_instances, study.status) == (2, StudyStatus.COMPLETE)
            study_jobs = session.scalars(select(Job).where(Job.kind == JobKind.STUDY.value)).all()
            assert len(study_jobs) == 1
    finally:
        service.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_late_image_replaces_the_studys_result(
    orthanc: Orthanc, tiny_package: Path, shared_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "gateway",
        node={"ae_title": "FRACTUREGW", "bind_address": "127.0.0.1", "port": 0},
        grouping={"quiet_period_s": 0.5, "poll_interval_s": 0.1},
        jobs={"poll_interval_s": 0.1, "backoff_base_s": 0.5, "max_attempts": 2},
        inference={"model_path": tiny_package},
        api={"enabled": False},
        destinations=[
            Destination(
                name="orthanc", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
            )
        ],
        outbox={"poll_interval_s": 0.1, "backoff_base_s": 0.5, "backoff_max_s": 2.0},
    )
    service = Service(settings)
    service.start()
    try:
        first, second, late = study_images(shared_dir, 3)
        answers = [orthanc.upload(encoded(ds)) for ds in (first, second)]
        study_id = answers[0]["ParentStudy"]
        send(service, [first, second], tmp_path)
        before = wait_for_instances(orthanc, study_id, 2 + 2 + 1)
        (old_sr,) = [
            ds for ds in (download(orthanc, i["ID"]) for i in before) if ds.SOPClassUID == SR_CLASS
        ]

        orthanc.upload(encoded(late))
        send(service, [late], tmp_path)
        after = wait_for_instances(orthanc, study_id, 3 + 3 + 2)
        datasets = [download(orthanc, i["ID"]) for i in after]
        srs = [ds for ds in datasets if ds.SOPClassUID == SR_CLASS]
        assert len(srs) == 2
        (new_sr,) = [ds for ds in srs if ds.SOPInstanceUID != old_sr.SOPInstanceUID]
        # The new report names the one it replaces (PS3.3 C.17.2.3) and covers all three images.
        replaced = {
            item.ReferencedSOPInstanceUID
            for study_item in new_sr.PredecessorDocumentsSequence
            for series_item in study_item.ReferencedSeriesSequence
            for item in series_item.ReferencedSOPSequence
        }
        assert replaced == {old_sr.SOPInstanceUID}
        assert "PredecessorDocumentsSequence" not in old_sr
        sources = {str(ds.SOPInstanceUID) for ds in (first, second, late)}
        scs = [ds for ds in datasets if ds.SOPClassUID == SC_CLASS]
        assert {sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs} == sources
        assert len(scs) == 3  # one per image: the earlier ones are not sent twice

        # Every image was analysed on arrival, and the worklist shows one result: the latest.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with service.sessions() as session:
                if session.scalars(select(Study)).one().status is StudyStatus.COMPLETE:
                    break
            time.sleep(0.1)
        with service.sessions() as session:
            image_jobs = session.scalars(select(Job).where(Job.kind == JobKind.IMAGE.value)).all()
            assert len(image_jobs) == 3
            study = session.scalars(select(Study)).one()
            (item,) = worklist(session, WorklistFilter(), limit=50, offset=0).items
            latest = latest_study_prediction(session, study.id)
            assert latest is not None
            assert item.id == study.id
            assert item.result is not None
            assert (item.result.id, item.result.n_images) == (latest.id, 3)
    finally:
        service.stop()


def test_the_celery_worker_runs_an_image_job(
    node: Service, shared_dir: Path, tmp_path: Path
) -> None:
    from gateway.celery_worker import WorkerContext

    send(node, study_images(shared_dir, 1), tmp_path)
    (job_id,) = queue_arrived_instances(node.sessions, max_attempts=3)
    context = WorkerContext.build(node.settings)
    try:
        context.analyse(job_id)  # the body of the Celery task a message naming the job runs
    finally:
        context.close()
    with node.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.kind == JobKind.IMAGE.value
        assert job.state.value == "done"
        (prediction,) = session.scalars(select(ImagePrediction)).all()
        assert (prediction.job_id, prediction.instance_id) == (job_id, job.instance_id)
