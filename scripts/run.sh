#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job: compress on the stories model with the
# default recipe (SparseGPT 50%, a short distillation, int8; ~3 minutes). Results land in out/prune50_int8/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f ../shared/models/stories260K/stories260K.pt ]; then
  echo "run: ../shared (the stories260K model and data) must sit next to this checkout"; exit 1
fi
exec build/compress --config "${1:-configs/prune50_int8.yaml}"
