#!/usr/bin/env bash
# model_coverage.sh — runs the model-zoo tests (tests/compress/zoo_test.cpp) and writes their results as the
# coverage table of docs/models.md (between the coverage markers). Usage: scripts/model_coverage.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=$(mktemp)
(cd "$build/tests" && COMPRESS_ZOO_COVERAGE="$out" ./compress_tests "[zoo]" > /dev/null) || echo "model_coverage: some zoo tests failed (see the table)"
/usr/bin/python3 - "$out" docs/models.md <<'PY'
import json, sys
cov = json.load(open(sys.argv[1]))
cols = [("import", "import"), ("executor", "executor = torch"), ("fp32 ORT", "export → ORT"), ("fp32 crun", "export → crun"),
        ("int8", "rtn int8"), ("int4-g32", "rtn int4-g32"), ("prune50", "50% prune"), ("torch.onnx in crun", "torch.onnx → crun")]
def cell(fam, key):
    v = cov.get(fam, {}).get(key, "—")
    if key in ("int8", "int4-g32", "prune50") and v == "ok":  # the format applies: did both runtimes agree?
        ok = all(cov[fam].get(key + s) == "ok" for s in (" ORT", " crun"))
        return "✓" if ok else "✗ " + cov[fam].get(key + " ORT", "") + " " + cov[fam].get(key + " crun", "")
    return "✓" if v == "ok" else v
rows = ["| family | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
for fam in cov:
    rows.append("| " + fam + " | " + " | ".join(cell(fam, c[0]) for c in cols) + " |")
doc = open(sys.argv[2]).read()
a, b = doc.index("<!-- coverage:begin -->"), doc.index("<!-- coverage:end -->")
open(sys.argv[2], "w").write(doc[:a] + "<!-- coverage:begin -->\n" + "\n".join(rows) + "\n" + doc[b:])
print("\n".join(rows))
PY
rm -f "$out"
