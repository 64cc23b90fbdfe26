// Test helpers shared by the transport tests: a poll with a deadline, a recorder of `done`
// callbacks by job index that counts every call (exactly-once checks), and one-job delivery.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "delivery/transport.h"

namespace skyring::delivery_tests {

using Clock = std::chrono::steady_clock;

// Generous: the machine may be shared and the tests may run under sanitizers. Nothing waits
// for a deadline unless something is broken.
inline constexpr std::chrono::milliseconds kResultsDeadline{15'000};

// Polls `pred` every millisecond until it holds (true) or `deadline` passed (false).
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds deadline = kResultsDeadline) {
  const auto end = Clock::now() + deadline;
  while (!pred()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Records every callback; `calls` counts per job index to prove exactly-once.
class Results {
 public:
  DeliveryDone done(size_t index) {
    return [this, index](DeliveryResult r) {
      std::lock_guard lock(mu_);
      calls_[index]++;
      results_[index] = std::move(r);
      finished_at_[index] = Clock::now();
      cv_.notify_all();
    };
  }
  bool wait_for(size_t count, std::chrono::milliseconds deadline = kResultsDeadline) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, deadline, [&] { return results_.size() >= count; });
  }
  bool has(size_t index) {
    std::lock_guard lock(mu_);
    return results_.count(index) > 0;
  }
  size_t size() {
    std::lock_guard lock(mu_);
    return results_.size();
  }
  DeliveryResult result(size_t index) {
    std::lock_guard lock(mu_);
    return results_.at(index);
  }
  int calls(size_t index) {
    std::lock_guard lock(mu_);
    return calls_.count(index) ? calls_[index] : 0;
  }
  Clock::time_point finished_at(size_t index) {
    std::lock_guard lock(mu_);
    return finished_at_.at(index);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<size_t, int> calls_;
  std::map<size_t, DeliveryResult> results_;
  std::map<size_t, Clock::time_point> finished_at_;
};

// Delivers one job and waits for its result, which must come exactly once.
inline DeliveryResult deliver_one(Transport& t, DeliveryJob job) {
  auto results = std::make_shared<Results>();  // outlives a callback that comes too late
  t.deliver(std::move(job), [results](DeliveryResult r) { results->done(0)(std::move(r)); });
  EXPECT_TRUE(results->wait_for(1)) << "no result before the deadline";
  if (!results->has(0)) return DeliveryResult{Outcome::kAborted, 0, "test deadline"};
  EXPECT_EQ(results->calls(0), 1);
  return results->result(0);
}

}  // namespace skyring::delivery_tests
