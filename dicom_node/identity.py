"""Patient identity of a study: never merge two patients because they share a Study UID.

A study's identity is set by the instances that arrive first; every later instance is compared
with it. An instance that names another patient is still stored and acknowledged (nothing
accepted is lost), but it is never analysed, and the study is flagged: grouping, the job
workers and the outbox hold it until an admin resolves the conflict through the API.

The rule, field by field (Patient ID, Issuer of Patient ID, Patient's Name, Patient's Birth
Date; PS3.3 C.7.1.1):

- values are compared after removing leading and trailing spaces (and NUL padding); an empty
  value is the same as a missing one;
- Patient's Name is compared on its alphabetic group (PS3.5 6.2.1), component by component,
  ignoring letter case, runs of spaces and trailing empty components (``Doe^John^^`` equals
  ``DOE^JOHN``);
- Patient ID, issuer and birth date are compared exactly (case matters in an ID);
- a field conflicts only when both the study and the instance have a value and the values
  differ; a field the study lacks is filled from the first instance that has it.

Only the names of the differing attributes are ever logged or audited, never their values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import events
from audit.codes import EventId
from audit.events import Actor
from db.models import Eligibility, Instance, Study
from db.review import AuditAction, AuditOutcome

log = logging.getLogger(__name__)


class IdentityField(StrEnum):
    """The attributes that identify a patient, by their DICOM keywords."""

    PATIENT_ID = "PatientID"
    ISSUER_OF_PATIENT_ID = "IssuerOfPatientID"
    PATIENT_NAME = "PatientName"
    PATIENT_BIRTH_DATE = "PatientBirthDate"


class ConflictDecision(StrEnum):
    """How an admin resolves an identity conflict.

    ``keep_study_identity``: the study keeps the identity of its first instances; the
    conflicting instances stay stored but are excluded from analysis for good, so the SR and
    the SCs name one patient and show only that patient's images.
    """

    KEEP_STUDY_IDENTITY = "keep_study_identity"


#: The reason recorded on an instance that names another patient than its study.
CONFLICT_REASON = "patient identity differs from the study's"
#: The reason once an admin has excluded the instance for good.
EXCLUDED_REASON = "excluded: patient identity differs from the study's (resolved by an admin)"


def normalise_text(value: str | None) -> str | None:
    """A text value without padding (spaces, NULs); None when nothing is left."""
    if value is None:
        return None
    text = str(value).strip(" \x00\t\r\n")
    return text or None


def normalise_name(value: str | None) -> str | None:
    """A Person Name reduced to what identifies it: alphabetic group, case-folded components.

    Parameters
    ----------
    value
        A PN value (PS3.5 6.2.1): up to three component groups separated by ``=``, each with
        up to five components separated by ``^``.
    """
    text = normalise_text(value)
    if text is None:
        return None
    alphabetic = text.split("=", 1)[0]
    components = [" ".join(part.split()).casefold() for part in alphabetic.split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components) or None


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """The identifying attributes of a patient, as received (not normalised)."""

    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None

    @classmethod
    def of_study(cls, study: Study) -> PatientIdentity:
        return cls(
            study.patient_id,
            study.issuer_of_patient_id,
            study.patient_name,
            study.patient_birth_date,
        )

    def _normalised(self) -> dict[IdentityField, str | None]:
        return {
            IdentityField.PATIENT_ID: normalise_text(self.patient_id),
            IdentityField.ISSUER_OF_PATIENT_ID: normalise_text(self.issuer_of_patient_id),
            IdentityField.PATIENT_NAME: normalise_name(self.patient_name),
            IdentityField.PATIENT_BIRTH_DATE: normalise_text(self.patient_birth_date),
        }

    def conflicts_with(self, other: PatientIdentity) -> list[IdentityField]:
        """The fields where both identities have a value and the values differ."""
        mine, theirs = self._normalised(), other._normalised()
        return [
            field
            for field in IdentityField
            if mine[field] is not None
            and theirs[field] is not None
            and mine[field] != theirs[field]
        ]

    def completed_by(self, other: PatientIdentity) -> PatientIdentity:
        """This identity with its missing fields taken from ``other`` (first value wins)."""
        return replace(
            self,
            patient_id=self.patient_id if normalise_text(self.patient_id) else other.patient_id,
            issuer_of_patient_id=self.issuer_of_patient_id
            if normalise_text(self.issuer_of_patient_id)
            else other.issuer_of_patient_id,
            patient_name=self.patient_name
            if normalise_name(self.patient_name)
            else other.patient_name,
            patient_birth_date=self.patient_birth_date
            if normalise_text(self.patient_birth_date)
            else other.patient_birth_date,
        )


def check_instance_identity(
    session: Session,
    study: Study,
    identity: PatientIdentity,
    *,
    instance_id: int,
    calling_ae_title: str,
) -> list[IdentityField]:
    """Compare a new instance with its study; flag and audit the study on a conflict.

    Called inside the ingest transaction, with the study row locked, so the flag commits with
    the instance row. Without a conflict, fields the study lacks are filled from the instance.
    Returns the conflicting fields (empty when the instance belongs to the study's patient).
    """
    current = PatientIdentity.of_study(study)
    conflicts = current.conflicts_with(identity)
    if not conflicts:
        completed = current.completed_by(identity)
        if completed != current:
            study.patient_id = completed.patient_id
            study.issuer_of_patient_id = completed.issuer_of_patient_id
            study.patient_name = completed.patient_name
            study.patient_birth_date = completed.patient_birth_date
        return []
    study.identity_conflict = True
    names = ", ".join(field.value for field in conflicts)
    events.record(
        session,
        Actor(f"dicom:{calling_ae_title.strip()}"[:96]),
        EventId.IMPORT,
        AuditAction.CREATE,
        AuditOutcome.MINOR_FAILURE,
        object_type="study",
        object_id=study.id,
        detail=f"identity conflict: instance {instance_id} differs in {names}; analysis held",
    )
    log.warning(
        "identity conflict in study %d: instance %d differs in %s; analysis and delivery held",
        study.id,
        instance_id,
        names,
    )
    return conflicts


class NoConflictError(ValueError):
    """The study has no unresolved identity conflict to resolve."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """What resolving a study's identity conflict did."""

    study_id: int
    decision: ConflictDecision
    excluded_instance_ids: list[int]


def resolve_conflict(
    session: Session, study: Study, decision: ConflictDecision, actor: Actor
) -> Resolution:
    """Apply an admin's decision to a flagged study and lift the hold; audited.

    The caller has locked ``study`` and commits. Under ``keep_study_identity`` the instances
    that named another patient stay stored but are excluded for good; the study's own
    instances are then grouped, analysed and delivered as usual (a job held meanwhile runs
    again in full; result UIDs are deterministic, so nothing already delivered is doubled).
    """
    if not study.identity_conflict:
        raise NoConflictError(f"study {study.id} has no unresolved identity conflict")
    conflicting = session.scalars(
        select(Instance)
        .where(
            Instance.study_id == study.id,
            Instance.eligibility == Eligibility.IDENTITY_CONFLICT,
        )
        .order_by(Instance.id)
    ).all()
    if decision is ConflictDecision.KEEP_STUDY_IDENTITY:
        for instance in conflicting:
            instance.eligibility_reason = EXCLUDED_REASON
    study.identity_conflict = False
    excluded = [instance.id for instance in conflicting]
    events.record(
        session,
        actor,
        EventId.PATIENT_RECORD,
        AuditAction.UPDATE,
        object_type="study",
        object_id=study.id,
        detail=f"identity conflict resolved: {decision.value}; "
        f"{len(excluded)} instances excluded from analysis",
    )
    log.info(
        "identity conflict in study %d resolved (%s): %d instances excluded",
        study.id,
        decision.value,
        len(excluded),
    )
    return Resolution(study.id, decision, excluded)


__all__ = [
    "CONFLICT_REASON",
    "EXCLUDED_REASON",
    "ConflictDecision",
    "IdentityField",
    "NoConflictError",
    "PatientIdentity",
    "Resolution",
    "check_instance_identity",
    "normalise_name",
    "normalise_text",
    "resolve_conflict",
]
