"""The radiologist worklist and the study view, assembled from the database.

Priority order (the default sort): positive at the high-specificity point first, then positive
at the configured point, then negative, then no result; within each, studies nobody reviewed
before reviewed ones, then oldest first. Only internal ids appear in the URLs built here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, case, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from api.findings import feedback_by_image
from api.schemas import (
    DeliveryOut,
    ImageOut,
    ImageResultOut,
    Point,
    ResultObjectOut,
    ReviewOut,
    ReviewSummary,
    StudyDetail,
    StudyResultOut,
    Worklist,
    WorklistItem,
    WorklistVersion,
)
from db.models import (
    Eligibility,
    ImagePrediction,
    Instance,
    Series,
    Study,
    StudyPrediction,
    StudyStatus,
)
from db.results import OutboxEntry, ResultObject
from db.review import FractureLabel, Review, User, Verdict

log = logging.getLogger(__name__)

_OrderBy = ColumnElement[Any] | InstrumentedAttribute[Any]

#: An image positive at the high-sensitivity point.
_SENSITIVE = ImagePrediction.positive_high_sensitivity.is_(True)


class WorklistSort(StrEnum):
    """The worklist's order."""

    PRIORITY = "priority"  # positives, then unreviewed, then oldest first (the default)
    OLDEST = "oldest"  # first received first
    NEWEST = "newest"  # last received first
    PROBABILITY = "probability"  # highest probability first


class AiResult(StrEnum):
    """The worklist's AI result filter."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    NONE = "none"  # no result yet (or no analysable image)


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    """The worklist's filters; every field is optional."""

    status: StudyStatus | None = None
    result: AiResult | None = None
    min_probability: float | None = None
    max_probability: float | None = None
    body_part: str | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    reviewed: bool | None = None
    identity_conflict: bool | None = None


def study_url(study_id: int) -> str:
    return f"/api/studies/{study_id}"


def image_url(study_id: int, image_id: int, picture: str) -> str:
    return f"/api/studies/{study_id}/images/{image_id}/{picture}.png"


def pixels_url(study_id: int, image_id: int) -> str:
    return f"/api/studies/{study_id}/images/{image_id}/pixels"


def age_at_study(study: Study) -> str | None:
    """Patient's Age as sent, else whole years from the birth date to the study date (``045Y``).

    Both dates are DA values (``YYYYMMDD``, PS3.5 6.2); anything else gives no age.
    """
    if study.patient_age:
        return study.patient_age
    try:
        born = datetime.strptime(study.patient_birth_date or "", "%Y%m%d").date()
        seen = datetime.strptime(study.study_date or "", "%Y%m%d").date()
    except ValueError:
        return None
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years:03d}Y" if 0 <= years <= 999 else None


def _latest_prediction_ids() -> Select[int, int]:
    return select(
        StudyPrediction.study_id.label("study_id"), func.max(StudyPrediction.id).label("pid")
    ).group_by(StudyPrediction.study_id)


def _conditions(
    flt: WorklistFilter, prediction: type[StudyPrediction]
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if flt.status is not None:
        where.append(Study.status == flt.status.value)
    if flt.result is AiResult.POSITIVE:
        where.append(prediction.positive.is_(True))
    elif flt.result is AiResult.NEGATIVE:
        where.append(prediction.positive.is_(False))
    elif flt.result is AiResult.NONE:
        where.append(prediction.positive.is_(None))
    if flt.min_probability is not None:
        where.append(prediction.probability >= flt.min_probability)
    if flt.max_probability is not None:
        where.append(prediction.probability <= flt.max_probability)
    if flt.body_part is not None:
        where.append(
            exists(
                select(Series.id).where(
                    Series.study_id == Study.id,
                    func.upper(Series.body_part_examined) == flt.body_part.strip().upper(),
                )
            )
        )
    if flt.study_date_from is not None:
        where.append(Study.study_date >= flt.study_date_from.strftime("%Y%m%d"))
    if flt.study_date_to is not None:
        where.append(Study.study_date <= flt.study_date_to.strftime("%Y%m%d"))
    if flt.received_from is not None:
        where.append(Study.first_received_at >= flt.received_from)
    if flt.received_to is not None:
        where.append(Study.first_received_at < flt.received_to)
    if flt.identity_conflict is not None:
        where.append(Study.identity_conflict.is_(flt.identity_conflict))
    if flt.reviewed is not None:
        reviewed = exists(select(Review.id).where(Review.study_id == Study.id))
        where.append(reviewed if flt.reviewed else ~reviewed)
    return where


def _order(sort: WorklistSort, prediction: type[StudyPrediction]) -> list[_OrderBy]:
    if sort is WorklistSort.OLDEST:
        return [Study.first_received_at, Study.id]
    if sort is WorklistSort.NEWEST:
        return [Study.last_received_at.desc(), Study.id.desc()]
    if sort is WorklistSort.PROBABILITY:
        return [prediction.probability.desc().nulls_last(), Study.first_received_at, Study.id]
    priority = case(
        (prediction.positive_high_specificity.is_(True), 0),
        (prediction.positive.is_(True), 1),
        (prediction.positive.is_(False), 2),
        else_=3,
    )
    reviewed = case((exists(select(Review.id).where(Review.study_id == Study.id)), 1), else_=0)
    return [priority, reviewed, Study.first_received_at, Study.id]


def worklist(
    session: Session,
    flt: WorklistFilter,
    *,
    limit: int,
    offset: int,
    sort: WorklistSort = WorklistSort.PRIORITY,
) -> Worklist:
    """One page of the worklist in ``sort`` order, and the number of matching studies."""
    latest = _latest_prediction_ids().subquery()
    prediction = aliased(StudyPrediction)
    base = (
        select(Study, prediction)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(prediction, prediction.id == latest.c.pid)
        .where(*_conditions(flt, prediction))
    )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    rows = session.execute(
        base.order_by(*_order(sort, prediction)).limit(limit).offset(offset)
    ).all()
    items = _items(session, [(row[0], row[1]) for row in rows])
    return Worklist(total=int(total), limit=limit, offset=offset, items=items)


def worklist_version(session: Session) -> WorklistVersion:
    """A fingerprint of what the worklist shows, from a few indexed aggregates.

    New studies and images, completions, reopenings, results, reviews and resolved identity
    conflicts each move one of the numbers, so a page can poll this cheaply and fetch the
    worklist only when it changed.
    """
    row = session.execute(
        select(
            select(func.count(Study.id)).scalar_subquery(),
            select(func.max(Study.last_received_at)).scalar_subquery(),
            select(func.max(Study.completed_at)).scalar_subquery(),
            select(func.sum(Study.generation)).scalar_subquery(),
            select(func.count(Study.id)).where(Study.identity_conflict.is_(True)).scalar_subquery(),
            select(func.max(Instance.id)).scalar_subquery(),
            select(func.max(StudyPrediction.id)).scalar_subquery(),
            select(func.max(Review.id)).scalar_subquery(),
        )
    ).one()
    return WorklistVersion(version="|".join("" if value is None else str(value) for value in row))


def _pairs(rows: Iterable[Row[int, int]]) -> dict[int, int]:
    return {int(key): int(value) for key, value in rows}


def _items(
    session: Session, rows: list[tuple[Study, StudyPrediction | None]]
) -> list[WorklistItem]:
    ids = [study.id for study, _ in rows]
    if not ids:
        return []
    parts: dict[int, set[str]] = defaultdict(set)
    modalities: dict[int, set[str]] = defaultdict(set)
    for study_id, modality, part in session.execute(
        select(Series.study_id, Series.modality, Series.body_part_examined).where(
            Series.study_id.in_(ids)
        )
    ):
        if part:
            parts[study_id].add(part)
        if modality:
            modalities[study_id].add(modality)
    counts: dict[int, int] = _pairs(
        session.execute(
            select(Instance.study_id, func.count())
            .where(Instance.study_id.in_(ids))
            .group_by(Instance.study_id)
        )
    )
    job_ids = [prediction.job_id for _, prediction in rows if prediction is not None]
    sensitive: dict[int, bool] = {
        int(job_id): bool(positive)
        for job_id, positive in session.execute(
            select(ImagePrediction.job_id, func.max(case((_SENSITIVE, 1), else_=0)))
            .where(ImagePrediction.job_id.in_(job_ids))
            .group_by(ImagePrediction.job_id)
        )
    }
    scope: dict[int, list[tuple[str, str | None]]] = defaultdict(list)
    for study_id, eligibility, reason in session.execute(
        select(Instance.study_id, Instance.eligibility, Instance.eligibility_reason).where(
            Instance.study_id.in_(ids)
        )
    ):
        scope[study_id].append((str(eligibility), reason))
    latest_reviews: dict[int, ReviewSummary] = {}
    for review, username in session.execute(
        select(Review, User.username)
        .join(User, User.id == Review.reviewer_id)
        .where(Review.study_id.in_(ids))
        .order_by(Review.created_at, Review.id)
    ):
        latest_reviews[review.study_id] = ReviewSummary(
            id=review.id,
            verdict=Verdict(review.verdict),
            label=FractureLabel(review.label),
            reviewer=username,
            created_at=review.created_at,
        )
    return [
        _item(
            study,
            prediction,
            sorted(parts[study.id]),
            sorted(modalities[study.id]),
            int(counts.get(study.id, 0)),
            latest_reviews.get(study.id),
            sensitive.get(prediction.job_id) if prediction is not None else None,
            not_applicable(prediction, scope[study.id]),
        )
        for study, prediction in rows
    ]


def not_applicable(
    prediction: StudyPrediction | None, images: list[tuple[str, str | None]]
) -> str | None:
    """Why a study has no probability: every image is outside what the model covers.

    ``images`` holds each image's eligibility and reason. A study still waiting for analysis
    (an image pending or eligible without a result) has no such reason.
    """
    if prediction is not None and prediction.probability is not None:
        return None
    if not images or any(
        eligibility in (Eligibility.PENDING, Eligibility.ELIGIBLE) for eligibility, _ in images
    ):
        return None
    reasons = sorted({reason or eligibility.replace("_", " ") for eligibility, reason in images})
    return "; ".join(reasons)[:512]


def _item(
    study: Study,
    prediction: StudyPrediction | None,
    body_parts: list[str],
    modalities: list[str],
    n_images: int,
    latest_review: ReviewSummary | None,
    positive_high_sensitivity: bool | None,
    not_applicable_reason: str | None,
) -> WorklistItem:
    result = None
    turnaround = None
    if prediction is not None:
        result = StudyResultOut.model_validate(prediction)
        if prediction.probability is not None:
            result.positive_high_sensitivity = positive_high_sensitivity
        turnaround = (prediction.created_at - study.first_received_at).total_seconds()
    return WorklistItem(
        id=study.id,
        url=study_url(study.id),
        status=str(study.status),
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        patient_sex=study.patient_sex,
        patient_age=age_at_study(study),
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        body_parts=body_parts,
        modalities=modalities,
        n_images=n_images,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        result=result,
        turnaround_s=turnaround,
        not_applicable_reason=not_applicable_reason,
        reviewed=latest_review is not None,
        latest_review=latest_review,
        identity_conflict=study.identity_conflict,
    )


def latest_study_prediction(session: Session, study_id: int) -> StudyPrediction | None:
    return session.scalars(
        select(StudyPrediction)
        .where(StudyPrediction.study_id == study_id)
        .order_by(StudyPrediction.id.desc())
        .limit(1)
    ).first()


def latest_image_prediction(session: Session, instance_id: int) -> ImagePrediction | None:
    return session.scalars(
        select(ImagePrediction)
        .where(ImagePrediction.instance_id == instance_id)
        .order_by(ImagePrediction.id.desc())
        .limit(1)
    ).first()


def study_detail(session: Session, study: Study) -> StudyDetail:
    """Everything the study view shows, from the database only (no file is opened)."""
    prediction = latest_study_prediction(session, study.id)
    item = _items(session, [(study, prediction)])[0]
    instances = session.execute(
        select(Instance, Series)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study.id)
        .order_by(Series.series_number, Instance.instance_number, Instance.id)
    )
    feedback = feedback_by_image(session, study.id)
    images: list[ImageOut] = []
    for instance, series in instances:
        result = latest_image_prediction(session, instance.id)
        images.append(
            ImageOut(
                id=instance.id,
                series_id=series.id,
                instance_number=instance.instance_number,
                modality=series.modality,
                body_part=series.body_part_examined,
                eligibility=str(instance.eligibility),
                eligibility_reason=instance.eligibility_reason,
                rows=instance.rows,
                columns=instance.columns,
                received_at=instance.received_at,
                result=ImageResultOut.model_validate(result) if result is not None else None,
                preview_url=image_url(study.id, instance.id, "preview"),
                heatmap_url=(
                    image_url(study.id, instance.id, "heatmap")
                    if result is not None and result.heatmap_path
                    else None
                ),
                pixels_url=pixels_url(study.id, instance.id),
                feedback=feedback.get(instance.id, []),
            )
        )
    results = [
        StudyResultOut.model_validate(p)
        for p in session.scalars(
            select(StudyPrediction)
            .where(StudyPrediction.study_id == study.id)
            .order_by(StudyPrediction.id.desc())
        )
    ]
    return StudyDetail(
        **item.model_dump(),
        images=images,
        results=results,
        result_objects=_result_objects(session, study.id),
        reviews=reviews_of(session, study.id),
    )


def _result_objects(session: Session, study_id: int) -> list[ResultObjectOut]:
    objects = list(
        session.scalars(
            select(ResultObject).where(ResultObject.study_id == study_id).order_by(ResultObject.id)
        )
    )
    deliveries: dict[int, list[DeliveryOut]] = defaultdict(list)
    if objects:
        for entry in session.scalars(
            select(OutboxEntry)
            .where(OutboxEntry.result_object_id.in_([o.id for o in objects]))
            .order_by(OutboxEntry.id)
        ):
            deliveries[entry.result_object_id].append(DeliveryOut.model_validate(entry))
    return [
        ResultObjectOut(
            id=o.id,
            kind=str(o.kind),
            model_name=o.model_name,
            model_version=o.model_version,
            source_image_id=o.source_instance_id,
            created_at=o.created_at,
            deliveries=deliveries[o.id],
        )
        for o in objects
    ]


def review_out(review: Review, reviewer: str) -> ReviewOut:
    location = (
        Point(x=review.location_x, y=review.location_y)
        if review.location_x is not None and review.location_y is not None
        else None
    )
    return ReviewOut(
        id=review.id,
        reviewer=reviewer,
        verdict=Verdict(review.verdict),
        label=FractureLabel(review.label),
        image_id=review.instance_id,
        location=location,
        comment=review.comment,
        study_result_id=review.study_prediction_id,
        ai_probability=review.ai_probability,
        ai_positive=review.ai_positive,
        model_name=review.model_name,
        model_version=review.model_version,
        created_at=review.created_at,
    )


def reviews_of(session: Session, study_id: int) -> list[ReviewOut]:
    """A study's reviews, newest first."""
    rows = session.execute(
        select(Review, User.username)
        .join(User, User.id == Review.reviewer_id)
        .where(Review.study_id == study_id)
        .order_by(Review.created_at.desc(), Review.id.desc())
    )
    return [review_out(review, name) for review, name in rows]
