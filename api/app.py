"""The FastAPI application: built from explicit settings and database sessions, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from api.csp import CONTENT_SECURITY_POLICY
from api.deps import AppContext
from api.docs import add_api_docs
from api.metrics import make_registry
from api.model_slot import ModelSlot
from api.routes import admin, auth, predict, studies, system
from api.security import signing_key
from audit import events
from audit.codes import Code, EventId, EventType
from audit.events import Actor
from config.settings import Settings
from db.review import AuditAction
from dicom_node.storage import InstanceStore

if TYPE_CHECKING:
    from inference.predictor import Predictor

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _record_activity(sessions: sessionmaker[Session], event_type: Code) -> None:
    """Audit the API's start or stop (PS3.15 A.5.3.1 Application Activity)."""
    with sessions() as session, session.begin():
        events.record(
            session,
            Actor("application:fracture-gateway-api"),
            EventId.APPLICATION_ACTIVITY,
            AuditAction.EXECUTE,
            event_type=event_type,
        )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape without ``input`` and ``ctx``: they echo what was submitted.

    A review comment or an uploaded header may hold a patient's name; an error body names the
    field and the rule, never the value.
    """
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error["type"]}
        for error in errors
    ]
    return JSONResponse(
        jsonable_encoder({"detail": detail}), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    store: InstanceStore | None = None,
    predictor: Predictor | None = None,
    collectors: Iterable[Collector] = (),
) -> FastAPI:
    """Build the API application for these settings, sessions and storage.

    ``predictor`` may hand over a model the service loaded already; otherwise the configured
    package is loaded on the first ``/api/predict``. ``collectors`` add in-process metrics of
    the service to ``/metrics``.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _record_activity(sessions, EventType.APPLICATION_START)
        yield
        _record_activity(sessions, EventType.APPLICATION_STOP)

    app = FastAPI(
        lifespan=lifespan,
        title="fracture-gateway",
        version="0.1.0",
        summary="Review API and worklist for the fracture-detection DICOM node",
        # FastAPI's pages load their assets from a CDN; add_api_docs serves them from here.
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = AppContext(
        settings=settings,
        sessions=sessions,
        store=store or InstanceStore(settings.storage_folder),
        signing_key=signing_key(settings.api),
        model=ModelSlot(
            settings.inference.model_path,
            enabled=settings.inference.enabled,
            predictor=predictor,
        ),
    )
    app.state.metrics_registry = make_registry(sessions, collectors)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for router in (auth.router, studies.router, system.router, admin.router, predict.router):
        app.include_router(router)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    add_api_docs(app)  # before /static: its assets are mounted under /static/api-docs
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app
