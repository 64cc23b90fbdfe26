// Private to the http module: the Asio objects behind IoLoop.
#pragma once

#include <boost/asio.hpp>

#include "http/io_loop.h"

namespace skyring {

struct Periodic {
  Periodic(boost::asio::io_context& io, int64_t ms, std::function<void()> f)
      : timer(io), period_ms(ms), fn(std::move(f)) {}
  void arm() {
    timer.expires_after(std::chrono::milliseconds(period_ms));
    timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      fn();
      arm();
    });
  }
  boost::asio::steady_timer timer;
  int64_t period_ms;
  std::function<void()> fn;
};

// Reports steps of the wall clock (Linux timerfd; io_loop.cc).
class ClockStepWatch;

struct IoLoop::Impl {
  Impl(const Clock& c, IoLoopOptions o);
  ~Impl();
  // Sleeps until due_us or for max_sleep_ms, whichever is sooner, then calls on_wake if
  // due_us has passed by the Clock, else sleeps again.
  void sleep();

  const Clock& clock;
  const IoLoopOptions options;
  boost::asio::io_context io{1};
  boost::asio::steady_timer wake;
  boost::asio::signal_set signals;
  std::function<void()> on_wake;
  int64_t due_us = INT64_MAX;
  uint64_t sleeps_ended = 0;  // bounded sleeps that ran out (tests wait on it)
  std::vector<std::unique_ptr<Periodic>> periodic;
  std::unique_ptr<ClockStepWatch> clock_watch;  // null: not watching (off, or unavailable)
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
};

}  // namespace skyring
