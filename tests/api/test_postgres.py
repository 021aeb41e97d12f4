"""The core flow on PostgreSQL: log in, read the worklist, review, audit; fresh schema per run."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DatabaseError

from api.app import create_app
from db.review import AuditEvent, Review, Role
from tests.api.conftest import login
from tests.api.world import World, add_user, open_world, seed_study

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture
def pg_world(postgres_url: str, tmp_path: Path) -> Iterator[World]:
    schema = f"api_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    world = open_world(tmp_path / "home", url=f"{postgres_url}?options=-csearch_path%3D{schema}")
    try:
        yield world
    finally:
        world.engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_auth_review_and_audit_on_postgres(pg_world: World) -> None:
    assert pg_world.engine.dialect.name == "postgresql"
    study = seed_study(pg_world, probability=0.9)
    add_user(pg_world, "rad", Role.RADIOLOGIST)
    app = create_app(pg_world.settings, pg_world.sessions, store=pg_world.store)
    with TestClient(app) as client:
        assert client.get("/api/studies").status_code == 401
        headers = login(client, "rad")
        worklist = client.get("/api/studies?reviewed=false", headers=headers).json()
        assert [item["id"] for item in worklist["items"]] == [study.id]
        response = client.post(
            f"/api/studies/{study.id}/review",
            json={
                "verdict": "agree",
                "image_id": study.image_ids[0],
                "location": {"x": 5, "y": 6},
            },
            headers=headers,
        )
        assert response.status_code == 201, response.text
        assert client.get("/api/studies?reviewed=true", headers=headers).json()["total"] == 1
        stats = client.get("/api/stats", headers=headers).json()
        assert stats["performance"][0]["true_positives"] == 1
        assert client.get("/api/admin/audit", headers=headers).status_code == 403
    with pg_world.sessions() as session:
        review = session.scalars(select(Review)).one()
        assert (review.label, review.model_version) == ("fractured", "1.2.3")
        codes = [
            e.event_id_code for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    assert codes[:3] == ["110113", "110100", "110114"]  # user added, API started, login
    assert {"110112", "110110", "110113"} <= set(codes)
    with pg_world.engine.connect() as connection:  # the trigger refuses changes
        with pytest.raises(DatabaseError, match="append-only"):
            connection.execute(text("UPDATE audit_events SET detail = 'x'"))
        connection.rollback()
        with pytest.raises(DatabaseError, match="append-only"):
            connection.execute(text("DELETE FROM audit_events"))
