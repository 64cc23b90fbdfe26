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

struct IoLoop::Impl {
  explicit Impl(const Clock& c) : clock(c), wake(io), signals(io) {}
  const Clock& clock;
  boost::asio::io_context io{1};
  boost::asio::steady_timer wake;
  boost::asio::signal_set signals;
  std::function<void()> on_wake;
  std::vector<std::unique_ptr<Periodic>> periodic;
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
};

}  // namespace skyring
