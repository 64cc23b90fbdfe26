// IoLoop: the node's main thread. One Asio io_context runs the HTTP server, the engine, its
// wake-up timer, periodic housekeeping and signal handling. It is the engine's Executor and
// Wakeup, so no one outside this module sees Asio.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "base/clock.h"
#include "base/executor.h"
#include "engine/timer_engine.h"

namespace skyring {

class IoLoop final : public Executor, public Wakeup {
 public:
  explicit IoLoop(const Clock& clock);
  ~IoLoop() override;

  void post(Task task) override;
  void wake_at(int64_t due_us) override;

  // What wake_at() eventually calls (the engine's tick).
  void set_on_wake(std::function<void()> fn);
  // Calls fn every period_ms until stop().
  void every(int64_t period_ms, std::function<void()> fn);
  // Calls fn(signal) on SIGINT or SIGTERM.
  void on_shutdown_signal(std::function<void(int)> fn);

  // Runs until stop(); returns immediately if already stopped.
  void run();
  // Runs ready handlers until fn() is true or timeout_ms passed; true if fn() became true.
  bool run_until(const std::function<bool()>& fn, int64_t timeout_ms);
  void stop();

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring
