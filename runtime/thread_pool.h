// thread_pool.h — a fixed pool of worker threads (created once per session) with a fork-join
// parallel_for that allocates nothing: the caller takes part, workers spin briefly then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <pthread.h>
#include <vector>

namespace crt::detail {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  int size() const { return threads_; }

  /// Calls fn(task) for task in [0, tasks), spread over the pool; returns when all are done.
  template <typename F>
  void parallelFor(int64_t tasks, F&& fn) {
    if (tasks <= 0) return;
    if (tasks == 1 || threads_ == 1) {
      for (int64_t t = 0; t < tasks; ++t) fn(t);
      return;
    }
    run(tasks, [](void* ctx, int64_t t) { (*static_cast<F*>(ctx))(t); }, &fn);
  }

  /// parallelFor for tasks that may throw (load-time work per weight): every task runs, then the exception of the first
  /// task in task order that threw is rethrown here, so a failing load reports the same error at any thread count.
  template <typename F>
  void parallelForEach(int64_t tasks, F&& fn) {
    std::vector<std::exception_ptr> errors(static_cast<size_t>(tasks > 0 ? tasks : 0));
    parallelFor(tasks, [&](int64_t t) {
      try {
        fn(t);
      } catch (...) {
        errors[static_cast<size_t>(t)] = std::current_exception();
      }
    });
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

 private:
  using Thunk = void (*)(void*, int64_t);
  void run(int64_t tasks, Thunk thunk, void* ctx);
  void work();
  static void* entry(void* self);

  int threads_ = 1;
  std::vector<pthread_t> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> counter_{0};
  std::atomic<int64_t> done_{0};
  int sleeping_ = 0;  // guarded by mu_
  std::atomic<int64_t> tasks_{0};  // (read by workers that may still be on the last call's counter)
  Thunk thunk_ = nullptr;
  void* ctx_ = nullptr;
  bool stop_ = false;
};

/// fn(task) for task in [0, tasks): over the pool as parallelForEach, or in order on this thread without one.
template <typename F>
void forEachTask(ThreadPool* pool, int64_t tasks, F&& fn) {
  if (pool) return pool->parallelForEach(tasks, fn);
  for (int64_t t = 0; t < tasks; ++t) fn(t);
}

}  // namespace crt::detail
