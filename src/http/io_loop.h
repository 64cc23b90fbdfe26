// IoLoop: the node's main thread. One Asio io_context runs the HTTP server, the engine, its
// wake-up timer, periodic housekeeping and signal handling. It is the engine's Executor and
// Wakeup, so no one outside this module sees Asio.
//
// Wake-ups follow the wall clock
//   Due times are wall-clock (Clock::now_us) but Asio sleeps on the steady clock, so a due
//   time is never turned into one long sleep: each sleep lasts at most max_sleep_ms, after
//   which the loop reads the Clock again and calls on_wake once the due time has passed. A
//   wall clock stepped forward (NTP, an operator) therefore makes a timer at most
//   max_sleep_ms late. On Linux a timerfd with TFD_TIMER_CANCEL_ON_SET also reports every
//   step of CLOCK_REALTIME at once, and on_wake runs right away. If the timerfd cannot be set
//   up, that is logged once and the bounded sleep alone keeps timers on time.
//
// The on_wake contract
//   on_wake is called at or after the due time given to wake_at() as read from the Clock, and
//   possibly early (after a clock step, or spuriously): the callee compares due times with the
//   Clock itself and re-arms with wake_at() (TimerEngine::tick does both, and never fires a
//   timer early). The IoLoop never says what is due; it only says "look now".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "base/clock.h"
#include "base/executor.h"
#include "engine/timer_engine.h"

namespace boost::asio {
class io_context;
}

namespace skyring {

struct IoLoopOptions {
  // Longest single sleep before the Clock is read again (docs/architecture.md, Bounds).
  int64_t max_sleep_ms = 1000;
  // Linux: watch CLOCK_REALTIME for steps with a timerfd.
  bool watch_clock_steps = true;
};

class IoLoop final : public Executor, public Wakeup {
 public:
  explicit IoLoop(const Clock& clock, IoLoopOptions options = {});
  ~IoLoop() override;

  void post(Task task) override;
  // Replaces the previous due time (one wake-up at a time, like the engine needs).
  void wake_at(int64_t due_us) override;

  // What wake_at() eventually calls (the engine's tick); see "The on_wake contract" above.
  void set_on_wake(std::function<void()> fn);
  // Calls fn every period_ms until stop().
  void every(int64_t period_ms, std::function<void()> fn);
  // Calls fn(signal) on SIGINT or SIGTERM.
  void on_shutdown_signal(std::function<void(int)> fn);

  // Runs until stop(); returns immediately if already stopped. stop() only ends run(): the
  // wake-up and periodic calls keep working in a later run_until().
  void run();
  // Runs ready handlers until fn() is true or timeout_ms passed; true if fn() became true.
  bool run_until(const std::function<bool()>& fn, int64_t timeout_ms);
  void stop();

  // For Asio-based clients that run on this loop's thread (cluster::PeerClient).
  boost::asio::io_context& io_context();

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring
