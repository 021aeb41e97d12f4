#!/usr/bin/env bash
# Quick start: set up, then run the whole service with the embedded defaults:
# SQLite and local storage under ./fracture-gateway-data (or $FRACTURE_GATEWAY_HOME), the
# bundled model, DICOM on port 11112 (AE title FRACTUREGW), the API on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/fracture-gateway serve "$@"
