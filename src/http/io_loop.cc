#include "http/io_loop.h"

#include <chrono>

#include "http/io_loop_impl.h"

namespace skyring {

namespace asio = boost::asio;

IoLoop::IoLoop(const Clock& clock) : impl_(std::make_unique<Impl>(clock)) {
  impl_->work = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
      impl_->io.get_executor());
}

IoLoop::~IoLoop() = default;

void IoLoop::post(Task task) {
  asio::post(impl_->io, std::move(task));
}

void IoLoop::wake_at(int64_t due_us) {
  int64_t delay = due_us - impl_->clock.now_us();
  if (delay < 0) delay = 0;
  impl_->wake.expires_after(std::chrono::microseconds(delay));
  impl_->wake.async_wait([this](const boost::system::error_code& ec) {
    if (!ec && impl_->on_wake) impl_->on_wake();
  });
}

void IoLoop::set_on_wake(std::function<void()> fn) {
  impl_->on_wake = std::move(fn);
}

void IoLoop::every(int64_t period_ms, std::function<void()> fn) {
  impl_->periodic.push_back(std::make_unique<Periodic>(impl_->io, period_ms, std::move(fn)));
  impl_->periodic.back()->arm();
}

void IoLoop::on_shutdown_signal(std::function<void(int)> fn) {
  impl_->signals.add(SIGINT);
  impl_->signals.add(SIGTERM);
  impl_->signals.async_wait([fn = std::move(fn)](const boost::system::error_code& ec, int sig) {
    if (!ec) fn(sig);
  });
}

void IoLoop::run() {
  impl_->io.run();
}

bool IoLoop::run_until(const std::function<bool()>& fn, int64_t timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  if (impl_->io.stopped()) impl_->io.restart();
  while (!fn()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    impl_->io.run_one_for(std::chrono::milliseconds(10));
    if (impl_->io.stopped()) impl_->io.restart();
  }
  return true;
}

void IoLoop::stop() {
  impl_->wake.cancel();
  for (auto& p : impl_->periodic) p->timer.cancel();
  impl_->signals.cancel();
  impl_->io.stop();
}

}  // namespace skyring
