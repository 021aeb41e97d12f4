"""Command-line administration of the review API: users, machine tokens, the review export.

``register(app)`` adds ``user``, ``token`` and ``export-reviews`` to the main CLI.
Every change is recorded in the audit trail as done by ``cli:<operating-system user>``.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.accounts import (
    AccountError,
    create_token,
    create_user,
    list_tokens,
    list_users,
    revoke_token,
    set_active,
)
from audit.events import Actor
from config.settings import Settings, load_settings
from db.review import Role

console = Console(stderr=True)
user_app = typer.Typer(help="People who use the review API.", no_args_is_help=True)
token_app = typer.Typer(help="Machine tokens for the review API.", no_args_is_help=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def cli_actor() -> Actor:
    """The audit actor for a command run by the operating-system user."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "local"
    return Actor(f"cli:{name}", None, "local")


@dataclass(frozen=True)
class _Database:
    engine: Engine
    sessions: sessionmaker[Session]


@contextmanager
def _database(settings: Settings) -> Iterator[_Database]:
    """An engine with the schema brought up to date, disposed afterwards."""
    from db.engine import make_engine, make_session_factory
    from db.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        yield _Database(engine, make_session_factory(engine))
    finally:
        engine.dispose()


def _fail(exc: AccountError) -> typer.Exit:
    console.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[Role, typer.Option(help="What the user may do.")] = Role.RADIOLOGIST,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="FRACTURE_GATEWAY_NEW_PASSWORD",
            help="Asked for when not given (or set FRACTURE_GATEWAY_NEW_PASSWORD).",
        ),
    ] = "",
) -> None:
    """Add a user with a password (stored as an argon2 hash)."""
    with _database(_settings()) as db, db.sessions() as session:
        try:
            user = create_user(session, cli_actor(), username, password, role)
        except AccountError as exc:
            raise _fail(exc) from exc
        session.commit()
        console.print(f"user {user.username} added with role {role.value}")


@user_app.command("list")
def user_list() -> None:
    """List users, their roles and whether they are active."""
    with _database(_settings()) as db, db.sessions() as session:
        table = Table("user", "role", "active", "created", "last login")
        for user in list_users(session):
            table.add_row(
                user.username,
                str(user.role),
                "yes" if user.active else "no",
                user.created_at.isoformat(timespec="seconds"),
                user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "-",
            )
        Console().print(table)


def _set_active(username: str, *, active: bool) -> None:
    with _database(_settings()) as db, db.sessions() as session:
        try:
            set_active(session, cli_actor(), username, active=active)
        except AccountError as exc:
            raise _fail(exc) from exc
        session.commit()
        console.print(f"user {username} {'enabled' if active else 'disabled'}")


@user_app.command("disable")
def user_disable(username: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Disable a user: logins and their access tokens are refused at once."""
    _set_active(username, active=False)


@user_app.command("enable")
def user_enable(username: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Enable a disabled user again."""
    _set_active(username, active=True)


@user_app.command("unlock")
def user_unlock(username: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Lift the lock (and delay) failed logins put on a user name; audited."""
    from api import throttle
    from db.review import ThrottleScope

    with _database(_settings()) as db, db.sessions() as session:
        row = throttle.find(session, ThrottleScope.USER, username)
        if row is None:
            console.print(f"[red]no failed logins recorded for {username}[/red]")
            raise typer.Exit(1)
        throttle.lift(session, cli_actor(), row.id)
        session.commit()
        console.print(f"login lock of {username} lifted")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. the machine's name.")],
    role: Annotated[Role, typer.Option(help="What the token may do.")] = Role.RADIOLOGIST,
    expires_days: Annotated[
        int | None, typer.Option(min=1, help="Days until it expires; none by default.")
    ] = None,
) -> None:
    """Issue a machine token; it is printed once on standard output and stored hashed."""
    with _database(_settings()) as db, db.sessions() as session:
        try:
            issued = create_token(
                session,
                cli_actor(),
                name,
                role,
                expires_in=timedelta(days=expires_days) if expires_days else None,
            )
        except AccountError as exc:
            raise _fail(exc) from exc
        session.commit()
        console.print(f"token {name} issued with role {role.value}; it is shown only once:")
        print(issued.token)


@token_app.command("list")
def token_list() -> None:
    """List machine tokens (never their values)."""
    with _database(_settings()) as db, db.sessions() as session:
        table = Table("name", "prefix", "role", "expires", "revoked", "last used")
        for row in list_tokens(session):
            table.add_row(
                row.name,
                row.prefix + "...",
                str(row.role),
                row.expires_at.isoformat(timespec="seconds") if row.expires_at else "never",
                row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "no",
                row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "-",
            )
        Console().print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a machine token; it is refused from then on."""
    with _database(_settings()) as db, db.sessions() as session:
        try:
            revoke_token(session, cli_actor(), name)
        except AccountError as exc:
            raise _fail(exc) from exc
        session.commit()
        console.print(f"token {name} revoked")


def export_reviews_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for <class>/*.png and reviews.csv.")],
) -> None:
    """Write reviewed images as de-identified PNGs in the trainer's class folders."""
    from api.export import export_key, export_reviews
    from dicom_node.storage import InstanceStore

    settings = _settings()
    store = InstanceStore(settings.storage_folder)
    with _database(settings) as db:
        summary = export_reviews(
            db.sessions, store, out, key=export_key(settings.home), actor=cli_actor()
        )
    for folder, n in summary.written.items():
        console.print(f"{folder}: {n}")
    for reason, n in sorted(summary.skipped.items()):
        console.print(f"left out ({reason}): {n}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main command line."""
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
    app.command("export-reviews")(export_reviews_command)
