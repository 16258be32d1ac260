#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, integration on the stories model, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
cd build
ctest -j2 --output-on-failure --timeout 600
echo "test.sh: total $(( $(date +%s) - start ))s"
