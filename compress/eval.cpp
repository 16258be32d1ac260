// eval.cpp — metrics. Perplexity follows ../shared/README.md exactly: non-overlapping windows of
// seq_len tokens, every position scored on the next token, NLL summed in float64.
#include "compress/eval.h"

#include <chrono>
#include <cmath>
#include <random>

#include "compress/error.h"
#include "compress/progress.h"

namespace compress {

LmWindows makeWindows(const std::vector<int64_t>& stream, int64_t seq_len, int64_t max_tokens) {
  int64_t n = static_cast<int64_t>(stream.size());
  int64_t windows = max_tokens > 0 ? max_tokens / seq_len : (n - 1) / seq_len;
  if (max_tokens > 0 && max_tokens % seq_len != 0)
    fail(ErrorCategory::Config, "max_tokens (" + std::to_string(max_tokens) + ") must be a multiple of seq_len (" +
                                    std::to_string(seq_len) + ")");
  if (windows <= 0 || windows * seq_len + 1 > n)
    fail(ErrorCategory::Data, "the evaluation stream has " + std::to_string(n) + " tokens; scoring " +
                                  std::to_string(std::max<int64_t>(windows, 1) * seq_len) + " tokens in windows of " +
                                  std::to_string(seq_len) + " needs " +
                                  std::to_string(std::max<int64_t>(windows, 1) * seq_len + 1) +
                                  ". Lower data.eval.max_tokens or seq_len.");
  at::Tensor all = at::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + windows * seq_len + 1), at::kLong);
  LmWindows w;
  w.inputs = all.narrow(0, 0, windows * seq_len).reshape({windows, seq_len}).clone();
  w.targets = all.narrow(0, 1, windows * seq_len).reshape({windows, seq_len}).clone();
  return w;
}

at::Tensor sampleSequences(const std::vector<int64_t>& stream, int64_t samples, int64_t seq_len, int64_t seed) {
  int64_t n = static_cast<int64_t>(stream.size());
  if (n < seq_len)
    fail(ErrorCategory::Data, "the calibration stream has " + std::to_string(n) + " tokens, fewer than seq_len " +
                                  std::to_string(seq_len));
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::uniform_int_distribution<int64_t> pick(0, n - seq_len);
  at::Tensor out = at::empty({samples, seq_len}, at::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t s = 0; s < samples; ++s) {
    int64_t off = pick(rng);
    std::copy(stream.begin() + off, stream.begin() + off + seq_len, p + s * seq_len);
  }
  return out;
}

at::Tensor consecutiveSequences(const std::vector<int64_t>& stream, int64_t samples, int64_t seq_len) {
  int64_t need = samples * seq_len;
  if (static_cast<int64_t>(stream.size()) < need)
    fail(ErrorCategory::Data, "the calibration stream has " + std::to_string(stream.size()) + " tokens; " +
                                  std::to_string(samples) + " sequences of " + std::to_string(seq_len) + " need " +
                                  std::to_string(need) + ". Lower samples or seq_len.");
  return at::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + need), at::kLong).reshape({samples, seq_len});
}

static double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

static void checkFinite(const at::Tensor& t, const std::string& what) {
  if (!at::isfinite(t).all().item<bool>())
    fail(ErrorCategory::Numeric, what + " contain NaN or Inf values: the model (or a pass) produced non-finite "
                                        "numbers. Check the input data and the last pass's settings.");
}

/// Token ids outside the model's vocabulary (its logits' last dim, where the graph fixes it) are a data error before
/// any forward pass: the embedding's Gather would fail with a node's name, or a target would index past the logits.
static void checkVocabulary(const Executor& ex, const LmWindows& w) {
  const Graph& g = ex.graph();
  if (g.outputs.empty() || !g.values.count(g.outputs[0]) || !g.values.at(g.outputs[0]).shape) return;
  const Shape& s = *g.values.at(g.outputs[0]).shape;
  if (s.size() != 3 || !s.back().isFixed() || w.inputs.numel() == 0) return;
  const int64_t vocab = s.back().value;
  const int64_t lo = std::min(w.inputs.min().item<int64_t>(), w.targets.min().item<int64_t>());
  const int64_t hi = std::max(w.inputs.max().item<int64_t>(), w.targets.max().item<int64_t>());
  if (lo < 0 || hi >= vocab)
    fail(ErrorCategory::Data, "the evaluation tokens hold id " + std::to_string(lo < 0 ? lo : hi) + ", but the model's vocabulary has " +
                                  std::to_string(vocab) + " tokens (its logits' last dim): evaluate on a token stream of the model's own tokenizer");
}

MetricResult perplexity(Executor& ex, const LmWindows& w, int64_t batch, bool show) {
  auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  checkVocabulary(ex, w);
  int64_t n = w.inputs.size(0);
  Progress prog("perplexity", n, "windows", show);
  double nll = 0;
  for (int64_t b = 0; b < n; b += batch) {
    int64_t m = std::min(batch, n - b);
    at::Tensor logits = ex.run1(w.inputs.narrow(0, b, m));
    if (logits.dim() != 3 || logits.size(0) != m || logits.size(1) != w.inputs.size(1))
      fail(ErrorCategory::Model, "perplexity needs logits shaped [batch, seq, vocab]; the model returned " +
                                     c10::str(logits.sizes()));
    checkFinite(logits, "logits");
    at::Tensor lp = at::log_softmax(logits.to(at::kDouble), -1);
    at::Tensor tgt = w.targets.narrow(0, b, m).to(lp.device());
    if (tgt.max().item<int64_t>() >= logits.size(2))
      fail(ErrorCategory::Data, "a target token id is >= the model's vocabulary size " + std::to_string(logits.size(2)));
    nll -= lp.gather(-1, tgt.unsqueeze(-1)).sum().item<double>();
    prog.advance(m);
  }
  prog.finish();
  MetricResult r;
  r.metric = "perplexity";
  r.count = w.targets.numel();
  r.mean_nll = nll / static_cast<double>(r.count);
  r.value = std::exp(r.mean_nll);
  r.seconds = since(t0);
  return r;
}

MetricResult top1(Executor& ex, const at::Tensor& inputs, const at::Tensor& labels, int64_t batch, bool show) {
  auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  int64_t n = inputs.size(0);
  if (labels.size(0) != n)
    fail(ErrorCategory::Data, "inputs have " + std::to_string(n) + " examples but labels have " + std::to_string(labels.size(0)));
  int64_t correct = 0;
  for (int64_t b = 0; b < n; b += batch) {
    int64_t m = std::min(batch, n - b);
    at::Tensor out = ex.run1(inputs.narrow(0, b, m));
    checkFinite(out, "model outputs");
    correct += (out.reshape({m, -1}).argmax(-1).cpu() == labels.narrow(0, b, m).to(at::kLong)).sum().item<int64_t>();
  }
  (void)show;
  MetricResult r;
  r.metric = "top1";
  r.count = n;
  r.value = static_cast<double>(correct) / static_cast<double>(n);
  r.seconds = since(t0);
  return r;
}

MetricResult agreement(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool show) {
  auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  const int64_t n = inputs.size(0);
  int64_t same = 0;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    at::Tensor x = inputs.narrow(0, b, m);
    at::Tensor out = ex.run1(x), ref = reference.run1(x);
    checkFinite(out, "model outputs");
    same += (out.reshape({m, -1}).argmax(-1).cpu() == ref.reshape({m, -1}).argmax(-1).cpu()).sum().item<int64_t>();
  }
  (void)show;
  MetricResult r;
  r.metric = "agreement";
  r.count = n;
  r.value = n > 0 ? static_cast<double>(same) / static_cast<double>(n) : 1.0;
  r.seconds = since(t0);
  return r;
}

namespace {

/// Mean over examples of cos(f(output), f(reference output)), f flattening each example (after `pool`).
MetricResult cosineOf(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool pool, const char* name) {
  auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  int64_t n = inputs.size(0);
  double sum = 0;
  auto features = [&](const at::Tensor& y, int64_t m) {
    at::Tensor t = y.to(at::kDouble).cpu();
    if (pool && t.dim() >= 3) t = t.mean(1);  // [B, S, D, ...] -> [B, D, ...]: one vector per sequence
    return t.reshape({m, -1});
  };
  for (int64_t b = 0; b < n; b += batch) {
    int64_t m = std::min(batch, n - b);
    at::Tensor x = inputs.narrow(0, b, m);
    at::Tensor out = ex.run1(x);
    checkFinite(out, "model outputs");
    sum += at::cosine_similarity(features(out, m), features(reference.run1(x), m), 1, 1e-12).sum().item<double>();
  }
  MetricResult res;
  res.metric = name;
  res.count = n;
  res.value = sum / static_cast<double>(n);
  res.seconds = since(t0);
  return res;
}

}  // namespace

MetricResult cosine(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool show) {
  (void)show;
  return cosineOf(ex, reference, inputs, batch, false, "cosine");
}

MetricResult pooledCosine(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool show) {
  (void)show;
  return cosineOf(ex, reference, inputs, batch, true, "pooled_cosine");
}

at::Tensor tensorFromNpy(const NpyArray& a, const std::string& path) {
  at::ScalarType st;
  if (a.descr == "<f4") st = at::kFloat;
  else if (a.descr == "<f8") st = at::kDouble;
  else if (a.descr == "<f2") st = at::kHalf;
  else if (a.descr == "<i8") st = at::kLong;
  else if (a.descr == "<i4") st = at::kInt;
  else if (a.descr == "|i1") st = at::kChar;
  else if (a.descr == "|u1") st = at::kByte;
  else if (a.descr == "|b1") st = at::kBool;
  else fail(ErrorCategory::Data, "'" + path + "' has dtype " + a.descr + ", which is not supported");
  at::Tensor t = at::empty(a.shape, st);
  std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

}  // namespace compress
