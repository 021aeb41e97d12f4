"""Fixtures for the API tests: a world on SQLite, the app, a client and logged-in users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from db.review import Role
from tests.api.world import PASSWORD, World, add_user, open_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = open_world(tmp_path / "home")
    yield built
    built.engine.dispose()


@pytest.fixture
def app(world: World) -> FastAPI:
    return create_app(world.settings, world.sessions, store=world.store)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def login(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Log in and return the Authorization header."""
    response = client.post("/api/auth/login", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def radiologist(world: World, client: TestClient) -> dict[str, str]:
    add_user(world, "rad", Role.RADIOLOGIST)
    return login(client, "rad")


@pytest.fixture
def admin(world: World, client: TestClient) -> dict[str, str]:
    add_user(world, "boss", Role.ADMIN)
    return login(client, "boss")
