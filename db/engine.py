"""Engines and sessions: SQLite (WAL) by default, PostgreSQL in production.

Two kinds of transaction, chosen by the caller:

- :func:`reading`: a read-only transaction on one snapshot. On SQLite a deferred ``BEGIN`` with
  ``PRAGMA query_only``, so a WAL reader runs beside the writer and never takes the write lock;
  on PostgreSQL ``REPEATABLE READ, READ ONLY``. Readers never delay ingest, however long they
  stay open.
- :func:`writing`: a short write transaction. On SQLite ``BEGIN IMMEDIATE`` takes the write lock
  at once, so a read-then-write transaction never fails to upgrade. No file I/O belongs inside:
  read files before, write them after.

A plain ``sessions()`` session begins like :func:`writing` (the safe default for code that
writes); read-only paths use :func:`reading`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 30.0

#: Execution option naming the kind of transaction a connection begins (see :func:`reading`).
TRANSACTION_MODE = "fracture_gateway_transaction"
_READ = "read"


def make_engine(
    url: str, *, echo: bool = False, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S
) -> Engine:
    """Create an engine; for SQLite, make the folder and set WAL, synchronous=FULL, busy timeout.

    ``synchronous=FULL`` makes a committed row durable before we answer Success to a C-STORE.
    ``busy_timeout_s`` is how long a SQLite writer waits for another writer's lock.
    """
    if busy_timeout_s <= 0:
        raise ValueError(f"the busy timeout must be positive, got {busy_timeout_s}")
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_s}
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
    engine = create_engine(url, **kwargs)
    if sqlite:
        timeout_ms = round(busy_timeout_s * 1000)

        def pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transaction handling is switched off so BEGIN below is ours.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.close()

        event.listen(engine, "connect", pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_begin(connection: Any) -> None:
    if connection.get_execution_options().get(TRANSACTION_MODE) == _READ:
        # A WAL reader: its snapshot is taken at the first read; it never blocks a writer.
        connection.exec_driver_sql("PRAGMA query_only=ON")
        connection.exec_driver_sql("BEGIN DEFERRED")
    else:
        # Take the write lock at BEGIN: read-then-write transactions never fail to upgrade.
        connection.exec_driver_sql("PRAGMA query_only=OFF")
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def _bind(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory is not bound to an engine")
    return bind


def read_only_engine(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions are read-only (see :func:`reading`)."""
    options: dict[str, Any] = {TRANSACTION_MODE: _READ}
    if engine.dialect.name == "postgresql":
        # One snapshot for the whole transaction, as a SQLite reader has; a read-only
        # REPEATABLE READ transaction never fails to serialise.
        options["isolation_level"] = "REPEATABLE READ"
        options["postgresql_readonly"] = True
    return engine.execution_options(**options)


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transactions only read; closed on exit (its objects stay readable).

    Any number of readers run beside the writer, for as long as they like: they never take
    SQLite's write lock, and an attempt to write fails at once (``query_only``, ``READ ONLY``)
    instead of silently becoming a writer.
    """
    with sessions(bind=read_only_engine(_bind(sessions))) as session:
        yield session


@contextmanager
def writing(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One short write transaction, committed on success and rolled back on error.

    On SQLite it holds the write lock from its first statement to commit: keep it short and
    never read or write files inside it.
    """
    with sessions() as session, session.begin():
        yield session
