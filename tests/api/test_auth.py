"""Logins, access tokens, machine tokens and roles; each outcome leaves an audit event."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.accounts import AccountError, create_token, create_user, revoke_token, set_active
from api.security import (
    InvalidCredentials,
    decode_access_token,
    hash_password,
    issue_access_token,
    verify_password,
)
from db.base import utcnow
from db.review import AuditEvent, Role
from tests.api.conftest import login
from tests.api.world import SETUP_ACTOR, World, add_user


def _events(world: World, code: str) -> list[AuditEvent]:
    with world.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.event_id_code == code).order_by(AuditEvent.id)
            )
        )


def test_password_hash_is_argon2_and_verifies() -> None:
    digest = hash_password("a long password")
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, "a long password")
    assert not verify_password(digest, "another password")
    assert not verify_password(None, "a long password")
    assert not verify_password("not-a-hash", "x")


def test_access_token_round_trip_and_expiry() -> None:
    issued = issue_access_token("k" * 32, 7, Role.ADMIN, minutes=5)
    claims = decode_access_token("k" * 32, issued.token)
    assert (claims.user_id, claims.role) == (7, Role.ADMIN)
    with pytest.raises(InvalidCredentials):
        decode_access_token("other-key" * 4, issued.token)
    old = issue_access_token("k" * 32, 7, Role.ADMIN, minutes=5, now=utcnow() - timedelta(hours=1))
    with pytest.raises(InvalidCredentials):
        decode_access_token("k" * 32, old.token)
    unsigned = jwt.encode({"sub": "7", "role": "admin"}, "", algorithm="none")
    with pytest.raises(InvalidCredentials):
        decode_access_token("k" * 32, unsigned)


def test_login_issues_a_token_and_is_audited(world: World, client: TestClient) -> None:
    add_user(world, "rad", Role.RADIOLOGIST)
    headers = login(client, "rad")
    me = client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.json() == {"kind": "user", "name": "rad", "role": "radiologist"}
    refused = client.post("/api/auth/login", data={"username": "rad", "password": "wrong-pass"})
    assert refused.status_code == 401
    unknown = client.post("/api/auth/login", data={"username": "nobody", "password": "x" * 9})
    assert unknown.status_code == 401
    outcomes = [(e.actor, e.outcome, e.event_type_code) for e in _events(world, "110114")]
    assert outcomes == [
        ("user:rad", 0, "110122"),
        ("anonymous", 4, "110122"),
        ("anonymous", 4, "110122"),
    ]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer nonsense", "Bearer fgw_unknown", "Basic cmFkOnJhZA=="],
)
def test_patient_data_needs_a_valid_token(client: TestClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path in ("/api/studies", "/api/studies/1", "/api/stats", "/api/admin/audit"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"


def test_expired_token_is_refused(world: World, client: TestClient) -> None:
    user_id = add_user(world, "rad", Role.RADIOLOGIST)
    key = client.app.state.context.signing_key  # type: ignore[attr-defined]
    old = issue_access_token(
        key, user_id, Role.RADIOLOGIST, minutes=1, now=utcnow() - timedelta(minutes=2)
    )
    response = client.get("/api/studies", headers={"Authorization": f"Bearer {old.token}"})
    assert response.status_code == 401


def test_disabled_user_is_refused_at_once(world: World, client: TestClient) -> None:
    add_user(world, "rad", Role.RADIOLOGIST)
    headers = login(client, "rad")
    assert client.get("/api/studies", headers=headers).status_code == 200
    with world.sessions() as session, session.begin():
        set_active(session, SETUP_ACTOR, "rad", active=False)
    assert client.get("/api/studies", headers=headers).status_code == 401
    refused = client.post(
        "/api/auth/login", data={"username": "rad", "password": "correct-horse-battery"}
    )
    assert refused.status_code == 401


def test_radiologist_gets_403_on_admin_routes(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/api/admin/outbox"),
        ("POST", "/api/admin/outbox/1/retry"),
        ("GET", "/api/admin/audit"),
    ):
        assert client.request(method, path, headers=radiologist).status_code == 403
    alerts = _events(world, "110113")
    assert [e.event_type_code for e in alerts][-3:] == ["110132"] * 3
    assert all(e.outcome == 4 and e.actor == "user:rad" for e in alerts[-3:])


def test_machine_tokens_work_until_revoked_or_expired(world: World, client: TestClient) -> None:
    with world.sessions() as session, session.begin():
        issued = create_token(session, SETUP_ACTOR, "pacs-bridge", Role.ADMIN)
        stale = create_token(
            session,
            SETUP_ACTOR,
            "old-robot",
            Role.RADIOLOGIST,
            expires_in=timedelta(days=1),
            now=utcnow() - timedelta(days=2),
        )
    stored = [issued.row.token_sha256, stale.row.token_sha256]
    assert issued.token not in stored
    headers = {"Authorization": f"Bearer {issued.token}"}
    me = client.get("/api/auth/me", headers=headers)
    assert me.json() == {"kind": "token", "name": "pacs-bridge", "role": "admin"}
    assert client.get("/api/admin/audit", headers=headers).status_code == 200
    assert (
        client.get("/api/studies", headers={"Authorization": f"Bearer {stale.token}"}).status_code
        == 401
    )
    with world.sessions() as session, session.begin():
        revoke_token(session, SETUP_ACTOR, "pacs-bridge")
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    uses = [e for e in _events(world, "110114") if e.actor == "token:pacs-bridge"]
    assert len(uses) == 2
    assert all(e.outcome == 0 for e in uses)
    config_changes = _events(world, "110113")
    assert {e.detail for e in config_changes} >= {
        "machine token issued with role admin",
        "machine token revoked",
    }


def test_machine_token_cannot_review(world: World, client: TestClient) -> None:
    from tests.api.world import seed_study

    study = seed_study(world)
    with world.sessions() as session, session.begin():
        issued = create_token(session, SETUP_ACTOR, "robot", Role.RADIOLOGIST)
    response = client.post(
        f"/api/studies/{study.id}/review",
        json={"verdict": "agree"},
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    assert response.status_code == 403


def test_account_rules(world: World) -> None:
    with world.sessions() as session:
        with pytest.raises(AccountError):
            create_user(session, SETUP_ACTOR, "has space", "long-enough", Role.ADMIN)
        with pytest.raises(AccountError):
            create_user(session, SETUP_ACTOR, "short", "x", Role.ADMIN)
        create_user(session, SETUP_ACTOR, "twin", "long-enough", Role.ADMIN)
        with pytest.raises(AccountError):
            create_user(session, SETUP_ACTOR, "twin", "long-enough", Role.ADMIN)
        with pytest.raises(AccountError):
            set_active(session, SETUP_ACTOR, "ghost", active=False)
        with pytest.raises(AccountError):
            revoke_token(session, SETUP_ACTOR, "ghost")
