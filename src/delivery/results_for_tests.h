// Test helpers shared by the transport tests: a poll with a deadline, a recorder of `done`
// callbacks by job index (base/callbacks_for_tests.h) and one-job delivery.
#pragma once

#include <chrono>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "base/callbacks_for_tests.h"
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

// Callbacks by job index; `calls` counts every call to prove exactly-once.
class Results : public CallbackRecorder<DeliveryResult> {
 public:
  Results() : CallbackRecorder<DeliveryResult>(kResultsDeadline) {}
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
