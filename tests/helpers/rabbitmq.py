"""RabbitMQ (127.0.0.1:5672, guest/guest) with a virtual host of its own for each test.

A vhost per test keeps the queues of parallel test runs, and of earlier runs, apart; it is made
with ``rabbitmqctl`` and deleted afterwards. Import the ``broker_url`` fixture into a module.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.tools import in_ci, require_program

RABBITMQ_HOST = os.environ.get("FRACTURE_GATEWAY_TEST_RABBITMQ", "127.0.0.1:5672")


def _rabbitmqctl(*args: str) -> None:
    program = require_program("rabbitmqctl")
    subprocess.run([program, "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker_url() -> Iterator[str]:
    """An AMQP URL on a fresh vhost that the guest user may use; the vhost is deleted after."""
    vhost = f"fg_test_{secrets.token_hex(4)}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        message = f"RabbitMQ not available through rabbitmqctl: {type(exc).__name__}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f"amqp://guest:guest@{RABBITMQ_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)
