"""Fixtures shared by the whole suite: shared material, databases, settings, a running node."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
from sqlalchemy import create_engine, text

from tests.helpers.node import NodeFactory, make_settings
from tests.helpers.tools import in_ci

if TYPE_CHECKING:
    from gateway.service import Service

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "FRACTURE_GATEWAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True, scope="session")
def _strict_dicom_writing() -> None:
    """Every DICOM object we write in tests must be valid: pydicom raises on bad values."""
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = Path(os.environ.get("FRACTURE_GATEWAY_SHARED", REPO_ROOT.parent / "shared")).resolve()
    if not path.is_dir():
        pytest.fail(f"shared material not found at {path}; set FRACTURE_GATEWAY_SHARED")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"fg_test_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        message = f"PostgreSQL not available at {POSTGRES_ADMIN_URL}: {type(exc).__name__}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on SQLite and on PostgreSQL (fresh schema per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    base_url: str = request.getfixturevalue("postgres_url")
    schema = f"t_{secrets.token_hex(4)}"
    engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{base_url}?options=-csearch_path%3D{schema}"
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start DICOM nodes (SCP only, no workers unless asked) with settings overrides."""
    from gateway.service import Service

    started: list[Service] = []

    def start(*, worker: bool = False, **overrides: Any) -> Service:
        service = Service(make_settings(tmp_path / f"home{len(started)}", **overrides))
        service.start(dicom=True, worker=worker)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def node(start_node: NodeFactory) -> Service:
    """One running node with the defaults of :func:`tests.helpers.node.make_settings`."""
    return start_node()
