#!/usr/bin/env bash
# Set up everything the tests need, then run the whole test suite. Integration tests talk to
# real dcmtk, Orthanc, dciodvfy, PostgreSQL (127.0.0.1:5432) and Chromium; under CI=true none
# of them may be skipped. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export FRACTURE_GATEWAY_SHARED="${FRACTURE_GATEWAY_SHARED:-$(cd .. && pwd)/shared}"
exec .venv/bin/python -m pytest "$@"
