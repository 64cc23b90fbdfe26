#include "http/io_loop.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#ifdef __linux__
#include <sys/timerfd.h>
#include <unistd.h>
#endif

#include "base/log.h"
#include "http/io_loop_impl.h"

namespace skyring {

namespace asio = boost::asio;

#ifdef __linux__
// A timerfd on CLOCK_REALTIME armed far in the future with TFD_TIMER_CANCEL_ON_SET: a read
// fails with ECANCELED as soon as someone sets the clock. Each report re-arms the timer (which
// also clears the cancelled state). Any failure ends the watch with one log line; the bounded
// sleep still keeps timers at most max_sleep_ms late.
class ClockStepWatch {
 public:
  // Null (after one log line) when the timerfd cannot be set up.
  static std::unique_ptr<ClockStepWatch> open(asio::io_context& io, std::function<void()> on_step) {
    int fd = ::timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) {
      log::warn(
          "cannot watch for wall clock steps (timerfd_create: {}); timers may be up to "
          "a second late after a step",
          std::strerror(errno));
      return nullptr;
    }
    auto w = std::unique_ptr<ClockStepWatch>(new ClockStepWatch(io, fd, std::move(on_step)));
    if (!w->arm()) return nullptr;
    w->read();
    return w;
  }

  // The pending read completes (operation_aborted) and is ignored.
  void stop() {
    stopped_ = true;
    boost::system::error_code ignored;
    fd_.close(ignored);
  }

 private:
  ClockStepWatch(asio::io_context& io, int fd, std::function<void()> on_step)
      : fd_(io, fd), on_step_(std::move(on_step)) {}

  bool arm() {
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    itimerspec spec{};
    spec.it_value.tv_sec = now.tv_sec + kFarSeconds;
    if (::timerfd_settime(fd_.native_handle(), TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &spec,
                          nullptr) != 0) {
      give_up("timerfd_settime", std::strerror(errno));
      return false;
    }
    return true;
  }

  void read() {
    fd_.async_read_some(asio::buffer(&expirations_, sizeof(expirations_)),
                        [this](const boost::system::error_code& ec, size_t) {
                          if (stopped_) return;
                          // ECANCELED (Asio's operation_aborted): the clock was set. Success:
                          // the far-future expiry came, which only a clock step can do. Both
                          // mean "look at the clock now".
                          if (ec && ec != asio::error::operation_aborted) {
                            give_up("read", ec.message());
                            return;
                          }
                          if (!arm()) return;
                          on_step_();
                          read();
                        });
  }

  void give_up(const char* what, const std::string& why) {
    log::warn(
        "stopped watching for wall clock steps ({}: {}); timers may be up to a second "
        "late after a step",
        what, why);
    stop();
  }

  static constexpr time_t kFarSeconds = 10LL * 366 * 24 * 3600;
  asio::posix::stream_descriptor fd_;
  uint64_t expirations_ = 0;
  std::function<void()> on_step_;
  bool stopped_ = false;
};
#else
class ClockStepWatch {
 public:
  static std::unique_ptr<ClockStepWatch> open(asio::io_context&, std::function<void()>) {
    return nullptr;  // the bounded sleep alone follows the wall clock
  }
  void stop() {}
};
#endif

IoLoop::Impl::Impl(const Clock& c, IoLoopOptions o) : clock(c), options(o), wake(io), signals(io) {}

IoLoop::Impl::~Impl() = default;

void IoLoop::Impl::sleep() {
  int64_t now = clock.now_us();
  int64_t max_us = std::max<int64_t>(options.max_sleep_ms, 1) * 1000;
  int64_t delay = due_us <= now ? 0 : std::min(due_us - now, max_us);
  wake.expires_after(std::chrono::microseconds(delay));
  wake.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;  // replaced by a newer wake_at(), or stopped
    ++sleeps_ended;
    if (clock.now_us() < due_us) return sleep();
    due_us = INT64_MAX;
    if (on_wake) on_wake();  // usually calls wake_at() again
  });
}

IoLoop::IoLoop(const Clock& clock, IoLoopOptions options)
    : impl_(std::make_unique<Impl>(clock, options)) {
  impl_->work = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
      impl_->io.get_executor());
  if (options.watch_clock_steps) {
    impl_->clock_watch = ClockStepWatch::open(impl_->io, [impl = impl_.get()] {
      if (impl->on_wake) impl->on_wake();
    });
  }
}

IoLoop::~IoLoop() {
  impl_->wake.cancel();
  for (auto& p : impl_->periodic) p->timer.cancel();
  if (impl_->clock_watch) impl_->clock_watch->stop();
}

asio::io_context& IoLoop::io_context() {
  return impl_->io;
}

void IoLoop::post(Task task) {
  asio::post(impl_->io, std::move(task));
}

void IoLoop::wake_at(int64_t due_us) {
  impl_->due_us = due_us;
  impl_->sleep();
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

// run() returns; the wake-up, periodic calls and the clock watch stay armed, so run_until()
// after it (a graceful stop: the cluster handoff, draining deliveries) still fires timers and
// runs housekeeping. The signal handlers go: the stop is under way.
void IoLoop::stop() {
  impl_->signals.cancel();
  impl_->io.stop();
}

}  // namespace skyring
