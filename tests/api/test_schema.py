"""Migration 0003_review creates exactly the tables the models describe."""

from __future__ import annotations

from tests.api.world import World
from tests.helpers.results_db import schema_differences

REVIEW_TABLES = {"users", "api_tokens", "reviews", "audit_events"}


def test_migration_matches_models(world: World) -> None:
    assert schema_differences(world.engine, REVIEW_TABLES) == []
