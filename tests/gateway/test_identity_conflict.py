"""Two patients under one Study Instance UID, end to end: a real SCP, the real pipeline with a
tiny model, the API. The study is held, shown, resolved by an admin, and then analysed on its
own patient's images only; no patient data reaches the logs or the error bodies."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from api.accounts import create_user
from api.app import create_app
from config.settings import JobSettings, Settings
from db.jobs import ClaimedJob
from db.models import Eligibility, ImagePrediction, Instance, Job, JobState, Study
from db.results import OutboxEntry, ResultObject, ResultObjectKind
from db.review import Role
from dicom_node.grouping import complete_quiet_studies
from dicom_node.outbox import claim_due
from dicom_node.send import send_files
from gateway.service import Service, build_pipeline
from gateway.worker import run_one
from pipeline.study import StudyPipeline
from tests.api.world import PASSWORD, SETUP_ACTOR, radiograph
from tests.training.packages import make_package

PATIENT_A = ("OWNER-4711", "OWNER^ALICE")
PATIENT_B = ("CANARY-PID-0815", "CANARYNAME^BRUNO")
NO_RETRY = JobSettings(backoff_base_s=0.0, backoff_max_s=0.0)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    make_package(folder, size=64)
    return folder


@pytest.fixture
def service(tmp_path: Path, tiny_package: Path) -> Iterator[Service]:
    settings = Settings(
        home=tmp_path / "home",
        node={"bind_address": "127.0.0.1", "port": 0},
        inference={"model_path": tiny_package},
        api={"enabled": False, "secret_key": "test-secret-key-for-jwt-signing-32b"},
        grouping={"quiet_period_s": 3600, "analyse_on_arrival": False},
        # Nothing listens there: deliveries stay queued, and the outbox worker is not started.
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 9}],
    )
    svc = Service(settings)
    svc.start(dicom=True, worker=False)
    yield svc
    svc.stop()


@pytest.fixture
def pipeline(service: Service) -> StudyPipeline:
    return build_pipeline(service.settings, service.sessions, service.store)


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, service.sessions, store=service.store)) as c:
        yield c


def login(service: Service, client: TestClient, username: str, role: Role) -> dict[str, str]:
    with service.sessions() as session, session.begin():
        create_user(session, SETUP_ACTOR, username, PASSWORD, role)
    response = client.post("/api/auth/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def image(folder: Path, study_uid: str, patient: tuple[str, str]) -> tuple[Path, str]:
    """A CR file of ``patient`` in ``study_uid``; returns its path and SOP Instance UID."""
    sop_uid = generate_uid()
    ds = radiograph(study_uid, generate_uid(), sop_uid, patient_name=patient[1], body_part="HAND")
    ds.PatientID = patient[0]
    path = folder / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, sop_uid


def send(service: Service, *files: Path) -> None:
    results = send_files(list(files), "127.0.0.1", service.dicom_port, "FRACTUREGW", "MODALITY")
    assert [r.status for r in results] == [0] * len(files)  # every image acknowledged


def count(service: Service, model: type) -> int:
    with service.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_two_patients_in_one_study_are_held_then_resolved(
    service: Service,
    pipeline: StudyPipeline,
    client: TestClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    study_uid = generate_uid()
    own, own_uid = image(tmp_path, study_uid, PATIENT_A)
    other, other_uid = image(tmp_path, study_uid, PATIENT_B)
    send(service, own, other)

    # Both stored and recorded; the study is flagged and nothing runs or is sent for it.
    with service.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.identity_conflict
        assert study.patient_id == PATIENT_A[0]
        by_uid = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
        assert by_uid[other_uid].eligibility is Eligibility.IDENTITY_CONFLICT
        assert service.store.absolute(by_uid[other_uid].storage_path).is_file()
    assert complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3) == []
    assert not run_one(service.sessions, pipeline, NO_RETRY)
    assert (count(service, Job), count(service, ResultObject), count(service, OutboxEntry)) == (
        0,
        0,
        0,
    )

    # The worklist and the study view show the conflict.
    radiologist = login(service, client, "rad", Role.RADIOLOGIST)
    page = client.get("/api/studies", headers=radiologist).json()
    assert [item["identity_conflict"] for item in page["items"]] == [True]
    flagged = client.get("/api/studies?identity_conflict=true", headers=radiologist).json()
    assert flagged["total"] == 1
    detail = client.get(f"/api/studies/{study.id}", headers=radiologist).json()
    assert detail["identity_conflict"] is True
    assert {i["id"]: i["eligibility"] for i in detail["images"]}[by_uid[other_uid].id] == (
        "patient_conflict"
    )

    # Only an admin resolves; refusals say nothing about the patient.
    url = f"/api/admin/studies/{study.id}/identity-conflict/resolve"
    decision = {"decision": "keep_study_identity"}
    assert client.post(url, json=decision, headers=radiologist).status_code == 403
    admin = login(service, client, "boss", Role.ADMIN)
    missing = client.post(
        "/api/admin/studies/999999/identity-conflict/resolve", json=decision, headers=admin
    )
    assert missing.status_code == 404
    resolved = client.post(url, json=decision, headers=admin)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json() == {
        "study_id": study.id,
        "decision": "keep_study_identity",
        "excluded_image_ids": [by_uid[other_uid].id],
    }
    again = client.post(url, json=decision, headers=admin)
    assert again.status_code == 409
    trail = client.get("/api/admin/audit?object_type=study", headers=admin).json()
    details = [event["detail"] or "" for event in trail["items"]]
    assert any(d.startswith("identity conflict:") for d in details)
    assert any(d.startswith("identity conflict resolved: keep_study_identity") for d in details)
    assert any(d.startswith("identity conflict resolution refused") for d in details)

    # Then the study is analysed and published on its own patient's image only.
    assert len(complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)) == 1
    assert run_one(service.sessions, pipeline, NO_RETRY)
    with service.sessions() as session:
        (job,) = session.scalars(select(Job)).all()
        assert job.state is JobState.DONE, job.last_error
        analysed = {p.instance_id for p in session.scalars(select(ImagePrediction))}
        assert analysed == {by_uid[own_uid].id}
        objects = session.scalars(select(ResultObject)).all()
        assert {o.source_instance_id for o in objects if o.kind is ResultObjectKind.SC} == {
            by_uid[own_uid].id
        }
        (sr,) = (o for o in objects if o.kind is ResultObjectKind.SR)
    assert count(service, OutboxEntry) == len(objects)
    report = dcmread(service.store.absolute(sr.storage_path))
    assert report.PatientID == PATIENT_A[0]
    raw = service.store.absolute(sr.storage_path).read_bytes()
    assert other_uid.encode() not in raw
    assert PATIENT_B[0].encode() not in raw

    # No patient data in the logs or in any error body.
    bodies = missing.text + again.text + client.post(url, json={}, headers=admin).text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in (*PATIENT_A, *PATIENT_B, "CANARYNAME", "OWNER^"):
        assert value not in logged
        assert value not in bodies


def test_a_conflict_arriving_during_a_job_holds_its_results_and_deliveries(
    service: Service, pipeline: StudyPipeline, tmp_path: Path
) -> None:
    # A study analysed and published; its deliveries wait in the outbox.
    first_study = generate_uid()
    send(service, image(tmp_path, first_study, PATIENT_A)[0])
    complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)
    assert run_one(service.sessions, pipeline, NO_RETRY)
    assert claim_due(service.sessions, limit=100, lease_s=0) != []
    # Another patient's image arrives in that study: its deliveries are held.
    send(service, image(tmp_path, first_study, PATIENT_B)[0])
    assert claim_due(service.sessions, limit=100, lease_s=60) == []

    # A second study: the conflicting image arrives while its job is between analysis and
    # publication. The job goes back to pending, with no attempt used, and makes nothing.
    second_study = generate_uid()
    send(service, image(tmp_path, second_study, PATIENT_A)[0])
    (job_id,) = complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)
    with service.sessions() as session:
        second_id = session.scalars(
            select(Study.id).where(Study.study_instance_uid == second_study)
        ).one()
    before = count(service, ResultObject)

    def conflict_arrives(_job: ClaimedJob) -> None:
        send(service, image(tmp_path, second_study, PATIENT_B)[0])

    *analyse, publish = pipeline.steps
    assert run_one(service.sessions, StudyPipeline([*analyse, conflict_arrives, publish]), NO_RETRY)
    with service.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.state is JobState.PENDING
        assert job.attempts == 0
        assert (
            session.scalar(
                select(func.count())
                .select_from(ResultObject)
                .where(ResultObject.study_id == second_id)
            )
            == 0
        )
    assert count(service, ResultObject) == before
    assert not run_one(service.sessions, pipeline, NO_RETRY)  # held until resolved
