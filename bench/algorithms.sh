#!/usr/bin/env bash
# Every calibration algorithm on every family of the fixture zoo (scripts/fixture_zoo.py; random weights,
# calibration drawn like each family's recorded inputs): whether it runs (or why not), seconds, and the
# model-output error ‖y - y_float‖/‖y_float‖ on the recorded cases, next to its baseline's (RTN for the
# quantizers at int4-g32, magnitude for the pruners at 50%; channel pruning 25%). Runs the zoo algorithm test, which asserts
# that each runs and that GPTQ/SparseGPT are no worse than 1.25x their baseline, and prints a Markdown
# table; writes bench/algorithms.json.
# Usage: bash bench/algorithms.sh [build]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
COMPRESS_ZOO_ALGORITHMS=bench/algorithms.json "$build/tests/compress_tests" "[algorithms]" > /dev/null
python3 - <<'PY'
import json
t = json.load(open("bench/algorithms.json"))
algos = ["rtn", "gptq", "awq", "magnitude", "wanda", "sparsegpt", "structured", "heads", "channel"]
print("| family | " + " | ".join(algos) + " |")
print("|---" * (len(algos) + 1) + "|")
for fam, row in t.items():
    cells = []
    for a in algos:
        r = row[a]
        if r["runs"]:
            layers = f", {r['layers']} {'groups' if a == 'channel' else 'layers'}" if r.get("layers", -1) >= 0 else ""
            if "macs_kept" in r:
                layers += f", MACs x{r['macs_kept']:.2f}"
            cells.append(f"{r['output_error']:.3f} ({r['seconds']:.2f} s{layers})")
        else:
            why = r["why"].split("\n")[0]
            why = why.split(": ", 1)[1] if ": " in why else why  # drop the pass name
            cells.append("n/a: " + why[:48])
    print(f"| {fam} | " + " | ".join(cells) + " |")
print("\ncell: output error vs float (seconds, layers changed); int4-g32 for rtn/gptq/awq, 50% for magnitude (per row)/wanda/sparsegpt, 25% FFN neurons for structured, 25% of the attention heads (key/value groups) for heads, 25% of every channel group for channel (MACs kept)")
PY
