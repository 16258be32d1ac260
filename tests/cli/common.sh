# common.sh — sourced by the CLI test scripts: `check NAME CONDITION`, a fresh work folder, and the rule
# that a test needing ../shared fails under CI (CI set) when it is missing, and skips elsewhere.
# Expects: src (source dir), work (work dir). Sets: fails, shared.
fails=0
check() { if eval "$2"; then echo "ok   - $1"; else echo "FAIL - $1"; fails=$((fails + 1)); fi; }
rm -rf "$work" && mkdir -p "$work"
shared="$src/../shared"
if [ ! -f "$shared/models/stories260K/stories260K.pt" ]; then
  if [ -n "${CI:-}" ]; then echo "FAIL: ../shared is not next to the checkout, and CI must run this test"; exit 1; fi
  echo "SKIPPED: ../shared is not next to the checkout"; exit 0
fi
