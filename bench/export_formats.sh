#!/usr/bin/env bash
# Runs every exporting recipe on stories260K and tabulates, per format: ONNX file size, quantized-weight
# size ratio, ONNX Runtime vs executor max |diff| (ORT optimizations off / ORT default), perplexity
# (executor / ORT off / ORT default), and [1,128] latency (executor, ORT default). Writes bench/export_formats.json.
# Usage: bash bench/export_formats.sh [build/compress]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/compress}
tmp=$(mktemp -d)
for c in fp32 fp16 int8 int4_g32 int4_g32_qdq prune50 prune50_int4_g32 prune50_int8; do
  "$bin" --config "configs/$c.yaml" --output "$tmp/$c" --quiet > /dev/null
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, sys, os
tmp = sys.argv[1]
rows, out = [], {}
print("| recipe | opset | ONNX bytes | quantized weights / fp32 | ORT diff (opt off) | ORT diff (default) | ppl executor | ppl ORT off | ppl ORT default | executor ms | ORT ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in ["fp32", "fp16", "int8", "int4_g32", "int4_g32_qdq", "prune50", "prune50_int4_g32", "prune50_int8"]:
    r = json.load(open(os.path.join(tmp, c, "report.json")))
    e = r["export"]; o = e["validation"]["onnxruntime"]; p = o["perplexity"]
    lat = {l["engine"].split()[0]: l["compressed_median_ms"] for l in r["latency"]}
    q = f'{e["quantized_weight_ratio"]:.3f}' if e["quantized_weight_fp32_bytes"] else "-"
    kind = "rel " if o["tolerance_kind"] == "relative" else ""
    d0 = o["opt_disabled"]["max_rel_diff" if kind else "max_abs_diff"]; d1 = o["opt_all"]["max_rel_diff" if kind else "max_abs_diff"]
    print(f'| {c} | {e["opset"]} | {e["total_bytes"]} | {q} | {kind}{d0:.2e} | {kind}{d1:.2e} | {p["executor"]:.4f} | {p["ort_opt_disabled"]:.4f} | {p["ort_opt_all"]:.4f} | {lat.get("executor", 0):.2f} | {lat.get("onnxruntime", 0):.2f} |')
    out[c] = {"export": e, "latency": r["latency"], "accuracy": r["accuracy"]}
json.dump(out, open("bench/export_formats.json", "w"), indent=1)
PY
rm -rf "$tmp"
