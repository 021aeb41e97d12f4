"""The one-image path: upload a PNG, JPEG or DICOM image, get the result and heat map."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api.deps import ContextDep, CurrentUser, SessionDep
from api.model_slot import ModelUnavailable
from api.predict import (
    MAX_UPLOAD_BYTES,
    UploadRejected,
    decode_upload,
    predict_upload,
    store_upload,
)
from api.schemas import AUTH_RESPONSES, ErrorBody, PredictOut
from audit import events
from audit.codes import EventId
from db.models import Study
from db.review import AuditAction, AuditOutcome

router = APIRouter(tags=["predict"])


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", "file"], "msg": message, "type": "value_error"}],
    )


@router.post(
    "/api/predict",
    response_model=PredictOut,
    responses={
        **AUTH_RESPONSES,
        413: {"model": ErrorBody, "description": "The upload is too large"},
        503: {"model": ErrorBody, "description": "The model is not available"},
    },
)
async def predict(
    principal: CurrentUser,
    session: SessionDep,
    context: ContextDep,
    file: Annotated[UploadFile, File(description="A PNG, JPEG or DICOM (Part 10) file")],
    store: Annotated[
        bool,
        Query(description="Also store a DICOM upload through the normal ingest path"),
    ] = False,
    heatmap: Annotated[bool, Query(description="Include the heat map as base64 PNG")] = True,
) -> PredictOut:
    """Predict one image; nothing is kept unless ``store=true`` (DICOM only, else 422)."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "the upload is too large")

    def run() -> PredictOut:
        events.record(
            session,
            principal.actor,
            EventId.IMPORT if store else EventId.INSTANCES_ACCESSED,
            AuditAction.CREATE if store else AuditAction.EXECUTE,
            object_type="upload",
            detail="one-image prediction" + (", stored" if store else ""),
        )
        session.commit()  # release the session: storing opens sessions of its own
        try:
            predictor = context.model.get()
        except ModelUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        card = predictor.card
        try:
            upload = decode_upload(
                data, card.input_size, crop=card.preprocessing.crop, body_parts=card.body_parts
            )
        except UploadRejected as exc:
            raise _unprocessable(str(exc)) from exc
        if store and upload.dataset is None:
            raise _unprocessable("only DICOM uploads can be stored (store=true)")
        result = predict_upload(predictor, context.settings, upload, with_heatmap=heatmap)
        if store and upload.dataset is not None:
            try:
                study_uid = store_upload(
                    context.settings, context.sessions, context.store, upload.dataset
                )
            except UploadRejected as exc:
                events.record(
                    session,
                    principal.actor,
                    EventId.IMPORT,
                    AuditAction.CREATE,
                    AuditOutcome.MINOR_FAILURE,
                    object_type="upload",
                    detail="store refused",
                )
                session.commit()
                raise _unprocessable(str(exc)) from exc
            study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
            session.commit()
            result = result.model_copy(update={"stored": True, "study_id": study_id})
        return result

    return await run_in_threadpool(run)
