"""Settings for a node on an ephemeral loopback port, as the tests start it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import Settings
from gateway.service import Service

NodeFactory = Callable[..., Service]


def make_settings(home: Path, **overrides: Any) -> Settings:
    """SCP on 127.0.0.1, port chosen by the system, no model, no API, a long quiet period."""
    node = {"bind_address": "127.0.0.1", "port": 0, **overrides.pop("node", {})}
    return Settings(
        home=home,
        node=node,
        inference={"enabled": False},
        api={"enabled": False},
        grouping={"quiet_period_s": 3600, **overrides.pop("grouping", {})},
        **overrides,
    )
