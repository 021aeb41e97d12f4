"""Start-up of a distributed gateway out of real parts, shared by tests and benchmarks.

``fracture-gateway`` processes (``serve --no-api --no-worker`` nodes, ``worker`` Celery workers)
started as ``python -m gateway`` from this checkout, configured only through environment
variables, sharing a PostgreSQL schema, a RabbitMQ vhost and a storage folder; Orthanc
(:mod:`tests.helpers.orthanc`) is the PACS the results go to. Used by
``tests/gateway/test_celery_cluster.py`` and ``bench/bench_scale.py``.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kombu import Connection
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from tests.helpers.orthanc import Orthanc

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A small DX image (37 KB) of the shared test files, the source of :func:`make_studies`.
DX = "highdicom/data/test_files/dx_image.dcm"


@dataclass
class Started:
    """A ``fracture-gateway`` process started here (the Python process itself)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def pause(self) -> None:
        """Stop the process (SIGSTOP) and return once all its threads have stopped."""
        os.kill(self.pid, signal.SIGSTOP)
        _, status = os.waitpid(self.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):  # it had exited: reaped here, so tell Popen
            self.process.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}")

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT); nothing happens to a running one."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)


@contextmanager
def postgres_database(admin_url: str, prefix: str = "fg_bench") -> Iterator[str]:
    """A fresh PostgreSQL database (URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def postgres_schema(database_url: str, prefix: str = "cluster") -> Iterator[str]:
    """A URL on ``database_url`` whose search path is a fresh schema, dropped afterwards."""
    schema = f"{prefix}_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{database_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_studies(
    shared_dir: Path, folder: Path, count: int, prefix: str = "CLUSTER"
) -> list[tuple[str, Path, Path]]:
    """``count`` two-image DX studies (two series each), as files: (study UID, first, second)."""
    source = dcmread(shared_dir / "dicom" / DX)
    source.BodyPartExamined = "HAND"
    folder.mkdir(parents=True, exist_ok=True)
    studies = []
    for n in range(count):
        first = copy.deepcopy(source)
        first.PatientID = f"{prefix}-{n:03d}"
        first.StudyInstanceUID = generate_uid()
        first.SeriesInstanceUID = generate_uid()
        first.SOPInstanceUID = generate_uid()
        second = copy.deepcopy(first)
        second.SeriesInstanceUID = generate_uid()
        second.SOPInstanceUID = generate_uid()
        second.SeriesNumber = 2
        paths = (folder / f"{n:03d}-a.dcm", folder / f"{n:03d}-b.dcm")
        first.save_as(paths[0], enforce_file_format=True)
        second.save_as(paths[1], enforce_file_format=True)
        studies.append((str(first.StudyInstanceUID), *paths))
    return studies


def cluster_environment(
    storage: Path,
    database_url: str,
    broker: str,
    model: Path,
    pacs: Orthanc,
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """The settings every process shares, as environment variables (no configuration file).

    The Celery executor, the PACS as the only destination, no API, loopback only; anything
    else is the settings' default unless ``overrides`` (``FRACTURE_GATEWAY_...`` names) says.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_GATEWAY_")}
    env["FRACTURE_GATEWAY_SHARED"] = os.environ.get("FRACTURE_GATEWAY_SHARED", "")
    destination = {
        "name": "pacs",
        "ae_title": pacs.ae_title,
        "host": "127.0.0.1",
        "port": pacs.dicom_port,
    }
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "FRACTURE_GATEWAY_DATABASE__URL": database_url,
            "FRACTURE_GATEWAY_STORAGE__FOLDER": str(storage),
            "FRACTURE_GATEWAY_JOBS__EXECUTOR": "celery",
            "FRACTURE_GATEWAY_JOBS__BROKER_URL": broker,
            "FRACTURE_GATEWAY_INFERENCE__MODEL_PATH": str(model),
            "FRACTURE_GATEWAY_API__ENABLED": "false",
            "FRACTURE_GATEWAY_NODE__BIND_ADDRESS": "127.0.0.1",
            "FRACTURE_GATEWAY_NODE__ACCEPT_ANY_CALLING_AE": "true",
            "FRACTURE_GATEWAY_DESTINATIONS": json.dumps([destination]),
            "FRACTURE_GATEWAY_LOG_LEVEL": "INFO",
        }
    )
    env.update(overrides or {})
    return env


def start(
    started: list[Started], name: str, args: list[str], env: dict[str, str], home: Path
) -> Started:
    """Start ``python -m gateway ARGS`` with its own home folder and log; add it to ``started``."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "process.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=REPO_ROOT,
            env={**env, "FRACTURE_GATEWAY_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    item = Started(name, process)
    started.append(item)
    return item


def consumers(broker: str, queue: str) -> int:
    """How many consumers (worker processes) RabbitMQ has on ``queue`` (0 if not declared)."""
    with Connection(broker) as connection:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).consumer_count)
        except Exception:  # not declared yet: no worker has started consuming
            return 0


def poll(
    condition_name: str, check: Callable[[], object], deadline: float, interval_s: float = 0.05
) -> None:
    """Call ``check`` until it returns true; raise TimeoutError naming the condition at the
    deadline (a ``time.monotonic()`` value)."""
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in time: {condition_name}")
        time.sleep(interval_s)
