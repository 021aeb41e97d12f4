#!/usr/bin/env bash
# Set up fracture-gateway on Debian (12+) with Python 3.11+: system packages, a virtual
# environment in .venv, and the project installed in it (editable, so the bundled model in
# models/ is found). Idempotent: run it again to update.
#
#   scripts/setup.sh            what the service needs
#   scripts/setup.sh --test     also what the test suite needs (dcmtk, openssl, Orthanc, dicom3tools,
#                               Chromium, RabbitMQ, and the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

packages=(python3 python3-venv python3-dev)
[ "$want_test" = 1 ] && packages+=(dcmtk openssl orthanc dicom3tools chromium rabbitmq-server)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Orthanc is started by the tests with their own configuration; the packaged service is not needed.
if [ "$want_test" = 1 ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    systemctl stop orthanc || true
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "fracture-gateway needs Python >= 3.11 (found $("$python" --version))" >&2
    exit 1
}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
else
    .venv/bin/python -m pip install -q -e .
fi
echo "fracture-gateway is set up in .venv"
