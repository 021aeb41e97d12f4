#!/usr/bin/env bash
# The one lint command, used by CI and by people: ruff (lint and format) and mypy --strict.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(dicom_node inference reporting training db config api pipeline gateway audit)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy "${packages[@]}"
