#!/usr/bin/env bash
# Configures and builds the fuzz targets (build-fuzz/, clang + libFuzzer + ASan + UBSan). The recipe target
# links the main build's libcompress_core.a, so run scripts/setup.sh first. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  cmake -S . -B build-fuzz -DCOMPRESS_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release \
    -DCOMPRESS_HOST_CORE="$PWD/build/libcompress_core.a" > /tmp/compress-cmake-fuzz.log 2>&1 ||
    { cat /tmp/compress-cmake-fuzz.log; exit 1; }
fi
cmake --build build-fuzz -j2 2>&1 | grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)' || true
test -x build-fuzz/tests/fuzz/fuzz_onnx || { echo "fuzz_build: build failed"; exit 1; }
