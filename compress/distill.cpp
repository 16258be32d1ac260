// distill.cpp — knowledge distillation (Hinton et al. 2015, arXiv:1503.02531) of a compressed LM from its
// uncompressed self. The student is the recipe's current graph run by the executor with live (unfolded)
// weights that require grad; LibTorch autograd gives the gradients; AdamW with linear warm-up and cosine
// decay, global-norm clipping. Changes: float parameter values. Keeps: shapes, masks (pruned weights stay
// exactly zero), quantized weights (frozen), topology.
#include "compress/distill.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/host_setup.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "compress/pipeline.h"

namespace compress {

at::Tensor kdLoss(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature) {
  at::Tensor ls = at::log_softmax(student_logits.to(at::kFloat) / temperature, -1);
  at::Tensor lt = at::log_softmax(teacher_logits.to(at::kFloat) / temperature, -1);
  return (lt.exp() * (lt - ls)).sum(-1).mean() * (temperature * temperature);
}

namespace {

using Clock = std::chrono::steady_clock;

std::string clockStr(double s) {
  char buf[32];
  int m = static_cast<int>(s) / 60, sec = static_cast<int>(s) % 60;
  std::snprintf(buf, sizeof buf, "%d:%02d", m, sec);
  return buf;
}

/// While alive (when `on`), LibTorch's and the BLAS library's pools run each op on its calling thread: the distiller's
/// workers are the parallelism. Restores the thread counts after.
class OneThreadPerOp {
 public:
  explicit OneThreadPerOp(bool on) : threads_(on ? at::get_num_threads() : 0) {
    if (threads_ > 0) setComputeThreads(1);
  }
  ~OneThreadPerOp() {
    if (threads_ > 0) setComputeThreads(threads_);
  }
  OneThreadPerOp(const OneThreadPerOp&) = delete;
  OneThreadPerOp& operator=(const OneThreadPerOp&) = delete;

 private:
  int threads_;
};

struct Param {
  std::string name;
  at::Tensor value;  // leaf tensor requiring grad (the graph's initializer)
  at::Tensor mask;   // float keep-mask, or undefined
  at::Tensor m, v;   // AdamW moments
};

/// One distillation: the data split, the trainable parameters and both executors, then the training loop in its
/// named steps (a batch's gradients, the optimizer step, the held-out evaluation, progress, the report).
class Distiller {
 public:
  Distiller(Graph& g, const Graph& teacher, const at::Tensor& train_tokens, const DistillOptions& o, at::Device device,
            bool progress)
      : g_(g), teacher_(teacher), o_(o), device_(device), progress_(progress), T_(o.seq_len) {
    splitData(train_tokens);
    collectParams();
    ExecOptions live;
    live.device = device;
    live.fold_constants = false;  // weights require grad: their transposes must run each step
    student_ = std::make_unique<Executor>(g, live);
    teach_ = std::make_unique<Executor>(teacher, ExecOptions{device});
    hookHiddenStates();
    for (const Param& p : params_) leaves_.push_back(p.value);
    // Micro-batches run on the session's threads when nothing is shared between them (hidden-state hooks write
    // members) and the host computes: each then runs its ops on one thread (OneThreadPerOp).
    workers_ = device_.is_cpu() && hidden_nodes_.empty() ? std::max(1, at::get_num_threads()) : 1;
  }

  nlohmann::json run() {
    OneThreadPerOp single(workers_ > 1);
    if (held_.defined()) {
      first_held_ = best_held_ = heldOut();
      history_.push_back({{"step", 0}, {"held_out_kd", first_held_}});
    }
    n_windows_ = n_train_ / (T_ + 1);
    cache_.resize(static_cast<size_t>(o_.teacher_cache ? n_windows_ : 0));
    train_start_ = Clock::now();
    const int64_t log_every = std::max<int64_t>(1, std::min<int64_t>(25, o_.steps / 20));
    int64_t step = 0;
    for (step = 1; step <= o_.steps; ++step) {
      const double lv = batchGradients(step);
      const double lr = lrAt(step);
      optimizerStep(step, lr);
      if (first_loss_ < 0) first_loss_ = lv;
      last_loss_ = lv;
      loss_avg_ = step == 1 ? lv : 0.9 * loss_avg_ + 0.1 * lv;
      const double secs = std::chrono::duration<double>(Clock::now() - train_start_).count();
      const bool eval_now = held_.defined() && (step % o_.eval_every == 0 || step == o_.steps);
      const std::string held_str = eval_now ? evaluate(step, lr, secs) : "";
      if (o_.max_minutes > 0 && secs > o_.max_minutes * 60) out_of_time_ = true;
      if (progress_ && (step % log_every == 0 || eval_now || step == o_.steps || stopped_early_ || out_of_time_))
        logStep(step, lr, secs, held_str);
      if (stopped_early_ || out_of_time_) break;
    }
    return finish(std::min(step, o_.steps));
  }

 private:
  /// The train / held-out split of the stream: the last `holdout` fraction is never trained on.
  void splitData(const at::Tensor& train_tokens) {
    if (!train_tokens.defined() || train_tokens.dim() != 1)
      fail(ErrorCategory::Config, "distill: needs training text: add data.train (e.g. train_head.tok512.npy) to the recipe");
    if (g_.inputs.size() != 1 || teacher_.inputs.size() != 1 || g_.outputs.empty())
      fail(ErrorCategory::Config, "distill: supports causal LMs with one token input and logits as the first output");
    const int64_t n = train_tokens.numel();
    hold_ = o_.holdout > 0 ? std::max<int64_t>(T_ + 1, std::llround(o_.holdout * static_cast<double>(n))) : 0;
    n_train_ = n - hold_;
    if (n_train_ < T_ + 1)
      fail(ErrorCategory::Data, "distill: data.train has " + std::to_string(n) + " tokens; seq_len " + std::to_string(T_) +
                                    " with holdout " + std::to_string(o_.holdout) + " needs at least " + std::to_string(T_ + 1 + hold_) +
                                    " (use more text, a shorter seq_len or a smaller holdout)");
    tokens_ = train_tokens.to(at::kLong).to(device_);
    ar_ = at::arange(T_ + 1, at::TensorOptions().dtype(at::kLong).device(device_));
    if (hold_ > 0) {
      const int64_t w = std::min<int64_t>(16, hold_ / (T_ + 1));
      held_ = tokens_.narrow(0, n_train_, w * (T_ + 1)).reshape({w, T_ + 1});  // [windows, T + 1]
    }
  }

  /// Every float initializer that is a model parameter; quantized weights stay frozen.
  void collectParams() {
    for (auto& [name, t] : g_.initializers) {
      if (!g_.parameters.count(name) || !t.is_floating_point()) continue;
      Param p;
      p.name = name;
      t = t.detach().clone().to(at::kFloat).requires_grad_(true);
      p.value = t;
      auto sp = g_.sparsity.find(name);
      if (sp != g_.sparsity.end()) p.mask = sp->second.mask.to(at::kFloat).to(t.device());
      p.m = at::zeros_like(t).detach();
      p.v = at::zeros_like(t).detach();
      trainable_ += t.numel();
      params_.push_back(std::move(p));
    }
    if (params_.empty()) fail(ErrorCategory::Config, "distill: the model has no float parameters to train");
    for (const auto& [w, q] : g_.quant) frozen_ += g_.initializers.count(w + ".qdata") ? g_.initializers.at(w + ".qdata").numel() : 0;
  }

  /// Hidden-state matching: the outputs of the selected linear layers, by MatMul node, in both models.
  void hookHiddenStates() {
    if (o_.hidden.empty()) return;
    auto ws = selectPassTargets(g_, "distill", o_.hidden, {});
    for (const auto& l : findLinears(g_))
      if (std::find(ws.begin(), ws.end(), l.weight) != ws.end()) hidden_nodes_.insert(g_.nodes[l.node].name);
    student_->addHook([this](int, const Node& nd, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& out) {
      if (hidden_nodes_.count(nd.name)) s_hidden_[nd.name] = out[0];
    });
    teach_->addHook([this](int, const Node& nd, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& out) {
      if (hidden_nodes_.count(nd.name)) t_hidden_[nd.name] = out[0];
    });
  }

  at::Tensor lossOf(const at::Tensor& logits, const at::Tensor& tlogits, const at::Tensor& targets) {
    at::Tensor loss = kdLoss(logits, tlogits, o_.temperature) * (1.0 - o_.alpha);
    if (o_.alpha > 0)
      loss = loss + o_.alpha * at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), targets.reshape({-1}));
    for (const auto& nd : hidden_nodes_)
      if (s_hidden_.count(nd) && t_hidden_.count(nd)) loss = loss + o_.hidden_weight * at::mse_loss(s_hidden_.at(nd), t_hidden_.at(nd));
    return loss;
  }

  /// The held-out KD loss (the teacher's logits computed once).
  double heldOut() {
    at::NoGradGuard ng;
    double sum = 0;
    int64_t count = 0;
    for (int64_t s = 0, k = 0; s < held_.size(0); s += o_.micro_batch, ++k) {
      at::Tensor x = held_.narrow(0, s, std::min(o_.micro_batch, held_.size(0) - s));
      at::Tensor in = x.narrow(1, 0, T_);
      if (static_cast<int64_t>(held_teacher_.size()) <= k) held_teacher_.push_back(teach_->run1(in));
      sum += kdLoss(student_->run1(in), held_teacher_[static_cast<size_t>(k)], o_.temperature).item<double>() * x.size(0);
      count += x.size(0);
    }
    return sum / static_cast<double>(count);
  }

  /// Linear warm-up, then a cosine over the remaining steps from the full rate at the first one (never exactly 0 at
  /// the last); step counts from 1.
  double lrAt(int64_t step) const {
    if (step <= o_.warmup) return o_.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, o_.warmup));
    double p = static_cast<double>(step - o_.warmup - 1) / static_cast<double>(std::max<int64_t>(1, o_.steps - o_.warmup));
    double c = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, p)));
    return o_.lr * (o_.min_lr_ratio + (1.0 - o_.min_lr_ratio) * c);
  }

  /// The start offsets of this step's windows: random, or with the teacher cache the next fixed windows of a shuffled
  /// epoch (their ids in window_ids).
  at::Tensor sampleOffsets(at::Tensor& window_ids) {
    if (!o_.teacher_cache) return at::randint(0, n_train_ - T_, {o_.batch}, gen_, at::kLong).to(device_);
    std::vector<int64_t> ids;
    while (static_cast<int64_t>(ids.size()) < o_.batch) {
      if (perm_pos_ >= perm_.numel()) perm_ = at::randperm(n_windows_, gen_, at::kLong), perm_pos_ = 0;
      ids.push_back(perm_[perm_pos_++].item<int64_t>());
    }
    window_ids = at::tensor(ids, at::kLong);
    return (window_ids * (T_ + 1)).to(device_);
  }

  /// The teacher's logits for micro-batch xm (sequences mb.. of the step); with the cache each fixed window's are
  /// computed once (kept in fp16) and reused every epoch.
  at::Tensor teacherLogits(const at::Tensor& xm, const at::Tensor& window_ids, int64_t mb, int64_t cnt) {
    at::NoGradGuard ng;
    if (!o_.teacher_cache) return teach_->run1(xm);
    std::vector<at::Tensor> parts;
    for (int64_t k = 0; k < cnt; ++k) {
      int64_t id = window_ids[mb + k].item<int64_t>();
      at::Tensor& c = cache_[static_cast<size_t>(id)];
      if (!c.defined()) c = teach_->run1(xm.narrow(0, k, 1)).to(at::kHalf);
      parts.push_back(c);
    }
    return at::cat(parts).to(at::kFloat);
  }

  /// One micro-batch's loss (scaled to its share of the step) and its gradients (one per parameter, undefined where it
  /// does not reach), computed on the calling thread.
  struct MicroResult {
    double loss = 0;
    std::vector<at::Tensor> grads;
    double forward_s = 0, backward_s = 0;
  };
  MicroResult microGradients(const at::Tensor& xm, const at::Tensor& ym, const at::Tensor& tl) {
    MicroResult r;
    const auto tb = Clock::now();
    at::Tensor loss = lossOf(student_->run1(xm), tl, ym) * (static_cast<double>(xm.size(0)) / static_cast<double>(o_.batch));
    r.loss = loss.item<double>();
    const auto tc = Clock::now();
    r.grads = torch::autograd::grad({loss}, leaves_, {}, /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
    r.forward_s = std::chrono::duration<double>(tc - tb).count();
    r.backward_s = std::chrono::duration<double>(Clock::now() - tc).count();
    return r;
  }

  /// Adds a micro-batch's gradients to the parameters' as backward() accumulates them (the first one taken, the next
  /// ones added in place), and its loss to lv.
  void accumulate(MicroResult& r, double& lv) {
    lv += r.loss;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (!r.grads[i].defined()) continue;
      at::Tensor& gr = params_[i].value.mutable_grad();
      if (gr.defined()) gr.add_(r.grads[i]);
      else gr = std::move(r.grads[i]);
    }
    t_forward_ += r.forward_s;
    t_backward_ += r.backward_s;
  }

  /// One step's gradients over its micro-batches (every activation small enough for malloc to reuse: larger blocks
  /// go to mmap and are faulted in again on every use); returns the step's loss. The micro-batches run in rounds of
  /// `workers_` (the round's teacher logits first, then one micro-batch per thread, each op single-threaded), their
  /// gradients added in micro-batch order: the bits of one thread's sequential backward() calls, with every core busy
  /// (a 256-token micro-batch of a small model keeps one core's worth of LibTorch's ops; the default job's
  /// distillation 263 -> 153 s on 2 cores).
  double batchGradients(int64_t step) {
    at::Tensor window_ids;
    const at::Tensor offsets = sampleOffsets(window_ids);
    at::Tensor xy = tokens_.index({offsets.unsqueeze(1) + ar_});
    at::Tensor x = xy.narrow(1, 0, T_), y = xy.narrow(1, 1, T_);
    std::vector<at::Tensor> xs, ys;
    for (int64_t mb = 0; mb < o_.batch; mb += o_.micro_batch) {
      const int64_t cnt = std::min(o_.micro_batch, o_.batch - mb);
      xs.push_back(x.narrow(0, mb, cnt));
      ys.push_back(y.narrow(0, mb, cnt));
    }
    const int64_t n = static_cast<int64_t>(xs.size());
    auto teacherOf = [&](int64_t i) {
      const auto ta = Clock::now();
      at::Tensor tl = teacherLogits(xs[i], window_ids, i * o_.micro_batch, xs[i].size(0));
      t_teacher_ += std::chrono::duration<double>(Clock::now() - ta).count();
      return tl;
    };
    double lv = 0;
    if (workers_ == 1) {  // each teacher forward just before its student's (whose loss reads its hidden states)
      for (int64_t i = 0; i < n; ++i) {
        MicroResult r = microGradients(xs[i], ys[i], teacherOf(i));
        accumulate(r, lv);
      }
    }
    for (int64_t first = 0; workers_ > 1 && first < n; first += workers_) {
      const int64_t m = std::min<int64_t>(workers_, n - first);
      std::vector<at::Tensor> teacher;
      for (int64_t t = 0; t < m; ++t) teacher.push_back(teacherOf(first + t));
      std::vector<MicroResult> results(static_cast<size_t>(m));
      std::vector<std::exception_ptr> errors(static_cast<size_t>(m));
      auto work = [&](int64_t t) {
        try {
          results[t] = microGradients(xs[first + t], ys[first + t], teacher[t]);
        } catch (...) {
          errors[t] = std::current_exception();
        }
      };
      std::vector<std::thread> threads;
      for (int64_t t = 1; t < m; ++t) threads.emplace_back(work, t);
      work(0);
      for (auto& th : threads) th.join();
      for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
      for (auto& r : results) accumulate(r, lv);
    }
    if (!std::isfinite(lv))
      fail(ErrorCategory::Numeric, "distill: the loss became " + std::to_string(lv) + " at step " + std::to_string(step) +
                                       "; lower lr (now " + std::to_string(o_.lr) + ") or set clip");
    return lv;
  }

  /// Masked gradients, clipped to the global norm, then AdamW (decoupled weight decay); pruned weights stay zero.
  void optimizerStep(int64_t step, double lr) {
    at::NoGradGuard ng;
    double norm2 = 0;
    for (auto& p : params_) {
      at::Tensor& gr = p.value.mutable_grad();
      if (!gr.defined()) continue;
      if (p.mask.defined()) gr.mul_(p.mask);
      norm2 += gr.pow(2).sum().item<double>();
    }
    double scale = o_.clip > 0 && std::sqrt(norm2) > o_.clip ? o_.clip / std::sqrt(norm2) : 1.0;
    const double bc1 = 1.0 - std::pow(o_.beta1, static_cast<double>(step)), bc2 = 1.0 - std::pow(o_.beta2, static_cast<double>(step));
    for (auto& p : params_) {
      at::Tensor& gr = p.value.mutable_grad();
      if (!gr.defined()) continue;
      if (scale != 1.0) gr.mul_(scale);
      p.m.mul_(o_.beta1).add_(gr, 1.0 - o_.beta1);
      p.v.mul_(o_.beta2).addcmul_(gr, gr, 1.0 - o_.beta2);
      p.value.mul_(1.0 - lr * o_.weight_decay);
      p.value.addcdiv_(p.m, (p.v / bc2).sqrt_().add_(o_.eps), -lr / bc1);
      if (p.mask.defined()) p.value.mul_(p.mask);
      gr = at::Tensor();
    }
  }

  /// The held-out evaluation: history, the best weights so far, early stopping; the progress line's part.
  std::string evaluate(int64_t step, double lr, double secs) {
    at::NoGradGuard ng;
    double h = heldOut();
    history_.push_back({{"step", step}, {"held_out_kd", h}, {"train_loss", loss_avg_}, {"lr", lr}, {"seconds", secs}});
    if (h < best_held_) {
      best_held_ = h, best_step_ = step, since_best_ = 0;
      best_.clear();
      for (auto& p : params_) best_.push_back(p.value.detach().clone());
    } else if (++since_best_ >= o_.patience && o_.patience > 0) {
      stopped_early_ = true;
    }
    char b[96];
    std::snprintf(b, sizeof b, ", held-out KD %.4f%s", h, since_best_ == 0 ? " (best)" : "");
    return b;
  }

  void logStep(int64_t step, double lr, double secs, const std::string& held_str) const {
    double tps = static_cast<double>(step * o_.batch * T_) / std::max(secs, 1e-9);
    double eta = secs / static_cast<double>(step) * static_cast<double>(o_.steps - step);
    std::printf("  distill: step %lld/%lld, loss %.4f%s, lr %.2e, %.0f tokens/s, %s elapsed, ETA %s\n",
                static_cast<long long>(step), static_cast<long long>(o_.steps), loss_avg_, held_str.c_str(), lr, tps,
                clockStr(secs).c_str(), clockStr(eta).c_str());
    std::fflush(stdout);
  }

  /// Installs the best held-out weights in the graph (in the teacher's types) and returns the report.
  nlohmann::json finish(int64_t steps_run) {
    const double train_s = std::chrono::duration<double>(Clock::now() - train_start_).count();
    {
      at::NoGradGuard ng;
      if (!best_.empty())
        for (size_t i = 0; i < params_.size(); ++i) params_[i].value.copy_(best_[i]);
    }
    for (auto& p : params_)
      g_.initializers.at(p.name) = p.value.detach().to(
          teacher_.initializers.count(p.name) ? teacher_.initializers.at(p.name).scalar_type() : at::kFloat);
    const double tokens_seen = static_cast<double>(steps_run * o_.batch * T_);
    return {{"steps", steps_run}, {"max_steps", o_.steps}, {"batch", o_.batch}, {"seq_len", T_}, {"tokens", tokens_seen},
            {"train_seconds", train_s}, {"teacher_seconds", t_teacher_}, {"forward_seconds", t_forward_},
            {"backward_seconds", t_backward_}, {"tokens_per_second", tokens_seen / std::max(train_s, 1e-9)},
            {"seconds", std::chrono::duration<double>(Clock::now() - t0_).count()},
            {"first_loss", first_loss_}, {"last_loss", last_loss_}, {"held_out_kd_before", first_held_},
            {"held_out_kd_best", best_held_}, {"best_step", best_step_}, {"stopped_early", stopped_early_},
            {"stopped_by_time", out_of_time_}, {"trainable_params", trainable_}, {"frozen_quantized_weights", frozen_},
            {"train_tokens", n_train_}, {"held_out_tokens", hold_}, {"teacher_cache", o_.teacher_cache},
            {"temperature", o_.temperature}, {"alpha", o_.alpha}, {"lr", o_.lr}, {"history", history_}};
  }

  const Clock::time_point t0_ = Clock::now();
  Graph& g_;
  const Graph& teacher_;
  const DistillOptions& o_;
  at::Device device_;
  bool progress_;
  const int64_t T_;
  // data
  int64_t hold_ = 0, n_train_ = 0, n_windows_ = 0;
  at::Tensor tokens_, ar_, held_;
  // model
  std::vector<Param> params_;
  std::vector<at::Tensor> leaves_;  // params_' values, for autograd::grad
  int64_t workers_ = 1;             // micro-batches computed at once
  int64_t trainable_ = 0, frozen_ = 0;
  std::unique_ptr<Executor> student_, teach_;
  std::set<std::string> hidden_nodes_;
  std::map<std::string, at::Tensor> s_hidden_, t_hidden_;
  std::vector<at::Tensor> held_teacher_, cache_;
  // sampling
  at::Generator gen_ = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(o_.seed));
  at::Tensor perm_ = at::empty({0}, at::kLong);
  int64_t perm_pos_ = 0;
  // progress and results
  Clock::time_point train_start_;
  nlohmann::json history_ = nlohmann::json::array();
  double first_loss_ = -1, last_loss_ = 0, loss_avg_ = 0, best_held_ = INFINITY, first_held_ = NAN;
  double t_teacher_ = 0, t_forward_ = 0, t_backward_ = 0;
  int64_t best_step_ = 0, since_best_ = 0;
  bool stopped_early_ = false, out_of_time_ = false;
  std::vector<at::Tensor> best_;
};

}  // namespace

nlohmann::json distill(Graph& g, const Graph& teacher, const at::Tensor& train_tokens, const DistillOptions& o,
                       at::Device device, bool progress) {
  return Distiller(g, teacher, train_tokens, o, device, progress).run();
}

namespace {

class DistillPass : public Pass {
 public:
  const char* name() const override { return "distill"; }
  const char* description() const override {
    return "Knowledge distillation: the model before the recipe's passes teaches the compressed one (KL on softened logits), "
           "keeping masks, shapes and quantized weights.";
  }
  bool needsTrainData() const override { return true; }
  void configure(OptionReader& r) override {
    o_.steps = r.integer("steps", 500, 1, int64_t{1} << 30, "optimizer steps (at most; early stopping and max_minutes may end sooner)");
    o_.batch = r.integer("batch", 16, 1, 1 << 16, "sequences per step");
    o_.seq_len = r.integer("seq_len", 256, 2, 1 << 20, "tokens per sequence");
    o_.micro_batch = r.integer("micro_batch", 8, 1, 1 << 16, "sequences per forward/backward (gradients accumulate to `batch`; memory: on the host `threads` micro-batches run at once)");
    o_.lr = r.number("lr", 3e-3, 1e-8, 1.0, "peak learning rate (AdamW)");
    o_.min_lr_ratio = r.number("min_lr_ratio", 0.0, 0.0, 1.0, "the cosine schedule ends at lr x this");
    o_.warmup = r.integer("warmup", 50, 0, int64_t{1} << 30, "linear warm-up steps");
    o_.weight_decay = r.number("weight_decay", 0.01, 0.0, 1.0, "AdamW decoupled weight decay");
    o_.clip = r.number("clip", 1.0, 0.0, 1e6, "clip the global gradient norm to this (0 = off)");
    o_.temperature = r.number("temperature", 2.0, 0.05, 100.0, "softening temperature T of both distributions (loss scaled by T^2)");
    o_.alpha = r.number("alpha", 0.0, 0.0, 1.0, "weight of cross-entropy on the data; (1 - alpha) goes to the KD term");
    o_.hidden = r.strings("hidden", {}, "linear layers (globs) whose outputs the student matches by MSE, e.g. [layers.*.w2]");
    o_.hidden_weight = r.number("hidden_weight", 1.0, 0.0, 1e6, "weight of the hidden-state MSE");
    o_.holdout = r.number("holdout", 0.05, 0.0, 0.5, "fraction of data.train held out for early stopping (0 = none)");
    o_.eval_every = r.integer("eval_every", 50, 1, int64_t{1} << 30, "steps between held-out evaluations");
    o_.patience = r.integer("patience", 4, 0, 1 << 20, "stop after this many evaluations without improvement (0 = never)");
    o_.max_minutes = r.number("max_minutes", 0.0, 0.0, 1e6, "stop training after this many minutes (0 = no limit)");
    o_.teacher_cache = r.boolean("teacher_cache", false,
                                 "train on fixed non-overlapping windows (shuffled every epoch) and compute the teacher's logits once "
                                 "per window instead of every step (faster; fewer distinct contexts)");
    o_.teacher = r.str("teacher", "", "teacher model (.pt or .cir); default: the model before the recipe's first pass");
    if (o_.warmup >= o_.steps && o_.steps > 1) r.error("warmup", "must be smaller than steps (" + std::to_string(o_.steps) + ")");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    Graph loaded;
    const Graph* teacher = ctx.original;
    if (!o_.teacher.empty()) {
      loaded = loadModel(o_.teacher);
      teacher = &loaded;
    }
    if (!teacher) fail(ErrorCategory::Config, "distill: no teacher (give `teacher: path`)");
    DistillOptions o = o_;
    o.seed = ctx.seed;
    nlohmann::json s = distill(g, *teacher, ctx.train_tokens, o, ctx.device, ctx.show_progress);
    char buf[240];
    std::snprintf(buf, sizeof buf, "%lld steps (%.0f tokens/s, %.0f s): held-out KD %.4f -> %.4f (best at step %lld)%s",
                  static_cast<long long>(s["steps"].get<int64_t>()), s["tokens_per_second"].get<double>(),
                  s["train_seconds"].get<double>(), s["held_out_kd_before"].get<double>(), s["held_out_kd_best"].get<double>(),
                  static_cast<long long>(s["best_step"].get<int64_t>()),
                  s["stopped_early"].get<bool>() ? ", stopped early" : s["stopped_by_time"].get<bool>() ? ", stopped at max_minutes" : "");
    return {buf, s};
  }

 private:
  DistillOptions o_;
};

}  // namespace

std::unique_ptr<Pass> makeDistillPass() { return std::make_unique<DistillPass>(); }

}  // namespace compress
