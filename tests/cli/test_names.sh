#!/usr/bin/env bash
# test_names.sh — fails when a Catch2 test case's name would not run under CTest. catch_discover_tests registers
# each test case under its name, and CTest splits a name at ';' into filters that match nothing: such a test
# "passes" without running (ten did, until this check). Arguments: the Catch2 test binaries.
set -euo pipefail
bad=0
for bin in "$@"; do
  names=$("$bin" --list-test-names-only || true)  # (Catch2 v2 exits with the number of tests it lists)
  if grep -n ';' <<<"$names"; then
    echo "$bin: the test cases above have ';' in their names, which CTest splits: they never run. Rename them." >&2
    bad=1
  fi
done
exit $bad
