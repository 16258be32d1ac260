#!/usr/bin/env bash
# Structured FFN pruning (configs/structured_ffn25.yaml: 25% of FFN neurons by activation-weighted norm)
# before/after: parameters, ONNX size, perplexity (stories) and latency in our runtime (crun) and ONNX
# Runtime (onnxruntime-node, default optimizations, same threads) in one run, on stories260K and on the
# synthetic LLaMA-shape model of bench/runtime.sh (dim 768, 12 layers, hidden 2048; random weights, so
# no perplexity). Prints a Markdown table and writes bench/structured.json.
# Usage: bash bench/structured.sh [build] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
threads=${2:-2}
shared=$(realpath ../shared)
mkdir -p build/bench
synth=build/bench/llama768_untied.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$build/compress" --config configs/fp32.yaml --output "$tmp/stories_dense" --quiet > /dev/null
"$build/compress" --config configs/structured_ffn25.yaml --output "$tmp/stories_ffn25" --quiet > /dev/null
for v in dense ffn25; do
  passes="[]"
  [ $v = ffn25 ] && passes="[{structured-prune: {ffn_ratio: 0.25, score: activation}}]"
  cat > "$tmp/synth_$v.yaml" <<YAML
model: $(realpath $synth)
data:
  calibration: {tokens: $shared/data/tinystories/train_head.tok512.npy, samples: 8, seq_len: 128}
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, validate: false}}
output: $tmp/synthetic_$v
YAML
  "$build/compress" --config "$tmp/synth_$v.yaml" --quiet > /dev/null
done

/usr/bin/python3 - "$tmp" > /dev/null <<'PY'
import numpy as np, sys
for s in (1, 128):
    np.save(f"{sys.argv[1]}/tokens_{s}.npy", np.random.RandomState(s).randint(0, 500, (1, s)).astype(np.int64))
PY

rows="["
for model in stories synthetic; do
  for v in dense ffn25; do
    dir="$tmp/${model}_$v"
    for s in 1 128; do
      if [ $model = stories ]; then runs=$([ $s = 1 ] && echo 1000 || echo 300); else runs=$([ $s = 1 ] && echo 60 || echo 10); fi
      ours=$("$build/crun" bench "$dir/model.onnx" --shape tokens=1x$s --threads "$threads" --runs "$runs" --warmup 5 --json)
      ort=$(node scripts/ort/ort_run.js bench "$dir/model.onnx" --in tokens="$tmp/tokens_$s.npy" --runs "$runs" --opt all --threads "$threads")
      rows="$rows{\"model\": \"$model\", \"variant\": \"$v\", \"shape\": \"1x$s\", \"onnx_bytes\": $(stat -c %s "$dir/model.onnx"), \"report\": \"$dir/report.json\", \"ours\": $ours, \"ort\": $ort},"
    done
  done
done
echo "${rows%,}]" > "$tmp/rows.json"

/usr/bin/python3 - "$tmp/rows.json" "$threads" <<'PY'
import json, sys
rows, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
print(f"{threads} threads; ONNX Runtime 1.30 (node), graph optimizations all\n")
print("| model | variant | params | ONNX MB | perplexity | shape | crun ms | ORT ms |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    rep = json.load(open(r.pop("report")))
    r["params"] = rep["compressed"]["params"]
    r["perplexity"] = rep["accuracy"]["final"] if rep["accuracy"]["measured"] else None
    ppl = f'{r["perplexity"]:.4f}' if r["perplexity"] else "n/a (random weights)"
    print(f'| {r["model"]} | {r["variant"]} | {r["params"]:,} | {r["onnx_bytes"] / 1e6:.2f} | {ppl} | [{r["shape"].replace("x", ",")}] '
          f'| {r["ours"]["median_ms"]:.3f} | {r["ort"]["median_ms"]:.3f} |')
print()
for m in ("stories", "synthetic"):
    for s in ("1x1", "1x128"):
        d = {r["variant"]: r for r in rows if r["model"] == m and r["shape"] == s}
        print(f'{m} [{s.replace("x", ",")}]: after/before crun {d["ffn25"]["ours"]["median_ms"] / d["dense"]["ours"]["median_ms"]:.2f}, '
              f'ORT {d["ffn25"]["ort"]["median_ms"] / d["dense"]["ort"]["median_ms"]:.2f}')
json.dump({"threads": threads, "rows": rows}, open("bench/structured.json", "w"), indent=1)
PY
