"""Failed logins are throttled per user name and per address, locked, and unlocked by an admin.

The throttle's clock is moved by the tests (``AppContext.clock``); nothing waits.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import create_engine, select, text
from typer.testing import CliRunner

from api.app import create_app
from api.throttle import ThrottlePolicy
from config.settings import LoginThrottleSettings
from db.base import utcnow
from db.review import AuditEvent, LoginThrottle, Role
from gateway.cli import app as cli
from tests.api.conftest import login
from tests.api.world import PASSWORD, World, add_user, open_world
from tests.helpers.results_db import schema_differences

WRONG = "not-the-password"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(app: FastAPI) -> Clock:
    moved = Clock()
    app.state.context = dataclasses.replace(app.state.context, clock=moved)
    return moved


def attempt(client: TestClient, username: str, password: str = WRONG) -> Response:
    return client.post("/api/auth/login", data={"username": username, "password": password})


def events(world: World, code: str) -> list[AuditEvent]:
    with world.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.event_id_code == code).order_by(AuditEvent.id)
            )
        )


def test_forty_wrong_passwords_then_the_right_one_does_not_log_in(
    world: World, client: TestClient, clock: Clock
) -> None:
    """The measured fault: 40 wrong passwords in 5 s, then the right one worked."""
    add_user(world, "rad", Role.RADIOLOGIST)
    statuses = []
    for _ in range(40):
        statuses.append(attempt(client, "rad").status_code)
        clock.advance(0.125)  # 40 attempts in 5 s
    # Three free failures; then windows of 1, 2 and 4 s let only two more passwords be checked.
    assert statuses[:4] == [401] * 4
    assert statuses.count(401) == 6
    assert statuses.count(429) == 34
    right = attempt(client, "rad", PASSWORD)
    assert right.status_code == 429
    assert int(right.headers["Retry-After"]) >= 1
    assert "access_token" not in right.text


def test_the_delay_doubles_and_ends(
    world: World, app: FastAPI, client: TestClient, clock: Clock
) -> None:
    add_user(world, "rad", Role.RADIOLOGIST)
    for _ in range(3):
        assert attempt(client, "rad").status_code == 401
    windows = []
    for _ in range(4):
        assert attempt(client, "rad").status_code == 401
        refused = attempt(client, "rad", PASSWORD)  # inside the window: refused unchecked
        assert refused.status_code == 429
        windows.append(int(refused.headers["Retry-After"]))
        clock.advance(windows[-1])
    assert windows == [1, 2, 4, 8]
    assert attempt(client, "rad", PASSWORD).status_code == 200
    # A success starts the user name afresh; the address keeps its other failures, so that a
    # sprayer's own good login does not clear what it tried against other names.
    with world.sessions() as session:
        counts = {r.scope.value: r.failures for r in session.scalars(select(LoginThrottle))}
    assert counts == {"user": 0, "address": 7}
    with TestClient(app, client=("10.9.9.9", 40000)) as elsewhere:
        assert [attempt(elsewhere, "rad").status_code for _ in range(5)] == [401] * 4 + [429]


def test_lockout_needs_an_admin_and_both_are_audited(
    world: World, client: TestClient, clock: Clock
) -> None:
    add_user(world, "rad", Role.RADIOLOGIST)
    add_user(world, "boss", Role.ADMIN)
    admin_headers = login(client, "boss")
    for _ in range(10):  # user_lockout_after = 10
        response = attempt(client, "rad")
        assert response.status_code == 401
        clock.advance(3600)  # past every window
    locked = attempt(client, "rad", PASSWORD)
    assert locked.status_code == 423
    clock.advance(7 * 86_400)  # a lock does not wear off
    assert attempt(client, "rad", PASSWORD).status_code == 423

    listed = client.get("/api/admin/login-throttles", headers=admin_headers)
    assert listed.status_code == 200
    [row] = [r for r in listed.json()["items"] if r["locked_at"] is not None]
    assert (row["scope"], row["key"], row["failures"]) == ("user", "rad", 10)
    lifted = client.post(f"/api/admin/login-throttles/{row['id']}/lift", headers=admin_headers)
    assert lifted.status_code == 200
    assert lifted.json()["locked_at"] is None
    assert attempt(client, "rad", PASSWORD).status_code == 200
    missing = client.post("/api/admin/login-throttles/999999/lift", headers=admin_headers)
    assert missing.status_code == 404

    alerts = [
        (e.event_type_code, e.action.value, e.outcome, e.detail) for e in events(world, "110113")
    ]
    assert ("110137", "E", 4, "user locked after 10 failed logins") in alerts
    assert ("110137", "U", 0, "login lock lifted (user)") in alerts
    logins = [(e.event_type_code, e.outcome, e.detail) for e in events(world, "110114")]
    assert ("110122", 4, "login locked (user)") in logins
    assert logins.count(("110122", 4, "login refused")) == 10
    assert logins[-1][1:] == (0, "login")


def test_radiologists_cannot_lift_locks(world: World, client: TestClient) -> None:
    add_user(world, "rad", Role.RADIOLOGIST)
    headers = login(client, "rad")
    assert client.get("/api/admin/login-throttles", headers=headers).status_code == 403
    assert client.post("/api/admin/login-throttles/1/lift", headers=headers).status_code == 403


def test_one_address_trying_many_names_is_throttled(
    world: World, app: FastAPI, client: TestClient, clock: Clock
) -> None:
    """Password spraying: one wrong password for each of many names, from one address."""
    add_user(world, "rad", Role.RADIOLOGIST)
    statuses = [attempt(client, f"name{n}").status_code for n in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    # The same address is held back for a real user too; another address is not.
    assert attempt(client, "rad", PASSWORD).status_code == 429
    with TestClient(app, client=("10.1.2.3", 40000)) as elsewhere:
        assert attempt(elsewhere, "rad", PASSWORD).status_code == 200


def test_one_name_tried_from_many_addresses_is_throttled(
    world: World, app: FastAPI, clock: Clock
) -> None:
    add_user(world, "rad", Role.RADIOLOGIST)
    statuses = []
    for n in range(5):
        with TestClient(app, client=(f"10.0.0.{n + 1}", 40000)) as client:
            statuses.append(attempt(client, "rad").status_code)
    assert statuses == [401, 401, 401, 401, 429]


def test_policy_delays() -> None:
    policy = ThrottlePolicy.from_settings(
        LoginThrottleSettings(free_failures=2, base_delay_s=0.5, max_delay_s=3)
    )
    assert [policy.delay(n).total_seconds() for n in range(1, 8)] == [0, 0, 0.5, 1, 2, 3, 3]
    assert policy.delay(10**6).total_seconds() == 3  # no overflow


def test_migration_matches_the_model(world: World) -> None:
    assert schema_differences(world.engine, {"login_throttles"}) == []


@pytest.fixture
def shared_postgres_schema(postgres_url: str) -> Iterator[str]:
    schema = f"thr_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.mark.postgres
@pytest.mark.integration
def test_two_api_processes_share_the_throttle(shared_postgres_schema: str, tmp_path: Path) -> None:
    """Two API instances with their own engines on one PostgreSQL database: failures counted
    by one delay logins on the other."""
    api = {
        "secret_key": "test-secret-key-for-jwt-signing-32b",
        "login_throttle": {"base_delay_s": 60},  # a window no slow machine outlasts
    }
    first = open_world(tmp_path / "a", url=shared_postgres_schema, api=api)
    second = open_world(tmp_path / "b", url=shared_postgres_schema, api=api)
    try:
        add_user(first, "rad", Role.RADIOLOGIST)
        app_a = create_app(first.settings, first.sessions, store=first.store)
        app_b = create_app(second.settings, second.sessions, store=second.store)
        with TestClient(app_a) as a, TestClient(app_b) as b:
            assert [attempt(a, "rad").status_code for _ in range(4)] == [401] * 4
            refused = attempt(b, "rad", PASSWORD)
            assert refused.status_code == 429
            assert 50 <= int(refused.headers["Retry-After"]) <= 60
        with first.sessions() as session:
            rows = session.scalars(select(LoginThrottle)).all()
            assert {(r.scope.value, r.failures) for r in rows} == {("user", 4), ("address", 4)}
    finally:
        first.engine.dispose()
        second.engine.dispose()


def test_the_command_line_lifts_a_lock(
    world: World, client: TestClient, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way back in when the only admin is the one locked out."""
    add_user(world, "boss", Role.ADMIN)
    for _ in range(10):
        attempt(client, "boss")
        clock.advance(3600)
    assert attempt(client, "boss", PASSWORD).status_code == 423
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(world.home))
    result = CliRunner().invoke(cli, ["user", "unlock", "boss"])
    assert result.exit_code == 0, result.output
    assert attempt(client, "boss", PASSWORD).status_code == 200
    lifted = [e for e in events(world, "110113") if e.detail == "login lock lifted (user)"]
    assert [e.actor.startswith("cli:") for e in lifted] == [True]
    assert CliRunner().invoke(cli, ["user", "unlock", "nobody"]).exit_code == 1
