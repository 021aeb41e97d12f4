"""RabbitMQ (127.0.0.1:5672, guest/guest) with a virtual host of its own for each test.

A vhost per test keeps the queues of parallel test runs, and of earlier runs, apart; it is made
with ``rabbitmqctl`` and deleted afterwards. Import the ``broker_url`` fixture into a module.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.helpers.tools import in_ci, require_program

RABBITMQ_HOST = os.environ.get("FRACTURE_GATEWAY_TEST_RABBITMQ", "127.0.0.1:5672")


def _rabbitmqctl(*args: str) -> None:
    program = require_program("rabbitmqctl")
    subprocess.run([program, "-q", *args], check=True, capture_output=True, timeout=60)


def add_vhost(prefix: str = "fg_test") -> str:
    """Make a fresh vhost the guest user may use; returns its AMQP URL."""
    vhost = f"{prefix}_{secrets.token_hex(4)}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@{RABBITMQ_HOST}/{vhost}"


def delete_vhost(url: str) -> None:
    """Delete the vhost of a URL made by :func:`add_vhost`."""
    _rabbitmqctl("delete_vhost", url.rsplit("/", 1)[1])


@contextmanager
def rabbitmq_vhost(prefix: str = "fg_bench") -> Iterator[str]:
    """An AMQP URL on a fresh vhost for the length of the block (for benchmarks)."""
    url = add_vhost(prefix)
    try:
        yield url
    finally:
        delete_vhost(url)


@pytest.fixture
def broker_url() -> Iterator[str]:
    """An AMQP URL on a fresh vhost that the guest user may use; the vhost is deleted after."""
    try:
        url = add_vhost()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        message = f"RabbitMQ not available through rabbitmqctl: {type(exc).__name__}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield url
    finally:
        delete_vhost(url)
