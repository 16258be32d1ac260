#!/usr/bin/env bash
# Structured pruning (configs/structured_ffn25.yaml: 25% of FFN neurons by activation-weighted norm; and
# the same plus 25% of attention heads) before/after: parameters, ONNX size, perplexity (stories) and latency in our runtime (crun) and ONNX
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
sed -e "s#\.\./\.\./shared#$shared#g" -e 's#ffn_ratio: 0.25,#ffn_ratio: 0.25, head_ratio: 0.25,#' configs/structured_ffn25.yaml > "$tmp/heads.yaml"
"$build/compress" --config "$tmp/heads.yaml" --output "$tmp/stories_ffn25_heads25" --quiet > /dev/null
for v in dense ffn25 ffn25_heads25; do
  case $v in
    dense) passes="[]" ;;
    ffn25) passes="[{structured-prune: {ffn_ratio: 0.25, score: activation}}]" ;;
    ffn25_heads25) passes="[{structured-prune: {ffn_ratio: 0.25, head_ratio: 0.25, score: activation}}]" ;;
  esac
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

# Variants are measured interleaved, three rounds; the table gives the median of the three medians (this
# VM's run-to-run noise is about +-10%, larger than some of the differences).
rows="["
for round in 1 2 3; do
  for model in stories synthetic; do
    for s in 1 128; do
      for v in dense ffn25 ffn25_heads25; do
        dir="$tmp/${model}_$v"
        if [ $model = stories ]; then runs=$([ $s = 1 ] && echo 1000 || echo 300); else runs=$([ $s = 1 ] && echo 40 || echo 8); fi
        ours=$("$build/crun" bench "$dir/model.onnx" --shape tokens=1x$s --threads "$threads" --runs "$runs" --warmup 5 --json)
        ort=$(node scripts/ort/ort_run.js bench "$dir/model.onnx" --in tokens="$tmp/tokens_$s.npy" --runs "$runs" --opt all --threads "$threads")
        rows="$rows{\"round\": $round, \"model\": \"$model\", \"variant\": \"$v\", \"shape\": \"1x$s\", \"onnx_bytes\": $(stat -c %s "$dir/model.onnx"), \"report\": \"$dir/report.json\", \"ours\": $ours, \"ort\": $ort},"
      done
    done
  done
done
echo "${rows%,}]" > "$tmp/rows.json"

/usr/bin/python3 - "$tmp/rows.json" "$threads" <<'PY'
import json, sys
raw, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
import statistics
rows = []
for r in raw:
    if r["round"] != 1: continue
    same = [x for x in raw if (x["model"], x["variant"], x["shape"]) == (r["model"], r["variant"], r["shape"])]
    rep = json.load(open(r["report"]))
    rows.append({"model": r["model"], "variant": r["variant"], "shape": r["shape"], "onnx_bytes": r["onnx_bytes"],
                 "params": rep["compressed"]["params"],
                 "perplexity": rep["accuracy"]["final"] if rep["accuracy"]["measured"] else None,
                 "crun_ms": statistics.median(x["ours"]["median_ms"] for x in same),
                 "ort_ms": statistics.median(x["ort"]["median_ms"] for x in same),
                 "crun_min_ms": min(x["ours"]["min_ms"] for x in same), "ort_min_ms": min(x["ort"]["min_ms"] for x in same),
                 "crun_rounds_ms": [x["ours"]["median_ms"] for x in same], "ort_rounds_ms": [x["ort"]["median_ms"] for x in same]})
print(f"{threads} threads; ONNX Runtime 1.30 (node), graph optimizations all; 3 interleaved rounds: median of the\n"
      "rounds' medians, and the fastest run of all (less sensitive to other load on the machine); after/before on the fastest run\n")
print("| model | variant | params | ONNX MB | perplexity | shape | crun median / fastest ms | ORT median / fastest ms | crun after/before | ORT after/before |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    base = next(x for x in rows if (x["model"], x["shape"], x["variant"]) == (r["model"], r["shape"], "dense"))
    r["crun_ratio"], r["ort_ratio"] = r["crun_min_ms"] / base["crun_min_ms"], r["ort_min_ms"] / base["ort_min_ms"]
    ppl = f'{r["perplexity"]:.4f}' if r["perplexity"] else "n/a (random weights)"
    print(f'| {r["model"]} | {r["variant"]} | {r["params"]:,} | {r["onnx_bytes"] / 1e6:.2f} | {ppl} | [{r["shape"].replace("x", ",")}] '
          f'| {r["crun_ms"]:.3f} / {r["crun_min_ms"]:.3f} | {r["ort_ms"]:.3f} / {r["ort_min_ms"]:.3f} | {r["crun_ratio"]:.2f} | {r["ort_ratio"]:.2f} |')
json.dump({"threads": threads, "rows": rows}, open("bench/structured.json", "w"), indent=1)
PY
