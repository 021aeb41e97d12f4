"""Record a received instance: header identifiers, stored file, study and series rows.

Called by the C-STORE handler after the file is durable and before Success is returned.
"""

from __future__ import annotations

import errno
import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DuplicatePolicy
from db.base import utcnow
from db.models import Eligibility, Instance, Series, Study, StudyStatus
from dicom_node.conformance import RADIOGRAPH_SOP_CLASSES, StoreStatus
from dicom_node.identity import CONFLICT_REASON, PatientIdentity, check_instance_identity
from dicom_node.receiving import HEADER_PREFIX_BYTES, ReceivedDataSet
from dicom_node.storage import InstanceStore, StorageError, StoredDigest, is_valid_uid
from reporting.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)


_HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "Modality",
    "BodyPartExamined",
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfStudyRelatedInstances",
    "SpecificCharacterSet",
)
_HEADER_TAG_LIST: list[BaseTag | int] = [Tag(keyword) for keyword in _HEADER_KEYWORDS]


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
    issuer_of_patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    #: Rows and Columns (0028,0010-0011) of an image, kept so views need not open the file.
    rows: int | None = None
    columns: int | None = None
    #: Number of Study Related Instances (0020,1208), when the sender announces the study's size.
    study_related_instances: int | None = None

    @property
    def identity(self) -> PatientIdentity:
        """The patient this instance names (compared with its study's, see ``identity``)."""
        return PatientIdentity(
            self.patient_id, self.issuer_of_patient_id, self.patient_name, self.patient_birth_date
        )


#: Pixel Data, Float Pixel Data, Double Float Pixel Data: the header ends before these.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: The header is parsed from this much of the data set first (it almost always suffices).
_HEADER_PREFIX = HEADER_PREFIX_BYTES


def _at_pixels(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag in _PIXEL_TAGS


#: What reading a header that pydicom cannot parse raises: the data set is not understood.
HEADER_READ_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    OSError,
    zlib.error,
    NotImplementedError,  # pydicom: an element of an unknown VR
    BytesLengthException,  # pydicom: a binary value of a length its VR cannot have
    struct.error,  # pydicom: the data set ends inside an element's header
)


def parse_header(encoded: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """Parse the identifiers from a received data set's bytes, stopping before the pixels.

    The bytes are the data set as sent (no file meta), in ``transfer_syntax``. Only a prefix is
    parsed when it reaches the pixel data; otherwise the whole data set is.
    """
    syntax = UID(transfer_syntax)
    view = memoryview(encoded)
    try:
        if syntax.is_deflated:
            whole = zlib.decompress(bytes(view), -zlib.MAX_WBITS)
            ds = _read_header(whole, syntax)
        else:
            prefix = bytes(view[:_HEADER_PREFIX])
            ds = _read_header(prefix, syntax, require_pixels=len(prefix) < len(view))
            if ds is None:
                ds = _read_header(bytes(view), syntax)
        assert ds is not None
        return _header_from_dataset(ds)
    except HeaderError:
        raise
    except HEADER_READ_ERRORS as exc:
        raise HeaderError(f"cannot parse the data set: {type(exc).__name__}") from exc


def _read_header(data: bytes, syntax: UID, *, require_pixels: bool = False) -> Dataset | None:
    """The header elements of ``data``; None if ``require_pixels`` and they were not reached."""
    stream = DicomBytesIO(data)
    stream.is_little_endian = syntax.is_little_endian
    stream.is_implicit_VR = syntax.is_implicit_VR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_dataset(
            cast(BinaryIO, stream),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_at_pixels,
            specific_tags=_HEADER_TAG_LIST,
        )
    if require_pixels and stream.tell() >= len(data):
        return None  # the prefix ended before the pixel data: parse everything
    return ds


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    # A sequence where text belongs is no text; printing it would convert its items' elements.
    if value is None or value == "" or isinstance(value, Sequence):
        return None
    return str(value)[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def image_dimension(ds: Dataset, keyword: str) -> int | None:
    """Rows or Columns (US, PS3.3 C.7.6.3) when present and positive, else None."""
    value = _int(ds, keyword)
    return value if value is not None and 0 < value <= 0xFFFF else None


def _uid(ds: Dataset, keyword: str) -> str:
    raw = ds.get(keyword, "")
    if isinstance(raw, Sequence):  # not printed: that would convert its items' elements
        raise HeaderError(f"{keyword} is not a valid UID", missing_identifiers=True)
    value = str(raw or "").strip().rstrip("\x00")
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
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        patient_birth_date=_text(ds, "PatientBirthDate", 8),
        patient_sex=_text(ds, "PatientSex", 16),
        patient_age=_text(ds, "PatientAge", 4),
        rows=image_dimension(ds, "Rows"),
        columns=image_dimension(ds, "Columns"),
        study_related_instances=_positive(ds, "NumberOfStudyRelatedInstances"),
    )


def _positive(ds: Dataset, keyword: str) -> int | None:
    value = _int(ds, keyword)
    return value if value is not None and value > 0 else None


class IngestOutcome(StrEnum):
    """What happened to a received instance."""

    STORED = "stored"
    IDEMPOTENT = "idempotent"  # same UID, same bytes: nothing new
    CONFLICT_KEPT = "conflict_kept"  # same UID, other bytes: kept aside (keep_first)
    REPLACED = "replaced"  # same UID, other bytes: replaced (replace)
    CONFLICT_REJECTED = "conflict_rejected"  # same UID, other bytes: refused (reject)


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
) -> IngestOutcome:
    """Move the temporary file into place and record it; the caller answers Success after this.

    The file is renamed into place and its folder fsynced first, outside the database's write
    transaction, so writers of other instances do not queue behind the disk. File names carry
    the content digest: two different copies never share a path, and a name that exists holds
    these bytes already (a resend, or a copy from before a crash), so it is reused. Then one
    transaction, with the study locked, looks up the SOP Instance UID and settles duplicates:
    a copy this call placed that the outcome does not keep is removed under that lock, and a
    new or replacing row is written only after checking its file is there. A crash between
    rename and commit leaves an unacknowledged file that a resend reuses and start-up
    reconciliation records; a failed commit removes the placed file unless a committed row
    points at it. The caller removes ``tmp`` in every case.
    """
    final = store.path_for(header.study_instance_uid, header.sop_instance_uid, digest.sha256)
    relative = str(final.relative_to(store.root))
    placed = store.place(tmp, final)
    try:
        for attempt in range(_CREATE_RACE_RETRIES):
            try:
                outcome, replaced_path = _record(
                    factory,
                    store,
                    header,
                    tmp,
                    final,
                    digest,
                    placed=placed,
                    transfer_syntax_uid=transfer_syntax_uid,
                    calling_ae_title=calling_ae_title,
                    duplicate_policy=duplicate_policy,
                )
                break
            except IntegrityError:
                # Another association created the same study or series first; its row is now
                # committed, so the next attempt finds and locks it.
                if attempt == _CREATE_RACE_RETRIES - 1:
                    raise
    except BaseException:
        if placed:
            _discard_unreferenced(factory, store, header, relative)
        raise
    if outcome is IngestOutcome.CONFLICT_KEPT:
        kept = store.keep_conflict(final if placed else tmp, header.sop_instance_uid, digest.sha256)
        log.warning(
            "duplicate SOP instance with different content kept aside as %s (keep_first)",
            kept.name,
        )
    if replaced_path is not None and replaced_path != relative:
        _discard_unreferenced(factory, store, header, replaced_path)
        log.warning("duplicate SOP instance with different content replaced the stored copy")
    return outcome


_CREATE_RACE_RETRIES = 3


def _record(
    factory: sessionmaker[Session],
    store: InstanceStore,
    header: InstanceHeader,
    tmp: Path,
    final: Path,
    digest: StoredDigest,
    *,
    placed: bool,
    transfer_syntax_uid: str,
    calling_ae_title: str,
    duplicate_policy: DuplicatePolicy,
) -> tuple[IngestOutcome, str | None]:
    """One attempt, in one transaction; returns the outcome and a replaced file to delete.

    Runs no fsync: the only file operations here are the rare ones that must happen under the
    study's lock (removing a placed copy that is not kept; putting back a copy that a
    concurrent failed writer removed).
    """
    relative = str(final.relative_to(store.root))
    with factory() as session, session.begin():
        # Lock the study first: writers of one study are serialised (SQLite: BEGIN IMMEDIATE).
        study = _get_or_create_study(session, header)
        if header.study_related_instances is not None:
            study.expected_instances = header.study_related_instances
        existing = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
        ).first()
        if existing is not None and existing.sha256 == digest.sha256:
            if placed and existing.storage_path != relative:
                final.unlink(missing_ok=True)  # the recorded copy lives elsewhere
            _mark_received(existing.study, reopen=False)
            return IngestOutcome.IDEMPOTENT, None
        if existing is not None and duplicate_policy is DuplicatePolicy.REJECT:
            if placed:
                final.unlink(missing_ok=True)
            log.warning("duplicate SOP instance with different content refused (reject)")
            return IngestOutcome.CONFLICT_REJECTED, None
        if existing is not None and duplicate_policy is DuplicatePolicy.KEEP_FIRST:
            _mark_received(existing.study, reopen=False)
            return IngestOutcome.CONFLICT_KEPT, None  # moved aside after the commit
        _ensure_in_place(store, tmp, final)
        if existing is not None:  # policy replace: the new copy becomes the analysed one
            replaced = existing.storage_path
            existing.storage_path = relative
            existing.sha256 = digest.sha256
            existing.size_bytes = digest.size_bytes
            existing.transfer_syntax_uid = transfer_syntax_uid
            existing.rows, existing.columns = header.rows, header.columns
            existing.received_at = utcnow()
            existing.eligibility, existing.eligibility_reason = _initial_eligibility(
                header.sop_class_uid
            )
            _check_identity(session, existing.study, existing, header, calling_ae_title)
            _mark_received(existing.study)
            return IngestOutcome.REPLACED, replaced
        _add_instance(
            session,
            study,
            header,
            relative,
            digest,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae_title=calling_ae_title,
        )
    return IngestOutcome.STORED, None


def _ensure_in_place(store: InstanceStore, tmp: Path, final: Path) -> None:
    """Under the study's lock: the file a row will point at is there (put it back if not).

    It is missing only if a concurrent writer of the same bytes failed and removed the copy it
    had placed; this call's temporary file then still exists (it found ``final`` and kept it).
    """
    if final.exists():
        return
    if not tmp.exists():
        raise StorageError(errno.ENOENT, "the stored copy disappeared before it was recorded")
    store.commit(tmp, final)


def _discard_unreferenced(
    factory: sessionmaker[Session], store: InstanceStore, header: InstanceHeader, relative: str
) -> None:
    """Remove a stored copy no committed row points at, under the study's lock; best effort.

    Under the lock, so a concurrent writer that found the copy and is about to record it
    either committed first (the copy stays) or checks for it after (and puts its own back).
    If the database is unavailable the copy stays; start-up reconciliation records it.
    """
    try:
        with factory() as session, session.begin():
            session.scalars(
                select(Study.id)
                .where(Study.study_instance_uid == header.study_instance_uid)
                .with_for_update()
            ).first()
            referenced = session.scalar(
                select(Instance.id).where(Instance.storage_path == relative).limit(1)
            )
            if referenced is None:
                store.absolute(relative).unlink(missing_ok=True)
    except (OSError, SQLAlchemyError, ValueError) as exc:
        log.warning("an unrecorded stored copy is left for reconciliation: %s", type(exc).__name__)


def _add_instance(
    session: Session,
    study: Study,
    header: InstanceHeader,
    relative: str,
    digest: StoredDigest,
    *,
    transfer_syntax_uid: str,
    calling_ae_title: str,
) -> Instance:
    """Insert the row of a new instance whose file is in place; its study is locked."""
    series = _get_or_create_series(session, study, header)
    eligibility, reason = _initial_eligibility(header.sop_class_uid)
    instance = Instance(
        study_id=study.id,
        series_id=series.id,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=header.instance_number,
        rows=header.rows,
        columns=header.columns,
        storage_path=relative,
        sha256=digest.sha256,
        size_bytes=digest.size_bytes,
        calling_ae_title=calling_ae_title[:16],
        eligibility=eligibility,
        eligibility_reason=reason,
    )
    session.add(instance)
    session.flush()
    _check_identity(session, study, instance, header, calling_ae_title)
    _mark_received(study)
    return instance


def record_stored_file(
    factory: sessionmaker[Session],
    store: InstanceStore,
    header: InstanceHeader,
    final: Path,
    digest: StoredDigest,
    *,
    transfer_syntax_uid: str,
    calling_ae_title: str,
) -> IngestOutcome:
    """Record an instance file that is already in place but has no row (start-up recovery).

    The row is inserted as :func:`record_instance` would, so the study is grouped, checked for
    identity conflicts and analysed as usual. If a row for the SOP Instance UID exists already
    (it points at another copy), the file is kept aside under ``conflicts/`` instead: nothing
    that reached the disk is deleted, and the analysed copy is not changed.
    """
    relative = str(final.relative_to(store.root))
    attempts = 0
    while True:
        try:
            return _record_stored_once(
                factory,
                store,
                header,
                final,
                relative,
                digest,
                transfer_syntax_uid=transfer_syntax_uid,
                calling_ae_title=calling_ae_title,
            )
        except IntegrityError:
            # Another writer created the same study or series first: retry, it is found now.
            attempts += 1
            if attempts >= _CREATE_RACE_RETRIES:
                raise


def _record_stored_once(
    factory: sessionmaker[Session],
    store: InstanceStore,
    header: InstanceHeader,
    final: Path,
    relative: str,
    digest: StoredDigest,
    *,
    transfer_syntax_uid: str,
    calling_ae_title: str,
) -> IngestOutcome:
    with factory() as session, session.begin():
        study = _get_or_create_study(session, header)
        existing = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
        ).first()
        if existing is not None and existing.storage_path == relative:
            return IngestOutcome.IDEMPOTENT  # recorded meanwhile
        if existing is not None:
            store.keep_conflict(final, header.sop_instance_uid, digest.sha256)
            return IngestOutcome.CONFLICT_KEPT
        _add_instance(
            session,
            study,
            header,
            relative,
            digest,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae_title=calling_ae_title,
        )
    return IngestOutcome.STORED


def _check_identity(
    session: Session, study: Study, instance: Instance, header: InstanceHeader, calling_ae: str
) -> None:
    """Hold an instance that names another patient than its study out of analysis."""
    conflicts = check_instance_identity(
        session, study, header.identity, instance_id=instance.id, calling_ae_title=calling_ae
    )
    if conflicts:
        instance.eligibility = Eligibility.IDENTITY_CONFLICT
        instance.eligibility_reason = CONFLICT_REASON


def _initial_eligibility(sop_class_uid: str) -> tuple[Eligibility, str | None]:
    if sop_class_uid in RADIOGRAPH_SOP_CLASSES:
        return Eligibility.PENDING, None
    return Eligibility.OUT_OF_SCOPE, "not a CR or DX radiograph storage SOP class"


def _mark_received(study: Study, *, reopen: bool = True) -> None:
    """Arrival of an instance: restart the quiet period; new content reopens a completed study.

    An identical resend (``reopen=False``) extends a study still receiving but does not reopen
    one already analysed.
    """
    if study.status == StudyStatus.RECEIVING or reopen:
        study.last_received_at = utcnow()
    if reopen and study.status == StudyStatus.COMPLETE:
        study.status = StudyStatus.REOPENED


def _get_or_create_study(session: Session, header: InstanceHeader) -> Study:
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == header.study_instance_uid).with_for_update()
    ).first()
    if study is None:
        study = Study(
            study_instance_uid=header.study_instance_uid,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
            issuer_of_patient_id=header.issuer_of_patient_id,
            patient_birth_date=header.patient_birth_date,
            patient_sex=header.patient_sex,
            patient_age=header.patient_age,
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


class IngestRefusedError(Exception):
    """The data set is refused; ``status`` is the C-STORE status that says why."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def file_meta_for(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
) -> FileMetaDataset:
    """File meta for a received instance (PS3.10 7.1); deterministic, so resends hash equal."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def ingest_encoded(
    factory: sessionmaker[Session],
    store: InstanceStore,
    encoded: bytes | memoryview,
    *,
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae_title: str,
    duplicate_policy: DuplicatePolicy,
) -> tuple[IngestOutcome, InstanceHeader]:
    """The whole ingest of one encoded data set held in memory (an upload, a small C-STORE).

    Checks the header against the request's identifiers, writes the bytes as received with our
    file meta (fsynced), moves them into place and records them. Raises
    :class:`IngestRefusedError` with the status to answer when the data set is refused; storage
    and database errors propagate (the caller maps them to "out of resources").
    """
    header = _checked_header(
        lambda: parse_header(encoded, transfer_syntax), sop_class_uid, sop_instance_uid
    )
    meta = file_meta_for(sop_class_uid, sop_instance_uid, transfer_syntax)
    tmp, digest = store.write_temporary(meta, encoded)
    try:
        outcome = _record_checked(
            factory, store, header, tmp, digest, transfer_syntax, calling_ae_title, duplicate_policy
        )
    finally:
        tmp.unlink(missing_ok=True)
    return outcome, header


def ingest_received(
    factory: sessionmaker[Session],
    store: InstanceStore,
    received: ReceivedDataSet,
    *,
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae_title: str,
    duplicate_policy: DuplicatePolicy,
) -> tuple[IngestOutcome, InstanceHeader]:
    """The ingest of a data set received into its temporary file (:mod:`dicom_node.receiving`).

    The header is parsed from the data set's first bytes while the writer thread finishes the
    file; then the file is made durable, moved into place and recorded, as
    :func:`ingest_encoded` does. The temporary file is removed in every case.
    """
    try:
        header = _checked_header(
            lambda: parse_received_header(received, transfer_syntax),
            sop_class_uid,
            sop_instance_uid,
        )
        digest = received.durable()
        outcome = _record_checked(
            factory,
            store,
            header,
            received.path,
            digest,
            transfer_syntax,
            calling_ae_title,
            duplicate_policy,
        )
    finally:
        received.discard()
    return outcome, header


def parse_received_header(received: ReceivedDataSet, transfer_syntax: str) -> InstanceHeader:
    """Parse the header from a received data set's first bytes, reading the file only if needed.

    The file is read for a deflated data set, or when the header does not end within the first
    :data:`~dicom_node.receiving.HEADER_PREFIX_BYTES` (no pixel data, or an unusually long
    header): never for an ordinary image.
    """
    syntax = UID(transfer_syntax)
    whole = len(received.prefix) == received.data_set_length
    if not syntax.is_deflated:
        try:
            ds = _read_header(received.prefix, syntax, require_pixels=not whole)
        except HeaderError:
            raise
        except HEADER_READ_ERRORS as exc:
            if whole:
                raise HeaderError(f"cannot parse the data set: {type(exc).__name__}") from exc
            ds = None  # cut inside an element: the whole data set decides
        if ds is not None:
            try:
                return _header_from_dataset(ds)
            except HeaderError:
                raise
            except HEADER_READ_ERRORS as exc:
                raise HeaderError(f"cannot parse the data set: {type(exc).__name__}") from exc
    return parse_header(received.read_data_set(), transfer_syntax)


def _checked_header(
    parse: Callable[[], InstanceHeader], sop_class_uid: str, sop_instance_uid: str
) -> InstanceHeader:
    """The parsed header, checked against the request's identifiers (PS3.4 B.2.3)."""
    try:
        header = parse()
    except HeaderError as exc:
        status = (
            StoreStatus.MISSING_IDENTIFIERS
            if exc.missing_identifiers
            else StoreStatus.CANNOT_UNDERSTAND
        )
        raise IngestRefusedError(status, str(exc)) from exc
    if header.sop_class_uid != sop_class_uid:
        raise IngestRefusedError(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "data set SOP Class UID differs from the request's",
        )
    if header.sop_instance_uid != sop_instance_uid:
        raise IngestRefusedError(
            StoreStatus.INSTANCE_UID_MISMATCH,
            "data set SOP Instance UID differs from the request's",
        )
    return header


def _record_checked(
    factory: sessionmaker[Session],
    store: InstanceStore,
    header: InstanceHeader,
    tmp: Path,
    digest: StoredDigest,
    transfer_syntax: str,
    calling_ae_title: str,
    duplicate_policy: DuplicatePolicy,
) -> IngestOutcome:
    outcome = record_instance(
        factory,
        store,
        header,
        tmp,
        digest,
        transfer_syntax_uid=transfer_syntax,
        calling_ae_title=calling_ae_title,
        duplicate_policy=duplicate_policy,
    )
    if outcome is IngestOutcome.CONFLICT_REJECTED:
        raise IngestRefusedError(
            StoreStatus.DUPLICATE_CONFLICT, "same SOP Instance UID with different content"
        )
    return outcome


__all__ = [
    "HeaderError",
    "IngestOutcome",
    "IngestRefusedError",
    "InstanceHeader",
    "file_meta_for",
    "ingest_encoded",
    "ingest_received",
    "parse_header",
    "parse_received_header",
    "record_instance",
    "record_stored_file",
]
