"""The layers of docs/ARCHITECTURE.md, checked on the source: which package may import which.

Every import counts, including those inside functions, since a deferred import is still a
dependency. ``gateway/`` is the composition root: nothing below it imports it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.helpers.fresh import run_fresh

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


def imported_modules(package: str) -> dict[str, set[str]]:
    """Modules that ``package`` imports, each with the files that import it."""
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
                found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages that ``package`` imports, each with the files that import it."""
    found: dict[str, set[str]] = {}
    for name, files in imported_modules(package).items():
        found.setdefault(name.partition(".")[0], set()).update(files)
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


def test_db_takes_only_the_audit_vocabulary() -> None:
    """audit/ writes through db/; db/ may name audit codes in its tables and nothing more, and
    those codes import nothing of ours, so the two never form a cycle."""
    from_audit = {name for name in imported_modules("db") if name.partition(".")[0] == "audit"}
    assert from_audit == {"audit.codes"}
    ours = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")}
    assert "db" in ours
    codes_imports = {
        name
        for name, files in imported_modules("audit").items()
        if "audit/codes.py" in files and name.partition(".")[0] in ours
    }
    assert codes_imports == set()


#: Modules that need the model card or start the service, but not the model itself: importing
#: any of them must not load TensorFlow (seconds of start-up, and gigabytes in every API worker).
LIGHT_MODULES = (
    "inference.model_package",
    "pipeline.study",
    "pipeline.publish",
    "pipeline.heatmaps",
    "api.app",
    "gateway.cli",
)

_IMPORT_AND_REPORT = """
import importlib, json, sys
heavy = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    heavy[name] = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
print(json.dumps(heavy))
"""


def test_the_model_card_and_the_service_load_without_tensorflow() -> None:
    """Each module is imported in turn in a fresh interpreter; none may pull in Keras."""
    heavy = json.loads(run_fresh(_IMPORT_AND_REPORT, *LIGHT_MODULES).strip().splitlines()[-1])
    assert list(heavy) == list(LIGHT_MODULES)
    assert {name: loaded for name, loaded in heavy.items() if loaded} == {}


@pytest.mark.slow
def test_the_tensorflow_check_sees_a_module_that_loads_it() -> None:
    """inference.predictor builds Keras models, so it loads TensorFlow: the check can fail."""
    output = run_fresh(_IMPORT_AND_REPORT, "inference.predictor")
    assert json.loads(output.strip().splitlines()[-1]) == {
        "inference.predictor": ["keras", "tensorflow"]
    }
