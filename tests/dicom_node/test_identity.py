"""Patient identity: two patients under one Study UID are never merged silently.

The rule is checked on a table of values; the ingest path is checked on SQLite and PostgreSQL
through :func:`dicom_node.ingest.record_instance`, as the C-STORE handler calls it.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from audit.events import Actor
from config.settings import DuplicatePolicy
from db import jobs
from db.base import utcnow
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Eligibility, Instance, Job, Study
from db.review import AuditEvent
from dicom_node.grouping import complete_quiet_studies
from dicom_node.identity import (
    ConflictDecision,
    IdentityField,
    NoConflictError,
    PatientIdentity,
    normalise_name,
    resolve_conflict,
)
from dicom_node.ingest import IngestOutcome, InstanceHeader, record_instance
from dicom_node.storage import InstanceStore, StoredDigest
from tests.helpers.results_db import schema_differences

CANARY_ID = "CANARY-PID-7731"
CANARY_NAME = "CANARYNAME^ZELDA"


@pytest.mark.parametrize(
    ("study", "instance", "conflicts"),
    [
        # Same patient, written differently: no conflict.
        (PatientIdentity("P1", None, "DOE^JOHN"), PatientIdentity("P1 ", "", "Doe^John"), []),
        (PatientIdentity("P1", "", "DOE^JOHN^^"), PatientIdentity("P1", None, "DOE^JOHN"), []),
        (PatientIdentity("P1", "HOSP", None), PatientIdentity("P1", None, "DOE^JOHN"), []),
        (
            PatientIdentity(" P1", None, "DOE^ JOHN"),
            PatientIdentity("P1\x00", None, "doe^john"),
            [],
        ),
        (
            PatientIdentity("P1", None, "DOE^JOHN=ideo"),
            PatientIdentity("P1", None, "DOE^JOHN"),
            [],
        ),
        (
            PatientIdentity(None, None, None, None),
            PatientIdentity("P2", "X", "A^B", "19700101"),
            [],
        ),
        # Another patient: each field on its own conflicts.
        (
            PatientIdentity("P1", None, "DOE^JOHN"),
            PatientIdentity("P2", None, "DOE^JOHN"),
            [IdentityField.PATIENT_ID],
        ),
        (
            PatientIdentity("p1", None, None),
            PatientIdentity("P1", None, None),
            [IdentityField.PATIENT_ID],
        ),
        (
            PatientIdentity("P1", "HOSP-A", None),
            PatientIdentity("P1", "HOSP-B", None),
            [IdentityField.ISSUER_OF_PATIENT_ID],
        ),
        (
            PatientIdentity("P1", None, "DOE^JOHN"),
            PatientIdentity("P1", None, "DOE^JANE"),
            [IdentityField.PATIENT_NAME],
        ),
        (
            PatientIdentity("P1", None, None, "19700101"),
            PatientIdentity("P1", None, None, "19700102"),
            [IdentityField.PATIENT_BIRTH_DATE],
        ),
    ],
)
def test_identity_rule(
    study: PatientIdentity, instance: PatientIdentity, conflicts: list[IdentityField]
) -> None:
    assert study.conflicts_with(instance) == conflicts
    assert instance.conflicts_with(study) == conflicts


@given(st.text(alphabet="ABCdef^ =", max_size=20))
def test_name_normalisation_is_idempotent_and_case_blind(name: str) -> None:
    once = normalise_name(name)
    assert normalise_name(once) == once
    assert normalise_name(name.upper()) == normalise_name(name.lower())


# Ingest -----------------------------------------------------------------------------------------
@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "storage", fsync=False)


STUDY = "1.2.826.0.1.3680043.10.1.1"


def header(sop: str, **identity: str | None) -> InstanceHeader:
    values: dict[str, str | None] = {
        "patient_id": "P1",
        "patient_name": "DOE^JOHN",
        "issuer_of_patient_id": None,
        "patient_birth_date": "19700101",
        **identity,
    }
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid=sop,
        study_instance_uid=STUDY,
        series_instance_uid=STUDY + ".1",
        accession_number=None,
        study_date="20260101",
        study_description=None,
        modality="CR",
        body_part_examined="HAND",
        series_number=1,
        instance_number=int(sop.rsplit(".", 1)[1]),
        **values,  # type: ignore[arg-type]
    )


def receive(
    sessions: sessionmaker[Session], store: InstanceStore, head: InstanceHeader
) -> IngestOutcome:
    tmp = store.tmp_dir / f"{head.sop_instance_uid}.part"
    tmp.write_bytes(head.sop_instance_uid.encode())
    return record_instance(
        sessions,
        store,
        head,
        tmp,
        StoredDigest(head.sop_instance_uid.replace(".", "0").ljust(64, "0")[:64], 10),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="MODALITY",
        duplicate_policy=DuplicatePolicy.KEEP_FIRST,
    )


def test_same_patient_written_differently_is_one_study(
    sessions: sessionmaker[Session], store: InstanceStore
) -> None:
    receive(sessions, store, header(STUDY + ".1.1", issuer_of_patient_id=None))
    receive(
        sessions,
        store,
        header(
            STUDY + ".1.2",
            patient_id="P1 ",
            patient_name="Doe^John^^",
            issuer_of_patient_id="",
            patient_birth_date=None,
        ),
    )
    receive(sessions, store, header(STUDY + ".1.3", issuer_of_patient_id="HOSP"))
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert not study.identity_conflict
        assert study.issuer_of_patient_id == "HOSP"  # filled in by the first that had it
        instances = session.scalars(select(Instance)).all()
        assert {i.eligibility for i in instances} == {Eligibility.PENDING}
        assert session.scalars(select(AuditEvent)).all() == []
    assert complete_quiet_studies(
        sessions, quiet_period_s=0, max_attempts=3, now=utcnow() + timedelta(seconds=1)
    )


def test_another_patient_is_stored_but_holds_the_study(
    sessions: sessionmaker[Session], store: InstanceStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receive(sessions, store, header(STUDY + ".1.1"))
    # A job was queued before the other patient's image came (the study went quiet).
    (queued,) = complete_quiet_studies(
        sessions, quiet_period_s=0, max_attempts=3, now=utcnow() + timedelta(seconds=1)
    )
    outcome = receive(
        sessions,
        store,
        header(STUDY + ".1.2", patient_id=CANARY_ID, patient_name=CANARY_NAME),
    )
    assert outcome is IngestOutcome.STORED  # acknowledged: nothing accepted is lost
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.identity_conflict
        assert (study.patient_id, study.patient_name) == ("P1", "DOE^JOHN")
        second = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == STUDY + ".1.2")
        ).one()
        assert second.eligibility is Eligibility.IDENTITY_CONFLICT
        assert store.absolute(second.storage_path).is_file()
        (event,) = session.scalars(select(AuditEvent)).all()
        assert event.object_type == "study"
        assert event.object_id == str(study.id)
        assert event.detail is not None
        assert "PatientID" in event.detail
        assert "PatientName" in event.detail
        assert CANARY_ID not in event.detail
    # Held: no new job for the study, and the job queued earlier is not taken.
    later = utcnow() + timedelta(hours=2)
    assert complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=3, now=later) == []
    assert jobs.claim_next(sessions, lease_s=60, now=later) is None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "identity conflict" in logged
    assert CANARY_ID not in logged
    assert "CANARYNAME" not in logged.upper()

    with sessions() as session, session.begin():
        study = session.scalars(select(Study)).one()
        resolution = resolve_conflict(
            session, study, ConflictDecision.KEEP_STUDY_IDENTITY, Actor("user:admin")
        )
    assert resolution.excluded_instance_ids == [second.id]
    with sessions() as session, session.begin():
        study = session.scalars(select(Study)).one()
        assert not study.identity_conflict
        with pytest.raises(NoConflictError):
            resolve_conflict(session, study, ConflictDecision.KEEP_STUDY_IDENTITY, Actor("x"))
        excluded = session.get(Instance, second.id)
        assert excluded is not None
        assert excluded.eligibility is Eligibility.IDENTITY_CONFLICT  # never analysed
    # Released: the queued job runs, and the reopened study completes into a new job.
    claimed = jobs.claim_next(sessions, lease_s=60, now=later)
    assert claimed is not None
    assert claimed.id == queued
    assert complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=3, now=later)


def test_replaced_copy_naming_another_patient_is_held(
    sessions: sessionmaker[Session], store: InstanceStore
) -> None:
    receive(sessions, store, header(STUDY + ".1.1"))
    receive(sessions, store, header(STUDY + ".1.2"))
    other = dataclasses.replace(header(STUDY + ".1.2"), patient_id="P2")
    tmp = store.tmp_dir / "replace.part"
    tmp.write_bytes(b"other content")
    outcome = record_instance(
        sessions,
        store,
        other,
        tmp,
        StoredDigest("f" * 64, 13),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="MODALITY",
        duplicate_policy=DuplicatePolicy.REPLACE,
    )
    assert outcome is IngestOutcome.REPLACED
    with sessions() as session:
        assert session.scalars(select(Study)).one().identity_conflict
        assert session.scalars(select(Job)).all() == []


def test_migration_matches_the_study_model(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    assert schema_differences(engine, {"studies"}) == []
    engine.dispose()
