"""Alembic environment: the engine comes from db.migrate.alembic_config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

import db.all_models  # noqa: F401 - register every table on the metadata
from db.base import Base

engine: Engine = context.config.attributes["engine"]
with engine.connect() as connection:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=is_sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()
