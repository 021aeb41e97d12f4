"""Health, Prometheus metrics and statistics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api import stats
from api.deps import ContextDep, CurrentUser, ReaderDep
from api.model_slot import ModelUnavailable
from api.schemas import (
    AUTH_RESPONSES,
    ErrorBody,
    HealthOut,
    ModelCardOut,
    ModelStatusOut,
    OperatingPointOut,
    StatsOut,
)
from db.engine import reading
from db.jobs import queue_depths

router = APIRouter(tags=["system"])


@router.get("/api/health", response_model=HealthOut)
def health(context: ContextDep) -> HealthOut:
    """Liveness, plus whether the database answers and the model's state (never loads it)."""
    try:
        with reading(context.sessions) as session:
            session.execute(text("SELECT 1"))
        database = "ok"
    except SQLAlchemyError as exc:  # reported, not raised: health must answer
        database = f"unavailable: {type(exc).__name__}"
    model = context.model.status()
    return HealthOut(
        status="ok" if database == "ok" else "degraded",
        database=database,
        model=ModelStatusOut(
            state=model.state.value, name=model.name, version=model.version, reason=model.reason
        ),
    )


@router.get(
    "/api/model",
    response_model=ModelCardOut,
    responses={
        **AUTH_RESPONSES,
        503: {"model": ErrorBody, "description": "No model card can be read"},
    },
)
def model_card(_principal: CurrentUser, context: ContextDep) -> ModelCardOut:
    """The configured model's operating points (thresholds and validation figures) and scope.

    Read from the package's card; the model itself is not loaded.
    """
    try:
        card = context.model.card()
    except ModelUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    return ModelCardOut(
        name=card.name,
        version=card.version,
        operating_point=context.settings.inference.operating_point,
        operating_points=[
            OperatingPointOut(
                name=name.value,
                threshold=point.threshold,
                sensitivity=point.sensitivity,
                specificity=point.specificity,
            )
            for name, point in sorted(card.operating_points.items())
        ],
        body_parts=list(card.body_parts),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics, computed from the database at scrape time."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/stats", response_model=StatsOut, responses=AUTH_RESPONSES, tags=["stats"])
def get_stats(principal: CurrentUser, reader: ReaderDep, context: ContextDep) -> StatsOut:
    """Counts by status, turnaround, queue depths and the AI's agreement with reviewers."""
    depths = queue_depths(context.sessions)
    return stats.collect(reader, depths)
