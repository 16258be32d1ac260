#!/usr/bin/env bash
# Perplexity of magnitude (per row, per matrix), Wanda and SparseGPT at 50% unstructured, 2:4 and 50% +
# joint int4 g32 on stories260K against the issue's reference numbers (calibration: 64 x 256 tokens in
# order from train_head; eval: 32,768 tokens of val), with each pass's wall time.
# Writes bench/prune_table.json. Usage: bash bench/prune_table.sh [build/compress]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/compress}")
shared=$(realpath ../shared)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {  # name, pass line
  cat > "$tmp/$1.yaml" <<YAML
model: $shared/models/stories260K/stories260K.pt
data:
  calibration: {tokens: $shared/data/tinystories/train_head.tok512.npy, samples: 64, seq_len: 256}
  eval: {tokens: $shared/data/tinystories/val.tok512.npy, max_tokens: 32768, seq_len: 512}
passes:
  - $2
latency_runs: 0
output: $tmp/$1
YAML
  "$bin" --config "$tmp/$1.yaml" --quiet > /dev/null
}
run u50_mag_row "magnitude-prune: {sparsity: 0.5, scope: row, ignore: [output]}"
run u50_mag_matrix "magnitude-prune: {sparsity: 0.5, scope: matrix, ignore: [output]}"
run u50_wanda "wanda: {sparsity: 0.5, ignore: [output]}"
run u50_sparsegpt "sparsegpt: {sparsity: 0.5, ignore: [output]}"
run nm24_mag_matrix "magnitude-prune: {pattern: '2:4', ignore: [output]}"
run nm24_wanda "wanda: {pattern: '2:4', ignore: [output]}"
run nm24_sparsegpt "sparsegpt: {pattern: '2:4', ignore: [output]}"
run nm48_mag_matrix "magnitude-prune: {pattern: '4:8', ignore: [output]}"
run nm48_wanda "wanda: {pattern: '4:8', ignore: [output]}"
run nm48_sparsegpt "sparsegpt: {pattern: '4:8', ignore: [output]}"
run u50int4_sparsegpt "sparsegpt: {sparsity: 0.5, bits: 4, group_size: 32, symmetric: false, ignore: [output]}"
/usr/bin/python3 - "$tmp" <<'PY'
import json, os, sys
tmp = sys.argv[1]
ref = {"u50_mag_row": 33.35, "u50_mag_matrix": 39.27, "u50_wanda": 20.75, "u50_sparsegpt": 19.74,
       "nm24_mag_matrix": 116.1, "nm24_wanda": 68.01, "nm24_sparsegpt": 32.97, "u50int4_sparsegpt": 20.83}
rows = [("50% unstructured", "u50"), ("2:4", "nm24"), ("4:8", "nm48"), ("50% + int4 g32 (joint)", "u50int4")]
cols = [("magnitude (per row)", "mag_row"), ("magnitude (per matrix)", "mag_matrix"), ("Wanda", "wanda"), ("SparseGPT", "sparsegpt")]
out = {}
print("| setting | " + " | ".join(c for c, _ in cols) + " | Wanda s | SparseGPT s |")
print("|---" * (len(cols) + 3) + "|")
for label, r in rows:
    cells, secs = [], {}
    for _, c in cols:
        k = f"{r}_{c}"; p = os.path.join(tmp, k, "report.json")
        if not os.path.exists(p): cells.append(""); continue
        rep = json.load(open(p)); ppl = rep["accuracy"]["final"]; secs[c] = rep["passes"][0]["seconds"]
        out[k] = {"perplexity": ppl, "seconds": secs[c], "reference": ref.get(k),
                  "sparsity": rep["sparsity"]["pruned_layers_sparsity"]}
        cells.append(f"{ppl:.2f}" + (f" ({ref[k]:.2f}, {100 * (ppl / ref[k] - 1):+.1f}%)" if k in ref else ""))
    print(f"| {label} | " + " | ".join(cells) + f" | {secs.get('wanda', 0):.2f} | {secs.get('sparsegpt', 0):.2f} |")
json.dump(out, open("bench/prune_table.json", "w"), indent=1)
PY
