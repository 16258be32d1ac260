// distill.cpp — knowledge distillation (Hinton et al. 2015, arXiv:1503.02531) of a compressed LM from its
// uncompressed self. The student is the recipe's current graph run by the executor with live (unfolded)
// weights that require grad; LibTorch autograd gives the gradients; AdamW with linear warm-up and cosine
// decay, global-norm clipping. Changes: float parameter values. Keeps: shapes, masks (pruned weights stay
// exactly zero), quantized weights (frozen), topology.
#include "compress/distill.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "compress/error.h"
#include "compress/executor.h"
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

struct Param {
  std::string name;
  at::Tensor value;  // leaf tensor requiring grad (the graph's initializer)
  at::Tensor mask;   // float keep-mask, or undefined
  at::Tensor m, v;   // AdamW moments
};

}  // namespace

nlohmann::json distill(Graph& g, const Graph& teacher, const at::Tensor& train_tokens, const DistillOptions& o,
                       at::Device device, bool progress) {
  const auto t0 = Clock::now();
  if (!train_tokens.defined() || train_tokens.dim() != 1)
    fail(ErrorCategory::Config, "distill: needs training text: add data.train (e.g. train_head.tok512.npy) to the recipe");
  if (g.inputs.size() != 1 || teacher.inputs.size() != 1 || g.outputs.empty())
    fail(ErrorCategory::Config, "distill: supports causal LMs with one token input and logits as the first output");
  // Train/held-out split of the stream: the last `holdout` fraction is never trained on.
  const int64_t n = train_tokens.numel(), T = o.seq_len;
  int64_t hold = o.holdout > 0 ? std::max<int64_t>(T + 1, std::llround(o.holdout * static_cast<double>(n))) : 0;
  const int64_t n_train = n - hold;
  if (n_train < T + 1)
    fail(ErrorCategory::Data, "distill: data.train has " + std::to_string(n) + " tokens; seq_len " + std::to_string(T) +
                                  " with holdout " + std::to_string(o.holdout) + " needs at least " + std::to_string(T + 1 + hold) +
                                  " (use more text, a shorter seq_len or a smaller holdout)");
  at::Tensor tokens = train_tokens.to(at::kLong).to(device);
  at::Tensor ar = at::arange(T + 1, at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor held;  // [windows, T + 1]
  if (hold > 0) {
    int64_t w = std::min<int64_t>(16, hold / (T + 1));
    held = tokens.narrow(0, n_train, w * (T + 1)).reshape({w, T + 1});
  }

  // Parameters: every float initializer that is a model parameter; quantized weights stay frozen.
  std::vector<Param> params;
  int64_t trainable = 0;
  for (auto& [name, t] : g.initializers) {
    if (!g.parameters.count(name) || !t.is_floating_point()) continue;
    Param p;
    p.name = name;
    t = t.detach().clone().to(at::kFloat).requires_grad_(true);
    p.value = t;
    auto sp = g.sparsity.find(name);
    if (sp != g.sparsity.end()) p.mask = sp->second.mask.to(at::kFloat).to(t.device());
    p.m = at::zeros_like(t).detach();
    p.v = at::zeros_like(t).detach();
    trainable += t.numel();
    params.push_back(std::move(p));
  }
  if (params.empty()) fail(ErrorCategory::Config, "distill: the model has no float parameters to train");
  int64_t frozen = 0;
  for (const auto& [w, q] : g.quant) frozen += g.initializers.count(w + ".qdata") ? g.initializers.at(w + ".qdata").numel() : 0;

  ExecOptions live;
  live.device = device;
  live.fold_constants = false;  // weights require grad: their transposes must run each step
  Executor student(g, live);
  Executor teach(teacher, ExecOptions{device});

  // Hidden-state matching: outputs of selected linear layers, by MatMul node, in both models.
  std::map<std::string, at::Tensor> s_hidden, t_hidden;
  std::set<std::string> hidden_nodes;
  if (!o.hidden.empty()) {
    auto ws = selectPassTargets(g, "distill", o.hidden, {});
    for (const auto& l : findLinears(g))
      if (std::find(ws.begin(), ws.end(), l.weight) != ws.end()) hidden_nodes.insert(g.nodes[l.node].name);
    student.addHook([&](int, const Node& nd, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& out) {
      if (hidden_nodes.count(nd.name)) s_hidden[nd.name] = out[0];
    });
    teach.addHook([&](int, const Node& nd, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& out) {
      if (hidden_nodes.count(nd.name)) t_hidden[nd.name] = out[0];
    });
  }
  auto lossOf = [&](const at::Tensor& logits, const at::Tensor& tlogits, const at::Tensor& targets) {
    at::Tensor loss = kdLoss(logits, tlogits, o.temperature) * (1.0 - o.alpha);
    if (o.alpha > 0)
      loss = loss + o.alpha * at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), targets.reshape({-1}));
    for (const auto& nd : hidden_nodes)
      if (s_hidden.count(nd) && t_hidden.count(nd)) loss = loss + o.hidden_weight * at::mse_loss(s_hidden.at(nd), t_hidden.at(nd));
    return loss;
  };
  // Held-out KD loss (teacher logits computed once).
  std::vector<at::Tensor> held_teacher;
  auto heldOut = [&]() {
    at::NoGradGuard ng;
    double sum = 0;
    int64_t count = 0;
    for (int64_t s = 0, k = 0; s < held.size(0); s += o.micro_batch, ++k) {
      at::Tensor x = held.narrow(0, s, std::min(o.micro_batch, held.size(0) - s));
      at::Tensor in = x.narrow(1, 0, T);
      if (static_cast<int64_t>(held_teacher.size()) <= k) held_teacher.push_back(teach.run1(in));
      sum += kdLoss(student.run1(in), held_teacher[static_cast<size_t>(k)], o.temperature).item<double>() * x.size(0);
      count += x.size(0);
    }
    return sum / static_cast<double>(count);
  };

  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(o.seed));
  auto lrAt = [&](int64_t step) {  // step counts from 1
    if (step <= o.warmup) return o.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, o.warmup));
    // Cosine over the remaining steps, from the full rate at the first one (never exactly 0 at the last).
    double p = static_cast<double>(step - o.warmup - 1) / static_cast<double>(std::max<int64_t>(1, o.steps - o.warmup));
    double c = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, p)));
    return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * c);
  };

  nlohmann::json history = nlohmann::json::array();
  double first_loss = -1, last_loss = 0, best_held = INFINITY, first_held = NAN;
  int64_t best_step = 0, since_best = 0, step = 0;
  bool stopped_early = false, out_of_time = false;
  std::vector<at::Tensor> best;
  if (held.defined()) {
    first_held = best_held = heldOut();
    history.push_back({{"step", 0}, {"held_out_kd", first_held}});
  }
  const int64_t n_windows = n_train / (T + 1);
  std::vector<at::Tensor> cache(static_cast<size_t>(o.teacher_cache ? n_windows : 0));
  at::Tensor perm = at::empty({0}, at::kLong);
  int64_t perm_pos = 0;
  auto train_start = Clock::now();
  const int64_t log_every = std::max<int64_t>(1, std::min<int64_t>(25, o.steps / 20));
  double loss_avg = 0, t_teacher = 0, t_forward = 0, t_backward = 0;
  for (step = 1; step <= o.steps; ++step) {
    at::Tensor window_ids;  // with the teacher cache: which fixed windows this step trains on
    at::Tensor offsets;
    if (o.teacher_cache) {
      std::vector<int64_t> ids;
      while (static_cast<int64_t>(ids.size()) < o.batch) {
        if (perm_pos >= perm.numel()) perm = at::randperm(n_windows, gen, at::kLong), perm_pos = 0;
        ids.push_back(perm[perm_pos++].item<int64_t>());
      }
      window_ids = at::tensor(ids, at::kLong);
      offsets = (window_ids * (T + 1)).to(device);
    } else {
      offsets = at::randint(0, n_train - T, {o.batch}, gen, at::kLong).to(device);
    }
    at::Tensor xy = tokens.index({offsets.unsqueeze(1) + ar});
    at::Tensor x = xy.narrow(1, 0, T), y = xy.narrow(1, 1, T);
    // Micro-batches accumulate gradients: the same step, with every activation small enough for malloc to
    // reuse (larger blocks go to mmap and are faulted in again on every use).
    double lv = 0;
    for (int64_t mb = 0; mb < o.batch; mb += o.micro_batch) {
      int64_t cnt = std::min(o.micro_batch, o.batch - mb);
      at::Tensor xm = x.narrow(0, mb, cnt), ym = y.narrow(0, mb, cnt);
      at::Tensor tl;
      auto ta = Clock::now();
      {
        at::NoGradGuard ng;
        if (o.teacher_cache) {
          // Logits of each fixed window are computed once (kept in fp16) and reused every epoch.
          std::vector<at::Tensor> parts;
          for (int64_t k = 0; k < cnt; ++k) {
            int64_t id = window_ids[mb + k].item<int64_t>();
            at::Tensor& c = cache[static_cast<size_t>(id)];
            if (!c.defined()) c = teach.run1(xm.narrow(0, k, 1)).to(at::kHalf);
            parts.push_back(c);
          }
          tl = at::cat(parts).to(at::kFloat);
        } else {
          tl = teach.run1(xm);
        }
      }
      auto tb = Clock::now();
      at::Tensor loss = lossOf(student.run1(xm), tl, ym) * (static_cast<double>(cnt) / static_cast<double>(o.batch));
      lv += loss.item<double>();
      auto tc = Clock::now();
      loss.backward();
      auto td = Clock::now();
      t_teacher += std::chrono::duration<double>(tb - ta).count();
      t_forward += std::chrono::duration<double>(tc - tb).count();
      t_backward += std::chrono::duration<double>(td - tc).count();
    }
    if (!std::isfinite(lv))
      fail(ErrorCategory::Numeric, "distill: the loss became " + std::to_string(lv) + " at step " + std::to_string(step) +
                                       "; lower lr (now " + std::to_string(o.lr) + ") or set clip");
    at::NoGradGuard ng;
    double norm2 = 0;
    for (auto& p : params) {
      at::Tensor& gr = p.value.mutable_grad();
      if (!gr.defined()) continue;
      if (p.mask.defined()) gr.mul_(p.mask);
      norm2 += gr.pow(2).sum().item<double>();
    }
    double scale = o.clip > 0 && std::sqrt(norm2) > o.clip ? o.clip / std::sqrt(norm2) : 1.0;
    const double lr = lrAt(step);
    const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step)), bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
    for (auto& p : params) {
      at::Tensor& gr = p.value.mutable_grad();
      if (!gr.defined()) continue;
      if (scale != 1.0) gr.mul_(scale);
      p.m.mul_(o.beta1).add_(gr, 1.0 - o.beta1);
      p.v.mul_(o.beta2).addcmul_(gr, gr, 1.0 - o.beta2);
      p.value.mul_(1.0 - lr * o.weight_decay);
      p.value.addcdiv_(p.m, (p.v / bc2).sqrt_().add_(o.eps), -lr / bc1);
      if (p.mask.defined()) p.value.mul_(p.mask);
      gr = at::Tensor();
    }
    if (first_loss < 0) first_loss = lv;
    last_loss = lv;
    loss_avg = step == 1 ? lv : 0.9 * loss_avg + 0.1 * lv;
    double secs = std::chrono::duration<double>(Clock::now() - train_start).count();
    bool eval_now = held.defined() && (step % o.eval_every == 0 || step == o.steps);
    std::string held_str;
    if (eval_now) {
      double h = heldOut();
      history.push_back({{"step", step}, {"held_out_kd", h}, {"train_loss", loss_avg}, {"lr", lr}, {"seconds", secs}});
      if (h < best_held) {
        best_held = h, best_step = step, since_best = 0;
        best.clear();
        for (auto& p : params) best.push_back(p.value.detach().clone());
      } else if (++since_best >= o.patience && o.patience > 0) {
        stopped_early = true;
      }
      char b[96];
      std::snprintf(b, sizeof b, ", held-out KD %.4f%s", h, since_best == 0 ? " (best)" : "");
      held_str = b;
    }
    if (o.max_minutes > 0 && secs > o.max_minutes * 60) out_of_time = true;
    if (progress && (step % log_every == 0 || eval_now || step == o.steps || stopped_early || out_of_time)) {
      double tps = static_cast<double>(step * o.batch * T) / std::max(secs, 1e-9);
      double eta = secs / static_cast<double>(step) * static_cast<double>(o.steps - step);
      std::printf("  distill: step %lld/%lld, loss %.4f%s, lr %.2e, %.0f tokens/s, %s elapsed, ETA %s\n",
                  static_cast<long long>(step), static_cast<long long>(o.steps), loss_avg, held_str.c_str(), lr, tps,
                  clockStr(secs).c_str(), clockStr(eta).c_str());
      std::fflush(stdout);
    }
    if (stopped_early || out_of_time) break;
  }
  const int64_t steps_run = std::min(step, o.steps);
  const double train_s = std::chrono::duration<double>(Clock::now() - train_start).count();
  // Keep the best held-out weights.
  {
    at::NoGradGuard ng;
    if (!best.empty())
      for (size_t i = 0; i < params.size(); ++i) params[i].value.copy_(best[i]);
  }
  for (auto& p : params) g.initializers.at(p.name) = p.value.detach().to(teacher.initializers.count(p.name)
                                                                              ? teacher.initializers.at(p.name).scalar_type()
                                                                              : at::kFloat);
  const double tokens_seen = static_cast<double>(steps_run * o.batch * T);
  return {{"steps", steps_run}, {"max_steps", o.steps}, {"batch", o.batch}, {"seq_len", T}, {"tokens", tokens_seen},
          {"train_seconds", train_s}, {"teacher_seconds", t_teacher}, {"forward_seconds", t_forward},
          {"backward_seconds", t_backward}, {"tokens_per_second", tokens_seen / std::max(train_s, 1e-9)},
          {"seconds", std::chrono::duration<double>(Clock::now() - t0).count()},
          {"first_loss", first_loss}, {"last_loss", last_loss}, {"held_out_kd_before", first_held},
          {"held_out_kd_best", best_held}, {"best_step", best_step}, {"stopped_early", stopped_early},
          {"stopped_by_time", out_of_time}, {"trainable_params", trainable}, {"frozen_quantized_weights", frozen},
          {"train_tokens", n_train}, {"held_out_tokens", hold}, {"teacher_cache", o.teacher_cache}, {"temperature", o.temperature}, {"alpha", o.alpha},
          {"lr", o.lr}, {"history", history}};
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
    o_.micro_batch = r.integer("micro_batch", 8, 1, 1 << 16, "sequences per forward/backward (gradients accumulate to `batch`; memory)");
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
