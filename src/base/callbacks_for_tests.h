// Test helper: records completion callbacks by index and counts every call, so a test can wait
// for results and prove each callback came exactly once. Shared by the delivery and cluster
// tests (DeliveryResult, PeerResponse, ...). Header-only; tests only.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <optional>

namespace skyring {

template <typename T>
class CallbackRecorder {
 public:
  using Clock = std::chrono::steady_clock;

  // `deadline`: how long the waits below wait when not told otherwise.
  explicit CallbackRecorder(std::chrono::milliseconds deadline = std::chrono::seconds(15))
      : deadline_(deadline) {}

  // The callback for job `index`. The first result is kept; later calls are only counted.
  std::function<void(T)> done(size_t index) {
    return [this, index](T r) {
      std::lock_guard lock(mu_);
      calls_[index]++;
      if (results_.emplace(index, std::move(r)).second) finished_at_[index] = Clock::now();
      cv_.notify_all();
    };
  }
  // Until `count` jobs have a result.
  bool wait_for(size_t count) { return wait_for(count, deadline_); }
  bool wait_for(size_t count, std::chrono::milliseconds deadline) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, deadline, [&] { return results_.size() >= count; });
  }
  // Until job `index` has a result: that result, or nullopt after the deadline.
  std::optional<T> wait(size_t index) { return wait(index, deadline_); }
  std::optional<T> wait(size_t index, std::chrono::milliseconds deadline) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, deadline, [&] { return results_.count(index) > 0; }))
      return std::nullopt;
    return results_.at(index);
  }
  bool has(size_t index) {
    std::lock_guard lock(mu_);
    return results_.count(index) > 0;
  }
  size_t size() {
    std::lock_guard lock(mu_);
    return results_.size();
  }
  T result(size_t index) {
    std::lock_guard lock(mu_);
    return results_.at(index);
  }
  int calls(size_t index) {
    std::lock_guard lock(mu_);
    auto it = calls_.find(index);
    return it == calls_.end() ? 0 : it->second;
  }
  Clock::time_point finished_at(size_t index) {
    std::lock_guard lock(mu_);
    return finished_at_.at(index);
  }

 private:
  const std::chrono::milliseconds deadline_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<size_t, int> calls_;
  std::map<size_t, T> results_;
  std::map<size_t, Clock::time_point> finished_at_;
};

}  // namespace skyring
