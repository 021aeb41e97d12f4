"""The worklist, the study view, its pictures and reviews. Every read is audited."""

from __future__ import annotations

from datetime import date, datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import ContextDep, CurrentUser, Principal, PrincipalKind, ReaderDep, SessionDep
from api.findings import FeedbackRejected, create_feedback, feedback_out
from api.pictures import DEFAULT_SIZE, MAX_SIZE, PictureUnavailable, heatmap_png, preview_png
from api.reviews import (
    IdempotencyKeyReused,
    ReviewRejected,
    create_review,
    replayed_review,
    request_sha256,
    review_for_key,
)
from api.schemas import (
    AUTH_RESPONSES,
    NOT_FOUND,
    ErrorBody,
    FindingFeedbackIn,
    FindingFeedbackOut,
    ReviewIn,
    ReviewOut,
    StudyDetail,
    Worklist,
    WorklistVersion,
)
from api.viewer_pixels import viewer_pixels_of
from api.worklist import (
    AiResult,
    WorklistFilter,
    WorklistSort,
    latest_image_prediction,
    review_out,
    study_detail,
    study_url,
    worklist,
    worklist_version,
)
from audit import events
from audit.codes import EventId
from db.models import Instance, Study, StudyStatus
from db.review import AuditAction, AuditOutcome
from dicom_node.sizes import read_image_size

router = APIRouter(prefix="/api/studies", tags=["studies"], responses=AUTH_RESPONSES)

StudyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The study's internal id")]
ImageId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The image's internal id")]
PNG_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG picture"},
    **NOT_FOUND,
    409: {"model": ErrorBody, "description": "The picture cannot be made from the stored data"},
}


def unprocessable(field: str, message: str) -> HTTPException:
    """A 422 in the same shape as FastAPI's own validation errors."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}],
    )


def _study_or_404(reader: Session, session: Session, principal: Principal, study_id: int) -> Study:
    """The study read with ``reader``; a 404 (audited through ``session``) when there is none."""
    study = reader.get(Study, study_id)
    if study is None:
        events.record(
            session,
            principal.actor,
            EventId.PATIENT_RECORD,
            AuditAction.READ,
            AuditOutcome.MINOR_FAILURE,
            object_type="study",
            object_id=study_id,
            detail="no such study",
        )
        session.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    return study


@router.get("", response_model=Worklist)
def list_studies(
    principal: CurrentUser,
    reader: ReaderDep,
    session: SessionDep,
    status_: Annotated[StudyStatus | None, Query(alias="status")] = None,
    result: Annotated[AiResult | None, Query(description="The latest AI result")] = None,
    min_probability: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    max_probability: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    body_part: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    study_date_from: date | None = None,
    study_date_to: date | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    reviewed: bool | None = None,
    identity_conflict: Annotated[
        bool | None, Query(description="Only studies with (or without) an identity conflict")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    sort: Annotated[
        WorklistSort,
        Query(
            description="priority: positive at high specificity, then positive, negative, no "
            "result; unreviewed before reviewed; oldest first"
        ),
    ] = WorklistSort.PRIORITY,
) -> Worklist:
    """The worklist, filtered, sorted and paginated (see ``sort``)."""
    for name, moment in (("received_from", received_from), ("received_to", received_to)):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[
                    {
                        "loc": ["query", name],
                        "msg": "a timestamp needs a time zone (e.g. Z)",
                        "type": "value_error",
                    }
                ],
            )
    flt = WorklistFilter(
        status=status_,
        result=result,
        min_probability=min_probability,
        max_probability=max_probability,
        body_part=body_part,
        study_date_from=study_date_from,
        study_date_to=study_date_to,
        received_from=received_from,
        received_to=received_to,
        reviewed=reviewed,
        identity_conflict=identity_conflict,
    )
    page = worklist(reader, flt, limit=limit, offset=offset, sort=sort)
    events.record(
        session,
        principal.actor,
        EventId.QUERY,
        AuditAction.EXECUTE,
        object_type="worklist",
        detail=f"{len(page.items)} of {page.total} studies returned",
    )
    session.commit()
    return page


@router.get("/version", response_model=WorklistVersion)
def get_worklist_version(_principal: CurrentUser, reader: ReaderDep) -> WorklistVersion:
    """A fingerprint of the worklist: poll it, and fetch the worklist only when it changes.

    It holds counts and internal ids only, so it is not audited (the worklist fetch is).
    """
    return worklist_version(reader)


@router.get("/{study_id}", response_model=StudyDetail, responses=NOT_FOUND)
def get_study(
    study_id: StudyId, principal: CurrentUser, reader: ReaderDep, session: SessionDep
) -> StudyDetail:
    """A study: images, per-image and study results, result objects and deliveries, reviews."""
    study = _study_or_404(reader, session, principal, study_id)
    detail = study_detail(reader, study)
    events.record(
        session,
        principal.actor,
        EventId.PATIENT_RECORD,
        AuditAction.READ,
        object_type="study",
        object_id=study.id,
    )
    session.commit()
    return detail


async def _picture(
    context: ContextDep,
    reader: Session,
    session: Session,
    principal: Principal,
    study_id: int,
    image_id: int,
    *,
    heatmap: bool,
    max_size: int,
    overlay: bool = False,
    values: bool = False,
) -> Response:
    def lookup() -> tuple[str, str | None] | None:
        instance = reader.get(Instance, image_id)
        found = instance is not None and instance.study_id == study_id
        heatmap_path = None
        if instance is not None and found:
            prediction = latest_image_prediction(reader, instance.id)
            heatmap_path = prediction.heatmap_path if prediction is not None else None
        usable = found and (heatmap_path is not None or not heatmap)
        events.record(
            session,
            principal.actor,
            EventId.INSTANCES_ACCESSED,
            AuditAction.READ,
            AuditOutcome.SUCCESS if usable else AuditOutcome.MINOR_FAILURE,
            object_type="image",
            object_id=image_id,
            detail="heat map" if heatmap else ("values" if values else "preview"),
        )
        session.commit()
        if not usable or instance is None:
            return None
        return instance.storage_path, heatmap_path

    found = await run_in_threadpool(lookup)
    if found is None:
        what = "heat map" if heatmap else "image"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what} in this study")
    storage_path, heatmap_path = found
    media_type = "image/png"
    try:
        if heatmap:
            assert heatmap_path is not None
            body = await run_in_threadpool(
                partial(heatmap_png, overlay=overlay),
                context.store,
                storage_path,
                heatmap_path,
                max_size,
            )
        elif values:
            media_type = "application/octet-stream"
            body = await run_in_threadpool(
                viewer_pixels_of, context.store.absolute(storage_path), max_size
            )
        else:
            body = await run_in_threadpool(preview_png, context.store, storage_path, max_size)
    except PictureUnavailable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})


MaxSize = Annotated[
    int, Query(ge=64, le=MAX_SIZE, description="Longest side of the picture in pixels")
]


@router.get(
    "/{study_id}/images/{image_id}/preview.png",
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def preview(
    study_id: StudyId,
    image_id: ImageId,
    principal: CurrentUser,
    reader: ReaderDep,
    session: SessionDep,
    context: ContextDep,
    max_size: MaxSize = DEFAULT_SIZE,
) -> Response:
    """The radiograph, through the model's grey chain, as PNG."""
    return await _picture(
        context, reader, session, principal, study_id, image_id, heatmap=False, max_size=max_size
    )


@router.get(
    "/{study_id}/images/{image_id}/heatmap.png",
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def heatmap(
    study_id: StudyId,
    image_id: ImageId,
    principal: CurrentUser,
    reader: ReaderDep,
    session: SessionDep,
    context: ContextDep,
    max_size: MaxSize = DEFAULT_SIZE,
    overlay: Annotated[
        bool, Query(description="Only the heat colours on a transparent background (RGBA)")
    ] = False,
) -> Response:
    """The radiograph with its Grad-CAM heat map blended in colour, as PNG."""
    return await _picture(
        context,
        reader,
        session,
        principal,
        study_id,
        image_id,
        heatmap=True,
        max_size=max_size,
        overlay=overlay,
    )


@router.get(
    "/{study_id}/images/{image_id}/pixels",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The image's modality values and its own window, for window/level "
            "(format: api/viewer_pixels.py, docs/API.md)",
        },
        **NOT_FOUND,
        409: {"model": ErrorBody, "description": "The values cannot be read from the stored data"},
    },
)
async def pixels(
    study_id: StudyId,
    image_id: ImageId,
    principal: CurrentUser,
    reader: ReaderDep,
    session: SessionDep,
    context: ContextDep,
    max_size: MaxSize = DEFAULT_SIZE,
) -> Response:
    """The radiograph's values before windowing, quantised to 16 bits, for the viewer."""
    return await _picture(
        context,
        reader,
        session,
        principal,
        study_id,
        image_id,
        heatmap=False,
        max_size=max_size,
        values=True,
    )


@router.post(
    "/{study_id}/images/{image_id}/feedback",
    response_model=FindingFeedbackOut,
    status_code=status.HTTP_201_CREATED,
    responses={**NOT_FOUND, 403: {"model": ErrorBody, "description": "Feedback comes from people"}},
)
def give_finding_feedback(
    study_id: StudyId,
    image_id: ImageId,
    body: FindingFeedbackIn,
    principal: CurrentUser,
    reader: ReaderDep,
    session: SessionDep,
    context: ContextDep,
) -> FindingFeedbackOut:
    """Say whether one of the image's boxes is a fracture, or draw one the model missed."""
    if principal.kind is not PrincipalKind.USER:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "feedback is given by people, not tokens")
    study = _study_or_404(reader, session, principal, study_id)
    instance = reader.get(Instance, image_id)
    if instance is None or instance.study_id != study.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image in this study")
    size = _image_size(context, instance) if body.box is not None else None
    try:
        feedback = create_feedback(session, instance, principal.id, body, size)
    except FeedbackRejected as exc:
        session.rollback()
        raise unprocessable(exc.field, exc.message) from exc
    events.record(
        session,
        principal.actor,
        EventId.PATIENT_RECORD,
        AuditAction.CREATE,
        object_type="finding_feedback",
        object_id=feedback.id,
        detail=f"{feedback.verdict} finding on image {instance.id} of study {study.id}",
    )
    session.commit()
    return feedback_out(feedback, principal.name)


def _image_size(context: ContextDep, instance: Instance) -> tuple[int, int] | None:
    """``(rows, columns)`` as stored at ingest; the file's header only for an older row.

    Called before the write transaction begins: no file I/O inside it.
    """
    if instance.rows is not None and instance.columns is not None:
        return instance.rows, instance.columns
    return read_image_size(context.store, instance.storage_path)


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description=(
            "A client-generated key (a UUID) for this review: a repeated request with the same "
            "key and body answers the review stored the first time instead of adding another"
        ),
    ),
]


@router.post(
    "/{study_id}/review",
    response_model=ReviewOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        **NOT_FOUND,
        403: {"model": ErrorBody, "description": "Reviews come from people"},
        409: {"model": ErrorBody, "description": "The Idempotency-Key belongs to another review"},
    },
)
def review_study(
    study_id: StudyId,
    body: ReviewIn,
    principal: CurrentUser,
    session: SessionDep,
    context: ContextDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ReviewOut:
    """Record a verdict on the study's current AI result (stored with reviewer and model).

    With an ``Idempotency-Key`` a repeated request stores nothing new: it answers the first
    review (header ``Idempotent-Replayed: true``), or 409 when the key was used for another one.
    """
    if principal.kind is not PrincipalKind.USER:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "reviews are given by people, not tokens")
    study = _study_or_404(session, session, principal, study_id)  # a write: all in one
    existing = review_for_key(session, principal.id, idempotency_key) if idempotency_key else None
    if existing is None:
        try:
            review = create_review(
                session, study, principal.id, body, idempotency_key=idempotency_key
            )
        except ReviewRejected as exc:
            session.rollback()
            raise unprocessable(exc.field, exc.message) from exc
        except IntegrityError:
            # Another worker stored a review with this key between the look-up and the insert.
            session.rollback()
            if idempotency_key is None:
                raise
            existing = review_for_key(session, principal.id, idempotency_key)
            if existing is None:
                raise
        else:
            events.record(
                session,
                principal.actor,
                EventId.PATIENT_RECORD,
                AuditAction.CREATE,
                object_type="review",
                object_id=review.id,
                detail=f"review of study {study.id}",
            )
            session.commit()
            response.headers["Location"] = f"{study_url(study.id)}#review-{review.id}"
            return review_out(review, principal.name)
    try:
        review = replayed_review(existing, request_sha256(study_id, body))
    except IdempotencyKeyReused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"{study_url(study_id)}#review-{review.id}"
    return review_out(review, principal.name)
