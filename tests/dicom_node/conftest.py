"""A running DICOM node (SCP only, no workers) on an ephemeral loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from gateway.service import Service

NodeFactory = Callable[..., Service]


def make_settings(home: Path, **overrides: Any) -> Settings:
    node = {"bind_address": "127.0.0.1", "port": 0, **overrides.pop("node", {})}
    return Settings(
        home=home,
        node=node,
        inference={"enabled": False},
        api={"enabled": False},
        grouping={"quiet_period_s": 3600, **overrides.pop("grouping", {})},
        **overrides,
    )


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start nodes with given settings overrides; all are stopped after the test."""
    started: list[Service] = []

    def start(*, worker: bool = False, **overrides: Any) -> Service:
        service = Service(make_settings(tmp_path / f"home{len(started)}", **overrides))
        service.start(dicom=True, worker=worker)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def node(start_node: NodeFactory) -> Service:
    return start_node()
