#!/usr/bin/env node
// ort_run.js — ONNX Runtime (onnxruntime-node) as the independent checker for compress exports.
//   node ort_run.js run MODEL --in NAME=FILE.npy [...] --out-dir DIR [--opt disabled|basic|extended|all] [--threads N]
//       runs the model once; writes every output as DIR/<output name>.npy; prints a JSON summary.
//   node ort_run.js ppl MODEL --tokens FILE.npy [--seq-len 512] [--max-tokens 32768] [--opt ...] [--threads N]
//       perplexity exactly as compress computes it (non-overlapping windows, next-token NLL in float64).
//   node ort_run.js bench MODEL --in NAME=FILE.npy [...] [--runs 20] [--opt ...] [--threads N]
//       median latency of session.run in ms.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const off = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', off, off + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)[1].match(/\d+/g) || []).map(Number);
  const data = buf.subarray(off + hlen);
  const n = shape.reduce((a, b) => a * b, 1);
  const copy = (Ctor, size) => new Ctor(data.buffer.slice(data.byteOffset, data.byteOffset + n * size));
  const types = {'<f4': ['float32', Float32Array, 4], '<i8': ['int64', BigInt64Array, 8], '<i4': ['int32', Int32Array, 4],
                 '<f2': ['float16', Uint16Array, 2], '<f8': ['float64', Float64Array, 8], '|u1': ['uint8', Uint8Array, 1]};
  if (!types[descr]) throw new Error(`${file}: unsupported dtype ${descr}`);
  const [type, Ctor, size] = types[descr];
  if (data.length < n * size) throw new Error(`${file}: truncated`);
  return {type, data: copy(Ctor, size), shape};
}

function writeNpy(file, tensor) {
  const descr = {float32: '<f4', int64: '<i8', int32: '<i4', float16: '<f2', float64: '<f8', uint8: '|u1', bool: '|b1'}[tensor.type];
  if (!descr) throw new Error(`cannot write ${tensor.type} outputs`);
  const dims = tensor.dims.length === 1 ? `${tensor.dims[0]},` : tensor.dims.join(', ');
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1; pre[7] = 0; pre.writeUInt16LE(header.length, 8);
  const d = tensor.data;
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), Buffer.from(d.buffer, d.byteOffset, d.byteLength)]));
}

function parseArgs(argv) {
  const a = {in: [], opt: 'disabled', threads: 2, seqLen: 512, maxTokens: 0, runs: 20};
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i], v = () => argv[++i];
    if (k === '--in') a.in.push(v());
    else if (k === '--out-dir') a.outDir = v();
    else if (k === '--opt') a.opt = v();
    else if (k === '--threads') a.threads = Number(v());
    else if (k === '--tokens') a.tokens = v();
    else if (k === '--seq-len') a.seqLen = Number(v());
    else if (k === '--max-tokens') a.maxTokens = Number(v());
    else if (k === '--runs') a.runs = Number(v());
    else if (!a.model) a.model = k;
    else throw new Error(`unexpected argument ${k}`);
  }
  if (!a.model) throw new Error('no model given');
  return a;
}

async function session(a) {
  return ort.InferenceSession.create(a.model, {
    graphOptimizationLevel: a.opt, intraOpNumThreads: a.threads, interOpNumThreads: 1, executionProviders: ['cpu']});
}

function feeds(a) {
  const f = {};
  for (const spec of a.in) {
    const eq = spec.indexOf('=');
    const t = readNpy(spec.slice(eq + 1));
    f[spec.slice(0, eq)] = new ort.Tensor(t.type, t.data, t.shape);
  }
  return f;
}

async function main() {
  const [cmd, ...rest] = process.argv.slice(2);
  const a = parseArgs(rest);
  const s = await session(a);
  if (cmd === 'run') {
    const out = await s.run(feeds(a));
    const summary = {};
    for (const [name, t] of Object.entries(out)) {
      if (a.outDir) writeNpy(path.join(a.outDir, `${name}.npy`), t);
      summary[name] = {type: t.type, dims: t.dims};
    }
    console.log(JSON.stringify({outputs: summary}));
  } else if (cmd === 'ppl') {
    const tok = readNpy(a.tokens);
    const T = a.seqLen;
    const windows = a.maxTokens > 0 ? Math.floor(a.maxTokens / T) : Math.floor((tok.data.length - 1) / T);
    if (windows * T + 1 > tok.data.length) throw new Error('token stream too short');
    let nll = 0;
    for (let w = 0; w < windows; ++w) {
      const ids = new BigInt64Array(T);
      for (let i = 0; i < T; ++i) ids[i] = BigInt(tok.data[w * T + i]);
      const out = await s.run({[s.inputNames[0]]: new ort.Tensor('int64', ids, [1, T])});
      const logits = out[s.outputNames[0]].data;
      const V = logits.length / T;
      for (let i = 0; i < T; ++i) {
        let m = -Infinity;
        for (let v = 0; v < V; ++v) m = Math.max(m, logits[i * V + v]);
        let z = 0;
        for (let v = 0; v < V; ++v) z += Math.exp(logits[i * V + v] - m);
        const target = Number(tok.data[w * T + i + 1]);
        nll -= logits[i * V + target] - m - Math.log(z);
      }
    }
    const count = windows * T;
    console.log(JSON.stringify({perplexity: Math.exp(nll / count), mean_nll: nll / count, count}));
  } else if (cmd === 'bench') {
    const f = feeds(a);
    await s.run(f);
    const ms = [];
    for (let i = 0; i < a.runs; ++i) {
      const t0 = process.hrtime.bigint();
      await s.run(f);
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    ms.sort((x, y) => x - y);
    console.log(JSON.stringify({median_ms: ms[Math.floor(ms.length / 2)], min_ms: ms[0], runs: a.runs, threads: a.threads, opt: a.opt}));
  } else {
    throw new Error(`unknown command ${cmd} (run, ppl, bench)`);
  }
}

main().catch((e) => { console.error(`ort_run: ${e.message}`); process.exit(1); });
