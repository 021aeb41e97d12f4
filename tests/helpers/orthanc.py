"""Orthanc (the Debian package's ``/usr/sbin/Orthanc``) as a real PACS for tests and benchmarks.

:func:`run_orthanc` starts it with its own temporary configuration: free HTTP and DICOM ports
on loopback, storage in a temporary folder, no plugins, no remote access, no authentication.
Peers are registered at run time with :meth:`Orthanc.add_modality`. Import the ``orthanc``
fixture into a test module to get one per test.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.tools import free_port, require_program, stop_process, wait_for_port

ORTHANC_PROGRAM = "/usr/sbin/Orthanc"
#: How often to try to start Orthanc when a port was taken by someone else meanwhile.
START_ATTEMPTS = 3


@dataclass
class Orthanc:
    """A running Orthanc and a REST client for it."""

    http_port: int
    dicom_port: int
    ae_title: str
    folder: Path
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        response = self.client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM file (REST ``POST /instances``); returns Orthanc's answer."""
        response = self.client.post(
            "/instances", content=data, headers={"Content-Type": "application/dicom"}
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Register a DICOM peer Orthanc may send to and accept from."""
        response = self.client.put(
            f"/modalities/{name}",
            json={"AET": ae_title, "Host": host, "Port": port, "AllowStore": True},
        )
        response.raise_for_status()

    def send_to_modality(self, name: str, resources: list[str]) -> Any:
        """C-STORE resources (Orthanc IDs) to a registered modality, waiting for the end."""
        return self.post(f"/modalities/{name}/store", {"Resources": resources, "Synchronous": True})

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """Every instance of a study, with its main tags."""
        instances: list[dict[str, Any]] = self.get(f"/studies/{study_id}/instances")
        return instances

    def tags(self, instance_id: str) -> dict[str, Any]:
        """All tags of an instance in Orthanc's simplified form (keyword -> value)."""
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags


def orthanc_config(
    folder: Path, *, http_port: int, dicom_port: int, ae_title: str
) -> dict[str, Any]:
    """A configuration for a private, loopback-only Orthanc keeping its files in ``folder``."""
    return {
        "Name": "fracture-gateway-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": {},
        "DicomScuTimeout": 60,
        "StableAge": 1,
        "Plugins": [],
        "ConcurrentJobs": 2,
        "LimitJobs": 20,
        "HttpTimeout": 120,
        "DefaultEncoding": "Utf8",
        "OverwriteInstances": False,
        "SaveJobs": False,
    }


@contextmanager
def run_orthanc(folder: Path, *, ae_title: str = "ORTHANC") -> Iterator[Orthanc]:
    """Start Orthanc with its own configuration in ``folder``; stop it on exit."""
    program = require_program(ORTHANC_PROGRAM)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "orthanc.json"
    for attempt in range(START_ATTEMPTS):
        http_port, dicom_port = free_port(), free_port()
        while dicom_port == http_port:
            dicom_port = free_port()
        config = orthanc_config(
            folder, http_port=http_port, dicom_port=dicom_port, ae_title=ae_title
        )
        config_path.write_text(json.dumps(config, indent=2))
        with open(folder / "orthanc.log", "ab") as log:
            process = subprocess.Popen(
                [program, "--verbose", str(config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(http_port, process=process, timeout_s=60)
            wait_for_port(dicom_port, process=process, timeout_s=60)
            break
        except RuntimeError:  # exited at once: a port was taken meanwhile, try others
            stop_process(process)
            if attempt == START_ATTEMPTS - 1:
                raise
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120.0)
    try:
        _wait_ready(client)
        yield Orthanc(http_port, dicom_port, ae_title, folder, process, client)
    finally:
        client.close()
        stop_process(process, timeout_s=30)


def _wait_ready(client: httpx.Client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/system").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Orthanc did not answer GET /system")
        time.sleep(0.1)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A private Orthanc for one test."""
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server
