"""The layers of docs/ARCHITECTURE.md, checked on the source: which package may import which.

Every import counts, including those inside functions, since a deferred import is still a
dependency. ``gateway/`` is the composition root: nothing below it imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: (package, packages it must not import, why)
FORBIDDEN: tuple[tuple[str, frozenset[str], str], ...] = (
    ("api", frozenset({"gateway"}), "the API uses the domain packages, never the composition root"),
    ("pipeline", frozenset({"gateway", "api"}), "the study's steps sit below the service and HTTP"),
    ("dicom_node", frozenset({"api", "pipeline", "gateway"}), "the network edge sits below HTTP"),
    ("audit", frozenset({"api", "dicom_node", "pipeline", "gateway"}), "everyone audits"),
    (
        "reporting",
        frozenset({"dicom_node", "db", "api", "pipeline", "gateway"}),
        "building DICOM objects is pure: no network, no database",
    ),
    (
        "inference",
        frozenset({"dicom_node", "db", "api", "pipeline", "gateway"}),
        "pixels to probabilities is pure: no network, no database",
    ),
)


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages that ``package`` imports, each with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(
                    str(path.relative_to(REPO_ROOT))
                )
    return found


def test_the_walker_sees_imports_inside_functions() -> None:
    """gateway/cli.py imports gateway.service only inside its commands."""
    assert "gateway/cli.py" in imported_packages("gateway")["gateway"]
    assert "gateway/service.py" in imported_packages("gateway")["pipeline"]


@pytest.mark.parametrize(("package", "forbidden", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_package_does_not_import_a_layer_above(
    package: str, forbidden: frozenset[str], why: str
) -> None:
    imports = imported_packages(package)
    offending = {name: sorted(imports[name]) for name in sorted(forbidden & imports.keys())}
    assert not offending, f"{package} imports {offending}: {why}"
