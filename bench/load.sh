#!/usr/bin/env bash
# Model load time: crun (`crun bench --runs 1`, its "load" line: Session::create, from the file to packed weights)
# against ONNX Runtime's InferenceSession.create (`scripts/ort/ort_run.js load`, default optimizations "all" and
# "disabled") on the synthetic LLaMA-shape model's exports of bench/sparse.sh (dense fp32, int8, int4-g32, and the
# pruned files crun builds sparse forms for: 50% fp32 (masks), 2:4 fp32, int8 and int4 (the pairs layout)), 2
# threads, interleaved over the rounds (the machine is
# shared); the median of the rounds is kept, with crun's peak memory. Prints a Markdown table, writes bench/load.json.
# Usage: bash bench/load.sh [build] [rounds]   (run bench/sparse.sh first: it writes the exports)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
rounds=${2:-5}
dir=build/bench/sparse
ort="node scripts/ort/ort_run.js"
files="dense_fp32 dense_int8 dense_int4_g32 50_fp32 2of4_fp32 2of4_int8 2of4_int4_g32"
for f in $files; do
  [ -f "$dir/$f/model.onnx" ] || { echo "missing $dir/$f/model.onnx: run bash bench/sparse.sh first" >&2; exit 1; }
done
rows=$(mktemp)
for r in $(seq "$rounds"); do
  for f in $files; do
    m="$dir/$f/model.onnx"
    out=$("$build/crun" bench "$m" --shape tokens=1x1 --runs 1 --warmup 0 --threads 2 2>&1)
    crun_s=$(sed -n 's/.*load \([0-9.]*\) s.*/\1/p' <<<"$out")
    mib=$(sed -n 's/.*peak memory \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    all=$($ort load "$m" --opt all --threads 2 | sed -n 's/.*"load_ms":\([0-9.]*\).*/\1/p')
    off=$($ort load "$m" --opt disabled --threads 2 | sed -n 's/.*"load_ms":\([0-9.]*\).*/\1/p')
    echo "$f $crun_s $mib $all $off" >>"$rows"
  done
done
python3 - "$rows" <<'PY'
import json, statistics, sys, os
rows = [l.split() for l in open(sys.argv[1])]
out = {}
print("| file | MB | crun load (s) | ONNX Runtime, all (s) | ONNX Runtime, disabled (s) | crun / ORT all | crun peak MiB |")
print("|---|---|---|---|---|---|---|")
for f in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == f]
    med = lambda i: statistics.median(float(r[i]) for r in rs)
    c, mib, a, d = med(1), med(2), med(3) / 1000, med(4) / 1000
    mb = os.path.getsize(f"build/bench/sparse/{f}/model.onnx") / 1e6
    out[f] = {"mb": round(mb, 1), "crun_s": c, "crun_peak_mib": mib, "ort_all_s": round(a, 3), "ort_disabled_s": round(d, 3),
              "crun_runs": [float(r[1]) for r in rs], "ort_all_runs": [float(r[3]) / 1000 for r in rs]}
    print(f"| {f} | {mb:.1f} | {c:.2f} | {a:.2f} | {d:.2f} | {c / a:.2f} | {mib:.0f} |")
json.dump(out, open("bench/load.json", "w"), indent=1)
PY
rm -f "$rows"
