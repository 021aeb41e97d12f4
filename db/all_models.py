"""Import every module that defines tables, so the metadata is complete (migrations, tests)."""

from db import (
    models,  # noqa: F401
    results,  # noqa: F401
    review,  # noqa: F401
)
