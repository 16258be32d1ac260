// generator.cpp — Generator (generator.h): prefill, one-token steps with the in-session KV cache, sampling.
#include "runtime/generator.h"

#include "runtime/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace crt {
namespace {

bool isPast(const IoInfo& io) { return detail::isPastInput(io); }
/// An attention mask: [batch, seq] (or [batch, past+seq]) of integers or bools; the Generator feeds ones.
bool isMask(const IoInfo& io) {
  return io.shape.size() == 2 && (io.dtype == DType::I64 || io.dtype == DType::I32 || io.dtype == DType::Bool);
}

}  // namespace

Result<Generator> Generator::create(const std::string& path, const GeneratorOptions& o) {
  if (o.context < 0) return Status{StatusCode::InvalidArgument, "context must be >= 0 (0: the model's own)"};
  if (o.kv_dtype != DType::F32 && o.kv_dtype != DType::F16 && o.kv_dtype != DType::I8)
    return Status{StatusCode::InvalidArgument, "the KV cache is float32, float16 or int8"};
  SessionOptions so = o.session;
  so.last_position_logits = true;  // only the next token's logits are read
  so.kv_capacity = o.use_cache ? (o.context > 0 ? o.context : -1) : 0;
  so.kv_if_present = true;  // a model without a cache still generates (recomputing the prefix)
  so.kv_dtype = o.kv_dtype;
  auto s = Session::create(path, so);
  if (!s) return s.status();
  const int64_t model_ctx = detail::modelContext(s->metadata(), 0);
  const int64_t ctx = o.context > 0 ? o.context : model_ctx > 0 ? model_ctx : 2048;
  if (model_ctx > 0 && ctx > model_ctx)
    return Status{StatusCode::InvalidArgument, "context " + std::to_string(ctx) + " is longer than the model's " + std::to_string(model_ctx) +
                                                   " positions (compress.context_length)"};
  for (size_t i = 1; i < s->inputs().size(); ++i)
    if (!isPast(s->inputs()[i]) && !isMask(s->inputs()[i]))
      return Status{StatusCode::InvalidArgument, "generation needs a model whose inputs are the token ids, attention masks and past.N "
                                                 "key/values; '" + s->inputs()[i].name + "' is another"};
  const bool cached = s->hasKvCache();
  return Generator(std::move(s.value()), o, cached, ctx);
}

Generator::Generator(Session s, const GeneratorOptions& o, bool cached, int64_t context)
    : session_(std::move(s)), opts_(o), cached_(cached), context_(context), rng_(o.sampling.seed) {
  input_ = session_.inputs()[0].name;
  tokens_.reserve(static_cast<size_t>(context));
  for (size_t i = 1; i < session_.inputs().size(); ++i) {
    const IoInfo& io = session_.inputs()[i];
    if (isPast(io)) empty_pasts_.push_back({io.name, TensorView{io.dtype, {1, io.shape[1], 0, io.shape[3]}, nullptr}});  // uncached run
    else masks_.push_back({io.name, io.dtype});
  }
  ones_.assign(static_cast<size_t>(context) * 8 + 8, 0);
  for (const auto& [name, dt] : masks_)
    for (int64_t j = 0; j < context + 1; ++j) {
      char* p = ones_.data() + j * dtypeSize(dt);
      if (dt == DType::I64) *reinterpret_cast<int64_t*>(p) = 1;
      else if (dt == DType::I32) *reinterpret_cast<int32_t*>(p) = 1;
      else *reinterpret_cast<uint8_t*>(p) = 1;
    }
}

void Generator::setSampling(const SamplingOptions& s) {
  opts_.sampling = s;
  rng_.seed(s.seed);
}

Status Generator::feed(const int64_t* ids, int64_t n) {
  const int64_t total = static_cast<int64_t>(tokens_.size());
  feeds_.clear();
  if (cached_) {
    feeds_.push_back({input_, TensorView::of(ids, {1, n})});
  } else {
    feeds_ = empty_pasts_;
    feeds_.push_back({input_, TensorView::of(tokens_.data(), {1, total})});
  }
  for (const auto& [name, dt] : masks_) feeds_.push_back({name, TensorView{dt, {1, total}, ones_.data()}});  // every position attends
  Status st = session_.run(feeds_, outs_);
  if (!st.ok()) return st;
  const TensorView& o = outs_[0];
  if (o.dtype != DType::F32 || o.shape.size() != 3 || o.shape[0] != 1 || o.shape[2] < 1)
    return Status{StatusCode::ModelError, "expected float32 logits [1, T, vocab] as the model's first output"};
  vocab_ = o.shape[2];
  const float* last = o.as<float>() + (o.shape[1] - 1) * vocab_;
  logits_.assign(last, last + vocab_);
  return Status::Ok();
}

Status Generator::start(const std::vector<int64_t>& prompt) {
  if (prompt.empty()) return Status{StatusCode::InvalidArgument, "the prompt needs at least one token (e.g. BOS)"};
  if (static_cast<int64_t>(prompt.size()) > context_)
    return Status{StatusCode::InvalidArgument, "the prompt has " + std::to_string(prompt.size()) + " tokens, longer than the context of " +
                                                   std::to_string(context_)};
  if (cached_) {
    Status st = session_.kvTruncate(0);
    if (!st.ok()) return st;
  }
  tokens_.assign(prompt.begin(), prompt.end());
  pending_ = false;
  return feed(prompt.data(), static_cast<int64_t>(prompt.size()));
}

Result<int64_t> Generator::next() {
  if (tokens_.empty()) return Status{StatusCode::InvalidArgument, "call start() with a prompt first"};
  if (pending_) {
    if (length() > context_) return Status{StatusCode::InvalidArgument, "the sequence reached the context of " + std::to_string(context_) + " tokens"};
    Status st = feed(&tokens_.back(), 1);
    if (!st.ok()) return st;
  }
  if (length() >= context_) return Status{StatusCode::InvalidArgument, "the sequence reached the context of " + std::to_string(context_) + " tokens"};
  for (int64_t v = 0; v < vocab_; ++v)
    if (!std::isfinite(logits_[v])) return Status{StatusCode::DataError, "the model produced NaN/Inf logits at position " + std::to_string(length())};
  const int64_t t = sample();
  tokens_.push_back(t);
  pending_ = true;
  return t;
}

int64_t Generator::sample() {
  const SamplingOptions& s = opts_.sampling;
  work_.assign(logits_.begin(), logits_.end());
  if (s.repetition_penalty != 1.f)
    for (int64_t t : tokens_)
      if (t >= 0 && t < vocab_) work_[t] = work_[t] > 0 ? work_[t] / s.repetition_penalty : work_[t] * s.repetition_penalty;
  if (s.temperature <= 0) return std::max_element(work_.begin(), work_.end()) - work_.begin();
  order_.resize(static_cast<size_t>(vocab_));
  std::iota(order_.begin(), order_.end(), 0);
  const int64_t k = s.top_k > 0 ? std::min<int64_t>(s.top_k, vocab_) : vocab_;
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), [&](int32_t a, int32_t b) { return work_[a] > work_[b]; });
  const float top = work_[order_[0]];
  double total = 0;
  std::vector<double>& p = probs_;
  p.resize(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) total += p[j] = std::exp((work_[order_[j]] - top) / s.temperature);
  int64_t keep = k;
  if (s.top_p < 1.f) {
    double c = 0;
    for (int64_t j = 0; j < k; ++j) {
      c += p[j] / total;
      if (c >= s.top_p) {
        keep = j + 1;
        break;
      }
    }
  }
  std::discrete_distribution<int64_t> pick(p.begin(), p.begin() + keep);
  return order_[pick(rng_)];
}

}  // namespace crt
