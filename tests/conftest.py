import os
from pathlib import Path
import pytest
REPO_ROOT = Path(__file__).resolve().parent.parent
@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = Path(os.environ.get("FRACTURE_GATEWAY_SHARED", REPO_ROOT.parent / "shared")).resolve()
    if not path.is_dir():
        pytest.fail(f"shared material not found at {path}; set FRACTURE_GATEWAY_SHARED")
    return path
