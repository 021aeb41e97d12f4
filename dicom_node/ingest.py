"""Record a received instance: header identifiers, stored file, study and series rows.

Called by the C-STORE handler after the file is durable and before Success is returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DuplicatePolicy
from db.base import utcnow
from db.models import Eligibility, Instance, Series, Study, StudyStatus
from dicom_node.conformance import RADIOGRAPH_SOP_CLASSES
from dicom_node.storage import InstanceStore, StoredDigest, is_valid_uid

log = logging.getLogger(__name__)

_HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "Modality",
    "BodyPartExamined",
    "SeriesNumber",
    "InstanceNumber",
    "SpecificCharacterSet",
)


class HeaderError(ValueError):
    """The data set's header cannot be parsed or lacks required identifiers."""

    def __init__(self, message: str, *, missing_identifiers: bool = False) -> None:
        super().__init__(message)
        self.missing_identifiers = missing_identifiers


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The identifiers we keep in the database, read from the data set."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    modality: str | None
    body_part_examined: str | None
    series_number: int | None
    instance_number: int | None


def parse_header(path: Path) -> InstanceHeader:
    """Parse the identifiers from a stored (temporary) DICOM file, stopping before pixels."""
    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=list(_HEADER_TAGS),
        )
        return _header_from_dataset(ds)
    except HeaderError:
        raise
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
        raise HeaderError(f"cannot parse the data set: {type(exc).__name__}") from exc


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise HeaderError(f"{keyword} is missing", missing_identifiers=True)
    if not is_valid_uid(value):
        raise HeaderError(f"{keyword} is not a valid UID", missing_identifiers=True)
    return value


def _header_from_dataset(ds: Dataset) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 64),
        modality=_text(ds, "Modality", 16),
        body_part_examined=_text(ds, "BodyPartExamined", 64),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
    )


class IngestOutcome(StrEnum):
    """What happened to a received instance."""

    STORED = "stored"
    IDEMPOTENT = "idempotent"  # same UID, same bytes: nothing new
    CONFLICT_KEPT = "conflict_kept"  # same UID, other bytes: kept aside (keep_first)
    REPLACED = "replaced"  # same UID, other bytes: replaced (replace)
    CONFLICT_REJECTED = "conflict_rejected"  # same UID, other bytes: refused (reject)


def existing_digest(factory: sessionmaker[Session], sop_instance_uid: str) -> str | None:
    """The stored digest of an instance, if we have it."""
    with factory() as session:
        return session.scalar(
            select(Instance.sha256).where(Instance.sop_instance_uid == sop_instance_uid)
        )


def record_instance(
    factory: sessionmaker[Session],
    store: InstanceStore,
    header: InstanceHeader,
    tmp: Path,
    digest: StoredDigest,
    *,
    transfer_syntax_uid: str,
    calling_ae_title: str,
    duplicate_policy: DuplicatePolicy,
    reject_out_of_scope: bool = False,
) -> IngestOutcome:
    """Move the temporary file into place and record it; the caller answers Success after this.

    The file rename happens before the database commit; a crash in between leaves an
    unacknowledged file that the sender's retry overwrites. A database failure removes the file
    (unless it was already there), so nothing unacknowledged is ever recorded.
    """
    previous = existing_digest(factory, header.sop_instance_uid)
    if previous is not None:
        if previous == digest.sha256:
            tmp.unlink(missing_ok=True)
            _touch_study(factory, header.study_instance_uid)
            return IngestOutcome.IDEMPOTENT
        return _handle_conflict(factory, store, header, tmp, digest, duplicate_policy)

    final = store.path_for(header.study_instance_uid, header.sop_instance_uid)
    relative = store.commit(tmp, final)
    try:
        _insert(
            factory,
            header,
            relative,
            digest,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae_title=calling_ae_title,
        )
    except IntegrityError:
        # A concurrent association stored the same instance first: compare with its copy.
        again = existing_digest(factory, header.sop_instance_uid)
        if again == digest.sha256:
            return IngestOutcome.IDEMPOTENT
        raise
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return IngestOutcome.STORED


def _handle_conflict(
    factory: sessionmaker[Session],
    store: InstanceStore,
    header: InstanceHeader,
    tmp: Path,
    digest: StoredDigest,
    policy: DuplicatePolicy,
) -> IngestOutcome:
    if policy is DuplicatePolicy.REJECT:
        tmp.unlink(missing_ok=True)
        log.warning("duplicate SOP instance with different content refused (policy reject)")
        return IngestOutcome.CONFLICT_REJECTED
    if policy is DuplicatePolicy.KEEP_FIRST:
        kept = store.keep_conflict(tmp, header.sop_instance_uid, digest.sha256)
        log.warning(
            "duplicate SOP instance with different content kept aside as %s (policy keep_first)",
            kept.name,
        )
        _touch_study(factory, header.study_instance_uid)
        return IngestOutcome.CONFLICT_KEPT
    # REPLACE: new file under its own name, row updated, old file removed after the commit.
    final = store.path_for(header.study_instance_uid, header.sop_instance_uid)
    final = final.with_name(f"{final.stem}.{digest.sha256[:16]}.dcm")
    relative = store.commit(tmp, final)
    with factory() as session, session.begin():
        instance = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
        ).one()
        old_path = instance.storage_path
        instance.storage_path = relative
        instance.sha256 = digest.sha256
        instance.size_bytes = digest.size_bytes
        instance.received_at = utcnow()
        instance.eligibility = _initial_eligibility(header.sop_class_uid)[0]
        _mark_received(instance.study)
    if old_path != relative:
        store.absolute(old_path).unlink(missing_ok=True)
    log.warning("duplicate SOP instance with different content replaced the stored copy")
    return IngestOutcome.REPLACED


def _initial_eligibility(sop_class_uid: str) -> tuple[Eligibility, str | None]:
    if sop_class_uid in RADIOGRAPH_SOP_CLASSES:
        return Eligibility.PENDING, None
    return Eligibility.OUT_OF_SCOPE, "not a CR or DX radiograph storage SOP class"


def _mark_received(study: Study) -> None:
    """Arrival of an instance: reset the quiet period, reopen a completed study."""
    study.last_received_at = utcnow()
    if study.status == StudyStatus.COMPLETE:
        study.status = StudyStatus.REOPENED


def _touch_study(factory: sessionmaker[Session], study_uid: str) -> None:
    with factory() as session, session.begin():
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is not None and study.status == StudyStatus.RECEIVING:
            study.last_received_at = utcnow()


def _insert(
    factory: sessionmaker[Session],
    header: InstanceHeader,
    relative_path: str,
    digest: StoredDigest,
    *,
    transfer_syntax_uid: str,
    calling_ae_title: str,
) -> None:
    for attempt in range(3):
        try:
            with factory() as session, session.begin():
                study = _get_or_create_study(session, header)
                series = _get_or_create_series(session, study, header)
                eligibility, reason = _initial_eligibility(header.sop_class_uid)
                session.add(
                    Instance(
                        study_id=study.id,
                        series_id=series.id,
                        sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid,
                        transfer_syntax_uid=transfer_syntax_uid,
                        instance_number=header.instance_number,
                        storage_path=relative_path,
                        sha256=digest.sha256,
                        size_bytes=digest.size_bytes,
                        calling_ae_title=calling_ae_title[:16],
                        eligibility=eligibility,
                        eligibility_reason=reason,
                    )
                )
                _mark_received(study)
            return
        except IntegrityError as exc:
            # Study or series created concurrently by another association: retry once it is
            # visible; a duplicate instance is the caller's business.
            if "instances" in str(exc.orig) or attempt == 2:
                raise


def _get_or_create_study(session: Session, header: InstanceHeader) -> Study:
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == header.study_instance_uid)
    ).first()
    if study is None:
        study = Study(
            study_instance_uid=header.study_instance_uid,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
            accession_number=header.accession_number,
            study_date=header.study_date,
            study_description=header.study_description,
        )
        session.add(study)
        session.flush()
    return study


def _get_or_create_series(session: Session, study: Study, header: InstanceHeader) -> Series:
    series = session.scalars(
        select(Series).where(Series.series_instance_uid == header.series_instance_uid)
    ).first()
    if series is None:
        series = Series(
            study_id=study.id,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality,
            body_part_examined=header.body_part_examined,
            series_number=header.series_number,
        )
        session.add(series)
        session.flush()
    return series


__all__ = [
    "HeaderError",
    "IngestOutcome",
    "InstanceHeader",
    "parse_header",
    "record_instance",
]
