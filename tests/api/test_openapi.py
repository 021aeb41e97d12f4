"""The OpenAPI schema is complete, and generated requests find no 5xx and no schema violations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from api.accounts import create_token
from api.app import create_app
from db.results import OutboxState
from db.review import Role
from tests.api.world import SETUP_ACTOR, World, open_world, seed_study

PUBLIC = {("/api/health", "get"), ("/metrics", "get"), ("/api/auth/login", "post")}


def test_every_route_declares_responses_and_auth(app: FastAPI) -> None:
    spec = app.openapi()
    assert spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["type"] == "oauth2"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            success = [code for code in responses if code.startswith("2")]
            assert success, f"{method} {path} has no success response"
            content = responses[success[0]].get("content", {})
            assert content, f"{method} {path} declares no response body"
            if "application/json" in content:
                assert content["application/json"]["schema"], f"{method} {path}: empty schema"
            if (path, method) not in PUBLIC:
                assert operation.get("security") == [{"OAuth2PasswordBearer": []}], path
                assert "401" in responses, f"{method} {path} does not document 401"
            if path.startswith("/api/admin"):
                assert "403" in responses
            for name in path.split("/"):
                assert "uid" not in name.lower()
                assert "name" not in name.lower()


@pytest.fixture
def fuzz_world(tmp_path: Path) -> Iterator[tuple[World, str]]:
    from tests.training.packages import make_package

    make_package(tmp_path / "package")
    world = open_world(tmp_path / "home", inference={"model_path": tmp_path / "package"})
    seed_study(world, n_images=1, deliveries=(OutboxState.SENT, OutboxState.DEAD_LETTER))
    seed_study(world, probability=None)
    with world.sessions() as session, session.begin():
        token = create_token(session, SETUP_ACTOR, "fuzzer", Role.ADMIN).token
    yield world, token
    world.engine.dispose()


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def test_generated_requests(fuzz_world: tuple[World, str]) -> None:
    """Every operation, a bounded number of generated requests each, with an admin token."""
    world, token = fuzz_world
    app = create_app(world.settings, world.sessions, store=world.store)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

        run()
        tested.append(operation.label)
    assert len(tested) >= 14
