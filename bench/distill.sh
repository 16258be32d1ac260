#!/usr/bin/env bash
# The distillation recipes end to end on stories260K: perplexity before distillation (the same recipe without
# its distill pass), after, the int8 step's cost, training steps, time and tokens/s, and each recipe's wall
# time. Writes bench/distill.json. Usage: bash bench/distill.sh [build/compress] [recipes...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/compress}")
shift || true
recipes=${*:-prune50_distill sparsegpt50_distill sparsegpt_2of4_distill sparsegpt_2of4_int8 sparsegpt_2of4_int4_g32 structured_ffn25_distill prune50_int8_distill}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $recipes; do
  # Before: the same recipe without its distill pass (gate off, no export).
  grep -v -- "- distill:" "configs/$r.yaml" | sed -e 's/^accuracy:.*/accuracy: {metric: perplexity}/' -e '/^export:/d' > "configs/_before_$r.yaml"
  "$bin" --config "configs/_before_$r.yaml" --output "$tmp/before_$r" --quiet > /dev/null || true
  rm -f "configs/_before_$r.yaml"
  /usr/bin/time -f "%e %M" -o "$tmp/time_$r" "$bin" --config "configs/$r.yaml" --output "$tmp/after_$r" > "$tmp/log_$r" 2>&1 || true
done
/usr/bin/python3 - "$tmp" $recipes <<'PY'
import json, os, sys
tmp, recipes = sys.argv[1], sys.argv[2:]
out = {}
print("| recipe | ppl before distill | ppl after | steps | training s | tokens/s | stopped | recipe wall s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for r in recipes:
    before = json.load(open(f"{tmp}/before_{r}/report.json"))["accuracy"]["final"]
    rep = json.load(open(f"{tmp}/after_{r}/report.json"))
    d = next(p for p in rep["passes"] if p["name"] == "distill")["stats"]
    wall, rss = open(f"{tmp}/time_{r}").read().split()
    stop = "early" if d["stopped_early"] else "max_minutes" if d["stopped_by_time"] else "all steps"
    out[r] = {"before": before, "after": rep["accuracy"]["final"], "steps": d["steps"], "train_seconds": d["train_seconds"],
              "tokens_per_second": d["tokens_per_second"], "stopped": stop, "wall_seconds": float(wall),
              "peak_rss_mib": int(rss) / 1024, "teacher_seconds": d["teacher_seconds"], "forward_seconds": d["forward_seconds"],
              "backward_seconds": d["backward_seconds"], "best_step": d["best_step"]}
    o = out[r]
    print(f'| {r} | {before:.4f} | {o["after"]:.4f} | {o["steps"]} (best {o["best_step"]}) | {o["train_seconds"]:.0f} | '
          f'{o["tokens_per_second"]:.0f} | {stop} | {o["wall_seconds"]:.0f} | {o["peak_rss_mib"]:.0f} |')
if "prune50_distill" in out and "prune50_int8_distill" in out:
    a, b = out["prune50_distill"]["after"], out["prune50_int8_distill"]["after"]
    print(f"\nint8 after distillation: {a:.4f} -> {b:.4f} ({100 * (b / a - 1):+.2f}%)")
json.dump(out, open("bench/distill.json", "w"), indent=1)
PY
