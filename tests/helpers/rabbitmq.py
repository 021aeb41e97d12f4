"""RabbitMQ (127.0.0.1:5672, guest/guest) with a virtual host of its own for each test.

A vhost per test keeps the queues of parallel test runs, and of earlier runs, apart; it is made
with ``rabbitmqctl`` and deleted afterwards. Import the ``broker_url`` fixture into a module.
:func:`broker_stopped` restarts the broker's application around a block (the cluster test).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.helpers.tools import in_ci, require_program

RABBITMQ_HOST = os.environ.get("FRACTURE_GATEWAY_TEST_RABBITMQ", "127.0.0.1:5672")


def _rabbitmqctl(*args: str, timeout_s: float = 60.0) -> str:
    program = require_program("rabbitmqctl")
    done = subprocess.run(
        [program, "-q", *args], check=True, capture_output=True, text=True, timeout=timeout_s
    )
    return done.stdout


def add_vhost(prefix: str = "fg_test") -> str:
    """Make a fresh vhost the guest user may use; returns its AMQP URL."""
    vhost = f"{prefix}_{secrets.token_hex(4)}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@{RABBITMQ_HOST}/{vhost}"


def delete_vhost(url: str) -> None:
    """Delete the vhost of a URL made by :func:`add_vhost`."""
    _rabbitmqctl("delete_vhost", vhost_of(url))


def vhost_of(url: str) -> str:
    """The vhost of an AMQP URL made by :func:`add_vhost`."""
    return url.rsplit("/", 1)[1]


def connected_vhosts() -> list[str]:
    """The vhost of each client connection the broker has now (one entry per connection)."""
    listing = _rabbitmqctl("list_connections", "--no-table-headers", "vhost")
    return [line.strip() for line in listing.splitlines() if line.strip()]


def accepts_amqp() -> bool:
    """Whether something accepts TCP connections on the broker's AMQP address."""
    host, port = RABBITMQ_HOST.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def broker_stopped() -> Iterator[None]:
    """Stop RabbitMQ's application for the block, then start it again and wait until it serves.

    ``rabbitmqctl stop_app`` closes every client connection and the AMQP listener; the Erlang
    node stays up, and what is on disk stays: vhosts, users, permissions, durable queues and
    their persistent messages (messages delivered but not acknowledged go back to their queue).
    ``start_app`` and ``await_startup`` run however the block ends, so the broker is left
    running. Every client of the broker is disconnected, not only the caller's: run it only
    where nothing else uses the broker (see :func:`connected_vhosts`).
    """
    try:
        _rabbitmqctl("stop_app", timeout_s=120)
        yield
    finally:
        _rabbitmqctl("start_app", timeout_s=120)
        _rabbitmqctl("await_startup", timeout_s=120)


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
