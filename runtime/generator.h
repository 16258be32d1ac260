// generator.h — text generation on a Session: prompt tokens in, tokens out one at a time.
//
//   crt::GeneratorOptions o;  o.session.threads = 2;  o.sampling.temperature = 0.8f;  o.sampling.top_p = 0.95f;
//   auto g = crt::Generator::create("model.onnx", o);           // exported with compress export --kv-cache
//   if (!g) { std::cerr << g.status().message << "\n"; return 1; }
//   g->start({1, 403, 407});                                     // prefill (BOS + prompt ids)
//   for (int i = 0; i < 40; ++i) {
//     auto t = g->next();                                        // sample, then one cached step
//     if (!t || *t == 2) break;                                  // an error, or EOS
//     std::cout << *t << " ";
//   }
//
// A model exported with its KV cache (past.N / present.N) keeps the cache inside the session: the prompt
// runs once, then each token is a one-token step over preallocated buffers (no allocation per step). A
// model without one still works: each step recomputes the whole prefix (cached() says which).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "runtime/crt.h"

namespace crt {

struct SamplingOptions {
  float temperature = 0;         // 0: greedy (argmax)
  int top_k = 0;                 // keep the k most likely tokens (0: all)
  float top_p = 1;               // keep the smallest set whose probability reaches top_p (1: all)
  float repetition_penalty = 1;  // > 1 discourages tokens already in the sequence (CTRL's rule)
  uint64_t seed = 0;
};

struct GeneratorOptions {
  SessionOptions session;     // threads, memory limits (kv_capacity / kv_dtype are set from the fields below)
  int64_t context = 0;        // tokens the sequence may reach: 0 = the model's compress.context_length, else 2048
  DType kv_dtype = DType::F32;  // F32, F16 or I8 cache
  bool use_cache = true;      // false: recompute the prefix every step even when the model has a cache
  SamplingOptions sampling;
};

class Generator {
 public:
  static Result<Generator> create(const std::string& onnx_path, const GeneratorOptions& options = {});

  /// Starts a sequence: forgets the previous one and runs the prompt (at least one token).
  Status start(const std::vector<int64_t>& prompt);
  /// Picks the next token from the current logits and feeds it to the model (one step); returns it.
  Result<int64_t> next();

  bool cached() const { return cached_; }
  int64_t length() const { return static_cast<int64_t>(tokens_.size()); }  // prompt + generated tokens
  int64_t context() const { return context_; }
  int64_t vocab() const { return vocab_; }
  const float* logits() const { return logits_.data(); }  // of the last position
  const std::vector<int64_t>& tokens() const { return tokens_; }
  Session& session() { return session_; }
  void setSampling(const SamplingOptions& s);

 private:
  Generator(Session s, const GeneratorOptions& o, bool cached, int64_t context);
  Status feed(const int64_t* ids, int64_t n);  // runs ids (cached: only these; else the whole sequence)
  int64_t sample();

  Session session_;
  GeneratorOptions opts_;
  bool cached_ = false;
  int64_t context_ = 0, vocab_ = 0;
  std::string input_;
  std::vector<int64_t> tokens_;
  std::vector<float> logits_, work_;
  std::vector<int32_t> order_;
  std::vector<double> probs_;
  std::vector<TensorView> outs_;
  std::vector<std::pair<std::string, TensorView>> empty_pasts_, feeds_;
  std::vector<std::pair<std::string, DType>> masks_;  // attention-mask inputs, fed ones
  std::vector<char> ones_;
  std::mt19937_64 rng_;
  bool pending_ = false;  // the last sampled token has not been run yet
};

}  // namespace crt
