"""Migration 0002 and the outbox queue on PostgreSQL, in a database made for this run."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from config.settings import OutboxSettings
from db.engine import make_engine
from db.migrate import is_applied, upgrade
from db.results import OutboxState
from dicom_node.outbox import (
    DeliveryOutcome,
    claim_due,
    list_outbox,
    record_outcome,
    retry_dead_letter,
)
from tests.helpers.results_db import (
    ResultsDb,
    add_results,
    open_results_db,
    schema_differences,
)
from tests.helpers.tools import in_ci

RESULT_TABLES = {"result_objects", "outbox"}

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: The server to create the throw-away database on (its ``test`` database is only used to
#: issue CREATE/DROP DATABASE).
ADMIN_URL = os.environ.get(
    "FRACTURE_GATEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh, empty database for this module, dropped afterwards."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"fg_outbox_{secrets.token_hex(4)}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the server is not there: fail in CI, skip elsewhere
        admin.dispose()
        if in_ci():
            pytest.fail(f"PostgreSQL not available: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL not available: {type(exc).__name__}")
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db(postgres_url: str, tmp_path: Path) -> Iterator[ResultsDb]:
    opened = open_results_db(postgres_url, tmp_path / "storage")
    yield opened
    with opened.engine.begin() as connection:
        connection.execute(text("TRUNCATE studies, jobs, result_objects, outbox CASCADE"))
    opened.engine.dispose()


def test_migration_creates_results_tables_and_downgrades(postgres_url: str) -> None:
    from alembic import command

    from db.migrate import alembic_config

    engine = make_engine(postgres_url)
    try:
        upgrade(engine)
        assert is_applied(engine, "0002_results")
        tables = set(inspect(engine).get_table_names())
        assert {"result_objects", "outbox"} <= tables
        uniques = {u["name"] for u in inspect(engine).get_unique_constraints("outbox")}
        assert "uq_outbox_result_object_destination" in uniques
        assert schema_differences(engine, RESULT_TABLES) == []
        command.downgrade(alembic_config(engine), "0001_ingest")
        assert not {"result_objects", "outbox"} & set(inspect(engine).get_table_names())
        upgrade(engine)
        assert is_applied(engine, "0002_results")
    finally:
        engine.dispose()


def test_outbox_queue_on_postgres(db: ResultsDb) -> None:
    add_results(db, 3, ["pacs"])
    settings = OutboxSettings(max_attempts=1)
    first = claim_due(db.sessions, limit=2, lease_s=60)
    second = claim_due(db.sessions, limit=2, lease_s=60)
    assert len(first) == 2
    assert len(second) == 1
    record_outcome(db.sessions, first[0], DeliveryOutcome.DELIVERED, settings, status=0)
    record_outcome(db.sessions, first[1], DeliveryOutcome.RETRY, settings, error="x")
    states = {v.id: v.state for v in list_outbox(db.sessions)}
    assert states[first[0].outbox_id] is OutboxState.SENT
    assert states[first[1].outbox_id] is OutboxState.DEAD_LETTER
    assert retry_dead_letter(db.sessions, first[1].outbox_id)
    assert [d.outbox_id for d in claim_due(db.sessions, limit=5, lease_s=60)] == [
        first[1].outbox_id
    ]
