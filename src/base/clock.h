// Time is read through Clock so the engine can be driven by a manual clock in tests.
// All times are microseconds: wall time since the Unix epoch for due times (they must survive
// restarts), monotonic time only for measuring intervals.
#pragma once

#include <atomic>
#include <cstdint>

namespace skyring {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall clock, microseconds since the Unix epoch.
  virtual int64_t now_us() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t now_us() const override;
};

// Tests move time explicitly; nothing else does.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_us = 1'700'000'000'000'000) : now_(start_us) {}
  int64_t now_us() const override { return now_.load(std::memory_order_relaxed); }
  void advance_us(int64_t d) { now_.fetch_add(d, std::memory_order_relaxed); }
  void advance_ms(int64_t d) { advance_us(d * 1000); }
  void set_us(int64_t t) { now_.store(t, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> now_;
};

// Monotonic microseconds for latency measurement.
int64_t monotonic_us();

}  // namespace skyring
