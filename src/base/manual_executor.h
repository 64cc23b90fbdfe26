// An Executor that runs tasks only when a test drains it, on the draining thread: the
// counterpart of ManualClock. post() is safe from any thread, so real threads (a committer,
// a transport) can hand it work while the test decides when that work runs.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "base/executor.h"

namespace skyring {

class ManualExecutor final : public Executor {
 public:
  void post(Task task) override {
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_all();
  }
  // Runs what is queued (and what those tasks post); returns how many ran.
  size_t run_all() {
    size_t n = 0;
    for (;;) {
      Task t;
      {
        std::lock_guard lock(mu_);
        if (tasks_.empty()) return n;
        t = std::move(tasks_.front());
        tasks_.pop_front();
      }
      t();
      ++n;
    }
  }
  size_t queued() {
    std::lock_guard lock(mu_);
    return tasks_.size();
  }
  // Waits until a task is queued; the limit is a safety net, never a condition of correctness.
  bool wait_for_task(std::chrono::seconds limit = std::chrono::seconds(60)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return !tasks_.empty(); });
  }
  // Drains until pred() holds; false if nothing arrived within the safety limit.
  template <typename Pred>
  bool drain_until(Pred pred) {
    while (!pred()) {
      if (!wait_for_task()) return false;
      run_all();
    }
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
};

}  // namespace skyring
