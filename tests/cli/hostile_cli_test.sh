#!/usr/bin/env bash
# The CLIs against careless and hostile use (docs/security.md): outputs that must not be replaced, NaN outputs,
# lying .npy files, mismatched tokenizers, user folders as --output, stale staging folders, repeated YAML keys,
# corrupt TorchScript, devices as inputs. Each check asserts the exit code and the message; none may exit 70.
# Usage: hostile_cli_test.sh SOURCE_DIR WORK_DIR FIXTURES_DIR   (COMPRESS, CRUN = binaries)
set -u
src=$1 work=$2 fx=$3
source "$src/tests/cli/common.sh"
py=/usr/bin/python3

# --- crun: outputs
"$COMPRESS" export "$fx/nan_lm.pt" -o "$work/nan.onnx" --no-validate > /dev/null
$py -c "import numpy as np; np.save('$work/t.npy', np.array([[1, 2, 3]], dtype=np.int64))"
mkfifo "$work/fifo"
"$CRUN" run "$work/nan.onnx" --input tokens="$work/t.npy" --output "$work/fifo" --allow-nonfinite 2> "$work/e.txt"; rc=$?
check "--output onto a FIFO exits 6 and the FIFO stays a FIFO" "[ $rc -eq 6 ] && [ -p $work/fifo ] && grep -q 'refusing to replace' $work/e.txt"
echo keep > "$work/target.txt"; ln -s "$work/target.txt" "$work/link.npy"
"$CRUN" run "$work/nan.onnx" --input tokens="$work/t.npy" --output "$work/link.npy" --allow-nonfinite 2> "$work/e.txt"; rc=$?
check "--output onto a symlink exits 6 and leaves link and target" "[ $rc -eq 6 ] && [ -L $work/link.npy ] && grep -q keep $work/target.txt"
mkdir -p "$work/odir/logits.npy"
"$CRUN" run "$work/nan.onnx" --input tokens="$work/t.npy" --output-dir "$work/odir" --allow-nonfinite 2> "$work/e.txt"; rc=$?
check "--output-dir where an output name is a folder exits 6" "[ $rc -eq 6 ] && [ -d $work/odir/logits.npy ]"

# an output named "../lgs" (the bytes of "logits" patched in place) must not write outside --output-dir
$py -c "b=open('$work/nan.onnx','rb').read(); open('$work/evil.onnx','wb').write(b.replace(b'logits', b'../lgs'))"
mkdir -p "$work/evil/inner"
"$CRUN" run "$work/evil.onnx" --input tokens="$work/t.npy" --output-dir "$work/evil/inner" --allow-nonfinite 2> "$work/e.txt"; rc=$?
check "an output name with a path in it is refused by --output-dir (exit 3), nothing written outside" \
  "[ $rc -eq 3 ] && grep -q 'cannot be a file name' $work/e.txt && [ ! -e $work/evil/lgs.npy ]"

# --- crun: NaN outputs
"$CRUN" run "$work/nan.onnx" --input tokens="$work/t.npy" --output "$work/o.npy" 2> "$work/e.txt"; rc=$?
check "NaN outputs exit 5 (numeric) and write nothing" "[ $rc -eq 5 ] && grep -q 'NaN or Inf' $work/e.txt && [ ! -e $work/o.npy ]"
"$CRUN" run "$work/nan.onnx" --input tokens="$work/t.npy" --output "$work/o.npy" --allow-nonfinite 2> /dev/null; rc=$?
check "--allow-nonfinite writes them" "[ $rc -eq 0 ] && [ -s $work/o.npy ]"
"$CRUN" --help > "$work/help.txt"
check "crun --help documents exit code 5 and the limits" "grep -q '5 numeric error' $work/help.txt && grep -q -- '--max-memory-mib' $work/help.txt"
check "crun --help documents --max-run-ms and exit code 9" "grep -q -- '--max-run-ms N' $work/help.txt && grep -q '9 stopped' $work/help.txt"
"$CRUN" run "$work/nan.onnx" --input tokens="$work/t.npy" --output "$work/o.npy" --max-run-ms -3 2> "$work/e.txt"; rc=$?
check "--max-run-ms below 0 is a usage error (exit 2)" "[ $rc -eq 2 ] && grep -q 'max-run-ms takes a number of milliseconds' $work/e.txt"

# --- crun: lying .npy files
$py - "$work" <<'PY'
import numpy as np, sys
w = sys.argv[1]
a = np.array([[1, 2, 3]], dtype=np.int64)
hdr = np.lib.format.header_data_from_array_1_0(a)
def raw(path, header_dict, data):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header_dict)
        f.write(data)
raw(f"{w}/trailing.npy", dict(hdr, descr="<i4"), a.tobytes())            # an <i4 header on <i8 data
raw(f"{w}/negative.npy", dict(hdr, shape=(1, -3)), a.tobytes())
raw(f"{w}/odd.npy", dict(hdr, descr="<c8"), a.tobytes())
with open(f"{w}/huge.npy", "wb") as f:
    h = "{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999999999999,), }"
    h += " " * ((64 - (10 + len(h) + 1) % 64) % 64) + "\n"
    f.write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode())
PY
for c in "trailing:does not match" "negative:negative dim" "odd:unsupported dtype" "huge:15 digits"; do
  name=${c%%:*} msg=${c#*:}
  "$CRUN" run "$work/nan.onnx" --input tokens="$work/$name.npy" --allow-nonfinite 2> "$work/e.txt"; rc=$?
  check ".npy with $name header exits 4: $msg" "[ $rc -eq 4 ] && grep -q '$msg' $work/e.txt"
done

# --- crun: models that are not files, tokenizers that do not fit
"$CRUN" info /dev/zero 2> "$work/e.txt"; rc=$?
check "a device as the model exits 6 'not a regular file'" "[ $rc -eq 6 ] && grep -q 'not a regular file' $work/e.txt"
"$CRUN" info "$work" 2> "$work/e.txt"; rc=$?
check "a folder as the model exits 6 'is a folder'" "[ $rc -eq 6 ] && grep -q 'is a folder' $work/e.txt"
"$COMPRESS" export "$shared/models/stories260K/stories260K.pt" -o "$work/m.onnx" --no-validate > /dev/null
$py - "$shared/models/stories260K/tok512.bin" "$work/tok300.bin" <<'PY'
import struct, sys
src, dst = sys.argv[1:]
b = open(src, "rb").read()
off, out = 4, bytearray(b[:4])
for _ in range(300):
    n = struct.unpack_from("<i", b, off + 4)[0]
    out += b[off:off + 8 + n]
    off += 8 + n
open(dst, "wb").write(out)
PY
"$CRUN" generate "$work/m.onnx" --tokenizer "$work/tok300.bin" -n 5 > /dev/null 2> "$work/e.txt"; rc=$?
check "a tokenizer smaller than the vocabulary exits 4" "[ $rc -eq 4 ] && grep -q 'tokenizer only 300' $work/e.txt"

# --- compress: output folders
recipe() {  # a fast recipe (evaluate 1,024 tokens, no passes) writing to $1
  printf 'model: %s\ndata:\n  eval: {tokens: %s, max_tokens: 1024, seq_len: 256}\nlatency_runs: 0\noutput: %s\n' \
    "$shared/models/stories260K/stories260K.pt" "$shared/data/tinystories/val.tok512.npy" "$1" > "$work/r.yaml"
}
mkdir -p "$work/mine" && echo "years of work" > "$work/mine/thesis.tex"
recipe "$work/mine"
"$COMPRESS" --config "$work/r.yaml" --quiet > "$work/o.txt" 2> "$work/e.txt"; rc=$?
check "--output on a folder of user files exits 6, files kept, before any work" \
  "[ $rc -eq 6 ] && grep -q 'did not write' $work/e.txt && grep -q 'years of work' $work/mine/thesis.tex && ! grep -q 'imported' $work/o.txt"
"$COMPRESS" --config "$work/r.yaml" --quiet --overwrite > /dev/null 2>&1; rc=$?
check "--overwrite replaces it" "[ $rc -eq 0 ] && [ -f $work/mine/report.json ] && [ ! -e $work/mine/thesis.tex ]"
"$COMPRESS" --config "$work/r.yaml" --quiet > /dev/null 2>&1; rc=$?
check "a second run replaces its own earlier output" "[ $rc -eq 0 ] && [ -f $work/mine/.compress-output ]"
echo "not a folder" > "$work/plainfile"
recipe "$work/plainfile"
"$COMPRESS" --config "$work/r.yaml" --quiet > /dev/null 2> "$work/e.txt"; rc=$?
check "--output naming a regular file exits 6 and keeps it" "[ $rc -eq 6 ] && grep -q 'not a folder' $work/plainfile"
recipe "$work/plainfile/sub"
"$COMPRESS" --config "$work/r.yaml" --quiet > "$work/o.txt" 2> "$work/e.txt"; rc=$?
check "an unwritable output location fails before the import" "[ $rc -eq 6 ] && ! grep -q 'imported' $work/o.txt"
mkdir -p "$work/run.tmp-99999998" && echo half > "$work/run.tmp-99999998/model.cir"
recipe "$work/run"
"$COMPRESS" --config "$work/r.yaml" --quiet > /dev/null 2>&1; rc=$?
check "a killed run's staging folder is removed by the next run" "[ $rc -eq 0 ] && [ ! -e $work/run.tmp-99999998 ] && [ -f $work/run/report.json ]"

# --- compress: inputs
printf 'model: %s\ntask: causal-lm\ntask: classifier\noutput: %s\n' "$shared/models/stories260K/stories260K.pt" "$work/x" > "$work/dup.yaml"
"$COMPRESS" --config "$work/dup.yaml" 2> "$work/e.txt" > /dev/null; rc=$?
check "a repeated YAML key exits 2 at its line" "[ $rc -eq 2 ] && grep -q 'dup.yaml:3' $work/e.txt && grep -q 'repeated key' $work/e.txt"
"$COMPRESS" inspect "$fx/truncated_record.pt" 2> "$work/e.txt" > /dev/null; rc=$?
check "a TorchScript archive with a truncated tensor record exits 3" "[ $rc -eq 3 ] && grep -q 'corrupt' $work/e.txt"
"$COMPRESS" eval --model /dev/zero --tokens "$shared/data/tinystories/val.tok512.npy" 2> "$work/e.txt" > /dev/null; rc=$?
check "compress eval on a device exits 6 'not a regular file'" "[ $rc -eq 6 ] && grep -q 'not a regular file' $work/e.txt"
"$COMPRESS" export "$fx/nan_lm.pt" -o "$work/nan2.onnx" > /dev/null 2> "$work/e.txt"; rc=$?
check "export validation of a NaN model exits 5 and removes the file" "[ $rc -eq 5 ] && grep -q 'NaN/Inf' $work/e.txt && [ ! -e $work/nan2.onnx ]"

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all hostile CLI checks passed"
