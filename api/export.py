"""Feedback export: reviewed radiographs as de-identified PNGs in the trainer's class folders.

Layout (what ``training.datasets`` reads as class folders)::

    <out>/Fractured/<pseudonym>.png
    <out>/Non_fractured/<pseudonym>.png
    <out>/reviews.csv
    <out>/findings.csv

De-identification follows the Basic Application Level Confidentiality Profile (DICOM PS3.15
Annex E): the PNGs hold only pixels of the original radiograph through
:func:`inference.pixels.display_grey` (no text chunks, no header), images whose Burned In
Annotation is not ``NO`` are left out (the Clean Pixel Data option is not offered), our own
Secondary Captures are never exported, and the sidecar CSV keeps no identifiers, dates or free
text: file names are keyed hashes of the SOP Instance UID (E.1.1 "replace with a dummy value"
consistent within this installation, so a new export overwrites rather than duplicates).

``findings.csv`` holds the readers' per-finding feedback on the exported images: each of the
model's boxes judged right or wrong, and each box drawn where the model missed a fracture, in
the exported picture's pixels. A reader's latest verdict on a box counts; missed boxes are all
kept. No free text, no reader names.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from audit import events
from audit.codes import EventId
from audit.events import Actor
from db.engine import reading, writing
from db.models import Eligibility, Instance, Series
from db.review import AuditAction, FindingFeedback, FindingVerdict, FractureLabel, Review
from dicom_node.storage import InstanceStore
from inference.errors import NotAnalysable
from inference.pixels import display_grey

log = logging.getLogger(__name__)

#: The trainer's class folder for each label.
CLASS_FOLDERS = {
    FractureLabel.FRACTURED: "Fractured",
    FractureLabel.NOT_FRACTURED: "Non_fractured",
}
SIDECAR = "reviews.csv"
SIDECAR_COLUMNS = (
    "file",
    "label",
    "verdict",
    "ai_positive",
    "ai_probability",
    "model_name",
    "model_version",
    "modality",
    "body_part",
    "location_x",
    "location_y",
)
FINDINGS_SIDECAR = "findings.csv"
FINDINGS_COLUMNS = (
    "file",
    "verdict",
    "x0",
    "y0",
    "x1",
    "y1",
    "ai_probability",
    "operating_points",
    "model_name",
    "model_version",
)
#: Longest side of an exported picture (the trainer resizes further).
EXPORT_MAX_SIZE = 2048


@dataclass
class ExportSummary:
    """What an export wrote and what it left out (by reason)."""

    written: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(CLASS_FOLDERS.values(), 0)
    )
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.written.values())


def export_key(home: Path) -> bytes:
    """This installation's pseudonym key, made on first use (``<home>/export.key``, mode 0600)."""
    path = home / "export.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


def pseudonym(key: bytes, sop_instance_uid: str) -> str:
    """A stable, non-reversible name for an image (keyed SHA-256, 20 hex digits)."""
    return hmac.new(key, sop_instance_uid.encode(), hashlib.sha256).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class _Item:
    review: Review
    instance: Instance
    modality: str | None
    body_part: str | None


def _items(session: Session) -> Iterator[_Item]:
    """Each study's latest review with the images it labels (eligible radiographs)."""
    latest = select(func.max(Review.id).label("id")).group_by(Review.study_id).subquery()
    for review in session.scalars(
        select(Review).join(latest, latest.c.id == Review.id).order_by(Review.id)
    ):
        query = (
            select(Instance, Series.modality, Series.body_part_examined)
            .join(Series, Series.id == Instance.series_id)
            .where(
                Instance.study_id == review.study_id,
                Instance.eligibility == Eligibility.ELIGIBLE.value,
            )
            .order_by(Instance.id)
        )
        if review.instance_id is not None:
            query = query.where(Instance.id == review.instance_id)
        for instance, modality, body_part in session.execute(query):
            yield _Item(review, instance, modality, body_part)


def _feedback(session: Session, instance_ids: list[int]) -> dict[int, list[FindingFeedback]]:
    """Each image's finding feedback: a reader's latest verdict per box, every missed box."""
    latest: dict[tuple[int, int, int], FindingFeedback] = {}
    missed: list[FindingFeedback] = []
    for feedback in session.scalars(
        select(FindingFeedback)
        .where(FindingFeedback.instance_id.in_(instance_ids))
        .order_by(FindingFeedback.id)
    ):
        if feedback.verdict == FindingVerdict.MISSED or feedback.region_index is None:
            missed.append(feedback)
        else:
            key = (feedback.instance_id, feedback.reviewer_id, feedback.region_index)
            latest[key] = feedback
    found: dict[int, list[FindingFeedback]] = {}
    for feedback in sorted([*latest.values(), *missed], key=lambda f: f.id):
        found.setdefault(feedback.instance_id, []).append(feedback)
    return found


def _finding_row(file: str, feedback: FindingFeedback, scale: float) -> dict[str, object]:
    return {
        "file": file,
        "verdict": str(feedback.verdict),
        **{name: f"{getattr(feedback, name) * scale:.1f}" for name in ("x0", "y0", "x1", "y1")},
        "ai_probability": ""
        if feedback.ai_probability is None
        else f"{feedback.ai_probability:.4f}",
        "operating_points": feedback.operating_points or "",
        "model_name": feedback.model_name or "",
        "model_version": feedback.model_version or "",
    }


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, object]]) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _write_png(path: Path, grey: np.ndarray) -> None:
    pixels = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(encoded.tobytes())
    tmp.replace(path)


def export_reviews(
    sessions: sessionmaker[Session],
    store: InstanceStore,
    out: Path,
    *,
    key: bytes,
    actor: Actor,
) -> ExportSummary:
    """Write every reviewed image into ``out`` (see the module's description); audited."""
    summary = ExportSummary()
    for folder in CLASS_FOLDERS.values():
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    finding_rows: list[dict[str, object]] = []
    with reading(sessions) as session:
        items = list(_items(session))
        feedback = _feedback(session, [item.instance.id for item in items])
    for item in items:
        try:
            ds = dcmread(store.absolute(item.instance.storage_path))
        except (OSError, InvalidDicomError, ValueError) as exc:
            log.warning("export: image id %d unreadable (%s)", item.instance.id, type(exc).__name__)
            summary.skip("unreadable")
            continue
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() not in ("NO", ""):
            summary.skip("burned_in_annotation")
            continue
        try:
            grey = display_grey(ds, max_size=EXPORT_MAX_SIZE)
        except NotAnalysable as exc:
            summary.skip(exc.reason)
            continue
        label = FractureLabel(item.review.label)
        folder = CLASS_FOLDERS[label]
        name = f"{pseudonym(key, item.instance.sop_instance_uid)}.png"
        _write_png(out / folder / name, grey)
        for other in CLASS_FOLDERS.values():  # a label changed since the last export
            if other != folder:
                (out / other / name).unlink(missing_ok=True)
        summary.written[folder] += 1
        scale = max(grey.shape) / max(int(ds.Rows), int(ds.Columns))
        finding_rows.extend(
            _finding_row(f"{folder}/{name}", found, scale)
            for found in feedback.get(item.instance.id, [])
        )
        on_image = item.review.instance_id == item.instance.id
        rows.append(
            {
                "file": f"{folder}/{name}",
                "label": label.value,
                "verdict": item.review.verdict,
                "ai_positive": ""
                if item.review.ai_positive is None
                else int(item.review.ai_positive),
                "ai_probability": (
                    ""
                    if item.review.ai_probability is None
                    else f"{item.review.ai_probability:.4f}"
                ),
                "model_name": item.review.model_name or "",
                "model_version": item.review.model_version or "",
                "modality": item.modality or "",
                "body_part": item.body_part or "",
                "location_x": (
                    f"{item.review.location_x * scale:.1f}"
                    if on_image and item.review.location_x is not None
                    else ""
                ),
                "location_y": (
                    f"{item.review.location_y * scale:.1f}"
                    if on_image and item.review.location_y is not None
                    else ""
                ),
            }
        )
    _write_csv(out / SIDECAR, SIDECAR_COLUMNS, rows)
    _write_csv(out / FINDINGS_SIDECAR, FINDINGS_COLUMNS, finding_rows)
    with writing(sessions) as session:
        events.record(
            session,
            actor,
            EventId.EXPORT,
            AuditAction.READ,
            object_type="review_export",
            detail=f"{summary.total} reviewed images exported as de-identified PNG, "
            f"{len(finding_rows)} finding verdicts",
        )
    return summary
