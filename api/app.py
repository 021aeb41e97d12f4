"""The FastAPI application: built from explicit settings and database sessions, never at import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings


@dataclass(frozen=True)
class AppState:
    """What the routes need, made once at start-up and passed in."""

    settings: Settings
    sessions: sessionmaker[Session]


def create_app(settings: Settings, sessions: sessionmaker[Session]) -> FastAPI:
    """Build the API application."""
    app = FastAPI(title="fracture-gateway", version="0.1.0")
    app.state.gateway = AppState(settings, sessions)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness plus database status."""
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
            database = "ok"
        except Exception as exc:  # reported, not raised: health must answer
            database = f"unavailable: {type(exc).__name__}"
        return {"status": "ok" if database == "ok" else "degraded", "database": database}

    return app
