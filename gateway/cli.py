"""The ``fracture-gateway`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import Settings, load_settings, masked_dump

app = typer.Typer(
    name="fracture-gateway",
    help="DICOM node that runs fracture-detection AI on radiographs and returns the results.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every PDU at INFO, including header values, and highdicom logs the source
    # images' SOP Instance UIDs at INFO for every SR and SC it builds: keep both to warnings.
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def serve(
    dicom: Annotated[bool, typer.Option(help="Run the DICOM node.")] = True,
    api: Annotated[bool, typer.Option(help="Run the review API.")] = True,
    worker: Annotated[
        bool, typer.Option(help="Run the job workers (in-process executor only).")
    ] = True,
    sweeper: Annotated[
        bool, typer.Option(help="Publish due rows to RabbitMQ (Celery executor only).")
    ] = True,
) -> None:
    """Run the whole service in one process until interrupted (SIGINT or SIGTERM).

    With ``jobs.executor = "celery"`` the jobs and deliveries run in ``fracture-gateway worker``
    processes instead; this process publishes their ids.
    """
    from gateway.service import Service

    settings = _settings()
    _configure_logging(settings.log_level)
    service = Service(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start(dicom=dicom, worker=worker, sweeper=sweeper)
    if api and settings.api.enabled:
        from gateway.http import start_api

        service.extra.append(start_api(settings, service))
    console.print(
        f"fracture-gateway serving: DICOM {settings.node.ae_title}@"
        f"{settings.node.bind_address}:{settings.node.port}"
        + (f", API http://{settings.api.host}:{settings.api.port}" if api else "")
    )
    stop.wait()
    service.stop()


@app.command("api")
def api_only(
    host: Annotated[str | None, typer.Option(help="Overrides api.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides api.port.")] = None,
) -> None:
    """Run only the review API (no DICOM node, no workers) until interrupted."""
    from gateway.http import start_api
    from gateway.service import Service

    settings = _settings()
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update={"api": settings.api.model_copy(update=overrides)})
    service = Service(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = start_api(settings, service)
    service.extra.append(server)
    console.print(f"fracture-gateway API on http://{settings.api.host}:{server.port}")
    stop.wait()
    service.stop()


@app.command("worker")
def celery_worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume: analysis, delivery.")
    ] = "analysis,delivery",
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks at once (threads); jobs.workers if unset.")
    ] = None,
    pool: Annotated[
        str, typer.Option(help="Celery pool: threads (one model per process) or solo.")
    ] = "threads",
) -> None:
    """Run a Celery worker for analysis jobs and deliveries (needs jobs.executor = "celery")."""
    from config.settings import JobExecutor
    from gateway.celery_app import ANALYSIS_QUEUE, DELIVERY_QUEUE
    from gateway.celery_worker import POOLS, run_worker

    settings = _settings()
    if settings.jobs.executor is not JobExecutor.CELERY:
        console.print('[red]configuration error:[/red] jobs.executor must be "celery"')
        raise typer.Exit(2)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - {ANALYSIS_QUEUE, DELIVERY_QUEUE})
    if not names or unknown:
        console.print(f"[red]unknown queues:[/red] {unknown or 'none given'}")
        raise typer.Exit(2)
    if pool not in POOLS:
        console.print(f"[red]unknown pool:[/red] {pool} (one of {', '.join(POOLS)})")
        raise typer.Exit(2)
    _configure_logging(settings.log_level)
    code = run_worker(
        settings, queues=names, concurrency=concurrency or settings.jobs.workers, pool=pool
    )
    raise typer.Exit(code)


@app.command()
def echo(
    host: Annotated[str, typer.Argument(help="Peer host.")],
    port: Annotated[int, typer.Argument(help="Peer port.")],
    called_ae: Annotated[str, typer.Option("--called-ae", "-aec")] = "ANY-SCP",
    calling_ae: Annotated[str, typer.Option("--calling-ae", "-aet")] = "FRACTUREGW",
    timeout: float = 30.0,
) -> None:
    """Send C-ECHO to a DICOM node."""
    from dicom_node.send import AssociationFailedError
    from dicom_node.send import echo as send_echo

    try:
        status = send_echo(host, port, called_ae, calling_ae, timeout=timeout)
    except AssociationFailedError as exc:
        console.print(f"[red]C-ECHO failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"C-ECHO status 0x{status:04X}")
    raise typer.Exit(0 if status == 0 else 1)


@app.command()
def send(
    host: Annotated[str, typer.Argument(help="Peer host.")],
    port: Annotated[int, typer.Argument(help="Peer port.")],
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to send.", exists=True)],
    called_ae: Annotated[str, typer.Option("--called-ae", "-aec")] = "ANY-SCP",
    calling_ae: Annotated[str, typer.Option("--calling-ae", "-aet")] = "FRACTUREGW",
    timeout: float = 60.0,
) -> None:
    """C-STORE files or folders to a DICOM node, with progress and a per-file summary."""
    from dicom_node.send import iter_dicom_files, send_files

    files = list(iter_dicom_files(paths))
    with Progress(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("send", total=len(files))
        results = send_files(
            files,
            host,
            port,
            called_ae,
            calling_ae,
            timeout=timeout,
            progress=lambda _r: progress.advance(task),
        )
    table = Table("file", "status", "detail")
    for result in results:
        status = "-" if result.status is None else f"0x{result.status:04X}"
        table.add_row(str(result.path), status, result.error or ("ok" if result.ok else "refused"))
    Console().print(table)
    failed = sum(not r.ok for r in results)
    console.print(f"{len(results) - failed} sent, {failed} failed")
    raise typer.Exit(0 if failed == 0 else 1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations up to the newest."""
    from db.engine import make_engine
    from db.migrate import current_revisions, upgrade

    settings = _settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    console.print(f"database at revision {', '.join(current_revisions(engine))}")


@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration as JSON, secrets masked."""
    print(json.dumps(masked_dump(_settings()), indent=2))


def _register_optional_commands() -> None:
    from api.cli import register as register_api
    from training.cli import register

    register(app)
    register_api(app)


_register_optional_commands()
