"""Recording a radiologist's review, checked against the study, its images and its AI result."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.schemas import ReviewIn
from api.worklist import latest_study_prediction
from db.models import Instance, Series, Study
from db.review import FractureLabel, Review, Verdict


class ReviewRejected(ValueError):  # noqa: N818 - reads as what happened
    """A review that does not fit the study; ``field`` names the offending part of the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class IdempotencyKeyReused(ValueError):  # noqa: N818 - reads as what happened
    """The request's Idempotency-Key already belongs to a different review by the same person."""


def request_sha256(study_id: int, body: ReviewIn) -> str:
    """A fingerprint of a review request: the same study and body give the same digest."""
    canonical = json.dumps(
        {"study_id": study_id, "body": body.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def review_for_key(session: Session, reviewer_id: int, key: str) -> Review | None:
    """The review ``reviewer_id`` already made with Idempotency-Key ``key``, if any."""
    return session.scalars(
        select(Review).where(Review.reviewer_id == reviewer_id, Review.idempotency_key == key)
    ).first()


def replayed_review(existing: Review, fingerprint: str) -> Review:
    """``existing`` when it was made by the same request; a reused key is refused."""
    if existing.request_sha256 != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used for a different review; "
            "send a new key for a new review"
        )
    return existing


def _label_of(positive: bool) -> FractureLabel:
    return FractureLabel.FRACTURED if positive else FractureLabel.NOT_FRACTURED


def create_review(
    session: Session,
    study: Study,
    reviewer_id: int,
    body: ReviewIn,
    *,
    idempotency_key: str | None = None,
) -> Review:
    """Add a review of ``study``'s current AI result to ``session`` (the caller commits).

    With an ``idempotency_key`` the flush raises ``IntegrityError`` when the reviewer already
    has a review with that key (the database's unique constraint).
    """
    prediction = latest_study_prediction(session, study.id)
    ai_positive = prediction.positive if prediction is not None else None
    if body.verdict is Verdict.AGREE:
        if ai_positive is None:
            raise ReviewRejected(
                "verdict", "the study has no AI result to agree with; disagree and give the label"
            )
        label = _label_of(ai_positive)
        if body.label is not None and body.label is not label:
            raise ReviewRejected("label", f"agreeing with the AI result means the label {label}")
    else:
        assert body.label is not None  # checked by ReviewIn
        label = body.label
        if ai_positive is not None and label is _label_of(ai_positive):
            raise ReviewRejected("label", "a disagreeing review needs the other label")
    if body.location is not None and label is not FractureLabel.FRACTURED:
        # A marked fracture on a study labelled not fractured would teach the model both.
        raise ReviewRejected(
            "location",
            "a fracture location goes only with the label fractured; "
            "remove the marked point to record no fracture",
        )

    body_part: str | None = None
    instance: Instance | None = None
    if body.image_id is not None:
        instance = session.get(Instance, body.image_id)
        if instance is None or instance.study_id != study.id:
            raise ReviewRejected("image_id", "no such image in this study")
        body_part = session.scalar(
            select(Series.body_part_examined).where(Series.id == instance.series_id)
        )
    else:
        body_part = session.scalar(
            select(Series.body_part_examined)
            .where(Series.study_id == study.id, Series.body_part_examined.is_not(None))
            .order_by(Series.body_part_examined)
            .limit(1)
        )
    if body.location is not None:
        assert instance is not None  # checked by ReviewIn
        rows, columns = instance.rows, instance.columns
        if rows is None or columns is None:
            raise ReviewRejected("location", "the image's size is not known")
        if not (body.location.x < columns and body.location.y < rows):
            raise ReviewRejected(
                "location", f"the point lies outside the image of {columns} x {rows} pixels"
            )
    review = Review(
        study_id=study.id,
        reviewer_id=reviewer_id,
        verdict=body.verdict,
        label=label,
        instance_id=instance.id if instance is not None else None,
        location_x=body.location.x if body.location else None,
        location_y=body.location.y if body.location else None,
        comment=body.comment,
        study_prediction_id=prediction.id if prediction is not None else None,
        ai_probability=prediction.probability if prediction is not None else None,
        ai_positive=ai_positive,
        model_name=prediction.model_name if prediction is not None else None,
        model_version=prediction.model_version if prediction is not None else None,
        body_part=body_part,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256(study.id, body),
    )
    session.add(review)
    session.flush()
    return review
