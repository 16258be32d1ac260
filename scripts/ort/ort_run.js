#!/usr/bin/env node
// ort_run.js — ONNX Runtime (onnxruntime-node) as the independent checker for compress exports.
//   node ort_run.js run MODEL --in NAME=FILE.npy [...] --out-dir DIR [--opt disabled|basic|extended|all] [--threads N]
//       runs the model once; writes every output as DIR/<output name>.npy; prints a JSON summary.
//   node ort_run.js ppl MODEL --tokens FILE.npy [--seq-len 512] [--max-tokens 32768] [--opt ...] [--threads N]
//       perplexity exactly as compress computes it (non-overlapping windows, next-token NLL in float64).
//   node ort_run.js bench MODEL --in NAME=FILE.npy [...] [--runs 20] [--opt ...] [--threads N]
//       median latency of session.run in ms.
//   node ort_run.js load MODEL [--opt ...] [--threads N]
//       the time InferenceSession.create takes (the file read, graph optimizations, weights prepacked), in ms.
//   node ort_run.js generate MODEL [--prefill 16] [--gen 32] [--runs 3] [--opt ...] [--threads N]
//       a cached export (past.N / present.N): prefill of `prefill` random ids, then `gen` greedy one-token
//       steps feeding each present back as the next past; prints prefill ms and ms per step (median of runs).
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
    else if (k === '--prefill') a.prefill = Number(v());
    else if (k === '--gen') a.gen = Number(v());
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

// A cached export's past inputs (past.N.key/value), empty: [1, kv_heads, 0, head_dim], the sizes read off the
// model's declared input dims (or KV_HEADS / HEAD_DIM). {} for an uncached export.
function emptyPasts(s) {
  const pasts = s.inputNames.filter((n) => n.startsWith('past'));
  if (pasts.length === 0) return {};
  const dims = (s.inputMetadata || []).find?.((m) => m.name === pasts[0]);
  const kvHeads = dims && dims.shape ? Number(dims.shape[1]) : Number(process.env.KV_HEADS || 0);
  const headDim = dims && dims.shape ? Number(dims.shape[3]) : Number(process.env.HEAD_DIM || 0);
  if (!(kvHeads > 0 && headDim > 0)) throw new Error('cannot read the past inputs\' kv heads / head size (set KV_HEADS and HEAD_DIM)');
  const f = {};
  for (const n of pasts) f[n] = new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
  return f;
}

async function main() {
  const [cmd, ...rest] = process.argv.slice(2);
  const a = parseArgs(rest);
  const t0 = process.hrtime.bigint();
  const s = await session(a);
  if (cmd === 'load') {
    console.log(JSON.stringify({load_ms: Number(process.hrtime.bigint() - t0) / 1e6, threads: a.threads, opt: a.opt}));
    return;
  }
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
    const pasts = emptyPasts(s);  // a cached export scores each window from an empty cache
    for (let w = 0; w < windows; ++w) {
      const ids = new BigInt64Array(T);
      for (let i = 0; i < T; ++i) ids[i] = BigInt(tok.data[w * T + i]);
      const out = await s.run({...pasts, [s.inputNames[0]]: new ort.Tensor('int64', ids, [1, T])});
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
    const f = {...emptyPasts(s), ...feeds(a)};  // a cached export without --in pasts: prefill from an empty cache
    await s.run(f);
    const ms = [];
    for (let i = 0; i < a.runs; ++i) {
      const t0 = process.hrtime.bigint();
      await s.run(f);
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    ms.sort((x, y) => x - y);
    console.log(JSON.stringify({median_ms: ms[Math.floor(ms.length / 2)], min_ms: ms[0], runs: a.runs, threads: a.threads, opt: a.opt}));
  } else if (cmd === 'generate') {
    const P = a.prefill || 16, G = a.gen || 32, tokIn = s.inputNames[0];
    const empty = emptyPasts(s), pasts = Object.keys(empty);
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) % 497 + 3;
    const once = async () => {
      const ids = BigInt64Array.from({length: P}, () => BigInt(rnd()));
      const f = {...empty, [tokIn]: new ort.Tensor('int64', ids, [1, P])};
      let t0 = process.hrtime.bigint();
      let out = await s.run(f);
      const prefill = Number(process.hrtime.bigint() - t0) / 1e6;
      const V = out[s.outputNames[0]].dims[2];
      let last = out[s.outputNames[0]].data.subarray((P - 1) * V, P * V);
      t0 = process.hrtime.bigint();
      for (let i = 0; i < G; ++i) {
        let best = 0;
        for (let v = 1; v < V; ++v) if (last[v] > last[best]) best = v;
        const g = {[tokIn]: new ort.Tensor('int64', BigInt64Array.from([BigInt(best)]), [1, 1])};
        for (const n of pasts) g[n] = out[n.replace(/^past/, 'present')];
        out = await s.run(g);
        last = out[s.outputNames[0]].data;
      }
      return {prefill, step: Number(process.hrtime.bigint() - t0) / 1e6 / G};
    };
    await once();
    const pre = [], step = [];
    for (let r = 0; r < a.runs; ++r) { const x = await once(); pre.push(x.prefill); step.push(x.step); }
    const med = (v) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)];
    console.log(JSON.stringify({prefill_ms: med(pre), ms_per_token: med(step), tokens_per_s: 1e3 / med(step), prefill: P, gen: G,
                                threads: a.threads, opt: a.opt}));
  } else {
    throw new Error(`unknown command ${cmd} (run, ppl, bench, generate)`);
  }
}

main().catch((e) => { console.error(`ort_run: ${e.message}`); process.exit(1); });
