#!/usr/bin/env bash
# Installs what is missing (Debian bookworm packages only), then configures and builds.
# Idempotent: with everything installed and nothing changed it only asks make, which does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  cmake g++ make ccache time
  libtorch-dev python3-torch libopenblas0-pthread   # LibTorch; openblas replaces the slow reference BLAS
  python3-torchvision                                  # the model zoo fixtures (scripts/fixture_zoo.py)
  libonnx-dev libprotobuf-dev protobuf-compiler       # ONNX export and loading
  libeigen3-dev libcxxopts-dev nlohmann-json3-dev libyaml-cpp-dev catch2
  python3-jsonschema                                   # validates report.json in the tests
  librsvg2-bin libxml2-utils                           # rsvg-convert and xmllint check the SVG plots in the tests
  clang libclang-rt-14-dev                             # libFuzzer and sanitizer runtimes (tests/fuzz)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" > /tmp/compress-apt.log 2>&1 ||
    { tail -20 /tmp/compress-apt.log; echo "setup: apt-get install failed (log: /tmp/compress-apt.log)"; exit 1; }
fi

# Node.js and npm run ONNX Runtime (npm onnxruntime-node), the independent checker of every export.
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  echo "setup: installing nodejs npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm > /tmp/compress-apt.log 2>&1 ||
    { tail -20 /tmp/compress-apt.log; echo "setup: installing nodejs/npm failed"; exit 1; }
fi
ort_pkg=scripts/ort/node_modules/onnxruntime-node/package.json
if ! grep -q '"version": "1.30.0"' "$ort_pkg" 2>/dev/null; then
  echo "setup: installing onnxruntime-node 1.30.0 (npm)"
  # The package ships libonnxruntime.so for linux x64; its install script would only download CUDA extras.
  (cd scripts/ort && ONNXRUNTIME_NODE_INSTALL_CUDA=skip ONNXRUNTIME_NODE_INSTALL=skip \
     npm ci --no-audit --no-fund --loglevel=error > /tmp/compress-npm.log 2>&1) ||
    { tail -20 /tmp/compress-npm.log; echo "setup: npm ci failed (log: /tmp/compress-npm.log)"; exit 1; }
fi

if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /tmp/compress-cmake.log 2>&1 ||
    { cat /tmp/compress-cmake.log; exit 1; }
fi
cmake --build build -j2 2>&1 | grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)' || true
test -x build/compress || { echo "setup: build failed"; exit 1; }
