"""Apply Alembic migrations programmatically (``serve`` and ``db upgrade`` both call this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The PostgreSQL advisory lock that serialises migrations of processes starting together.
MIGRATION_LOCK_KEY = 0x46475F4D  # "FG_M"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config that runs against ``engine`` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the database schema up to ``revision`` (every branch head by default).

    On PostgreSQL the upgrade holds an advisory lock, so nodes and workers started at the same
    moment on one database migrate one after the other (the later ones find nothing to do)
    instead of creating the same tables at once.
    """
    if engine.dialect.name != "postgresql":
        command.upgrade(alembic_config(engine), revision)
        return
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        lock.commit()
        try:
            command.upgrade(alembic_config(engine), revision)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            lock.commit()


def current_revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions (one per branch) the database is at; empty for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return tuple(MigrationContext.configure(connection).get_current_heads())


def is_applied(engine: Engine, revision: str) -> bool:
    """Whether ``revision`` is applied: it is a current head or an ancestor of one."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine))
    return any(
        step.revision == revision
        for head in current_revisions(engine)
        for step in script.iterate_revisions(head, "base")
    )
