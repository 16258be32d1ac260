#!/usr/bin/env bash
# Perplexity of RTN, GPTQ, GPTQ act-order and AWQ at the issue's reference settings on stories260K
# (calibration: 64 x 256 tokens in order from train_head; eval: 32,768 tokens of val), with each pass's
# wall time. Writes bench/quant_table.json. Usage: bash bench/quant_table.sh [build/compress]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/compress}")
shared=$(realpath ../shared)
tmp=$(mktemp -d)
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
declare -A fmt=([int8_pc_sym]="bits: 8, group_size: -1, symmetric: true" [int4_pc_asym]="bits: 4, group_size: -1, symmetric: false"
                [int4_g32_asym]="bits: 4, group_size: 32, symmetric: false" [int4_g16_asym]="bits: 4, group_size: 16, symmetric: false"
                [int3_g32_asym]="bits: 3, group_size: 32, symmetric: false")
order="int8_pc_sym int4_pc_asym int4_g32_asym int4_g16_asym int3_g32_asym"
for s in $order; do
  f=${fmt[$s]}
  run "${s}_rtn" "rtn: {$f, ignore: [output]}"
  run "${s}_gptq" "gptq: {$f, ignore: [output]}"
  case $s in int4_g32_asym|int3_g32_asym)
    run "${s}_gptq_ao" "gptq: {$f, act_order: true, ignore: [output]}"
    run "${s}_awq" "awq: {$f, ignore: [output]}";;
  esac
done
/usr/bin/python3 - "$tmp" $order <<'PY'
import json, os, sys
tmp, order = sys.argv[1], sys.argv[2:]
ref = {"int8_pc_sym": [4.0856, 4.0776, None, None], "int4_pc_asym": [4.4758, 4.3973, None, None],
       "int4_g32_asym": [4.3561, 4.3075, 4.3032, 4.4029], "int4_g16_asym": [4.3401, 4.2194, None, None],
       "int3_g32_asym": [7.2986, 5.8925, 5.6369, 6.0472]}
out = {}
print("| setting | RTN ours (ref) | GPTQ ours (ref) | GPTQ act-order ours (ref) | AWQ ours (ref) | GPTQ s | AWQ s |")
print("|---|---|---|---|---|---|---|")
for s in order:
    cells, times = [], {}
    for k, m in enumerate(["rtn", "gptq", "gptq_ao", "awq"]):
        p = os.path.join(tmp, f"{s}_{m}", "report.json")
        if not os.path.exists(p):
            cells.append(""); continue
        r = json.load(open(p))
        ppl = r["accuracy"]["final"]; times[m] = r["passes"][0]["seconds"]
        out[f"{s}_{m}"] = {"perplexity": ppl, "seconds": times[m], "reference": ref[s][k]}
        cells.append(f"{ppl:.4f} ({ref[s][k]:.4f})" if ref[s][k] else f"{ppl:.4f}")
    print(f"| {s} | " + " | ".join(cells) + f" | {times.get('gptq', 0):.2f} | {times.get('awq', 0):.2f} |")
json.dump(out, open("bench/quant_table.json", "w"), indent=1)
PY
rm -rf "$tmp"
