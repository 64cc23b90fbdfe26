#include "storage/retention_purger.h"

#include <algorithm>

#include "base/log.h"
#include "base/thread.h"

namespace skyring {
PurgerProbe PurgerProbe::make(Registry& r) {
  PurgerProbe p;
  p.purged = &r.counter("skyring_timers_purged_total", "Final records purged after retention");
  p.errors = &r.counter("skyring_retention_purge_errors_total",
                        "Retention purge passes that failed (retried)");
  p.lag_ms = &r.gauge("skyring_retention_purge_lag_milliseconds",
                      "How far past its purge time the oldest unpurged final record is");
  return p;
}

RetentionPurger::RetentionPurger(TimerStore& store, const Clock& clock, PurgerOptions options,
                                 PurgerProbe probe)
    : store_(store), clock_(clock), options_(options), probe_(probe) {
  SKYRING_ASSERT(options_.batch > 0, "purge batch must be positive");
}

RetentionPurger::~RetentionPurger() {
  stop();
}

void RetentionPurger::start() {
  SKYRING_ASSERT(!thread_.joinable(), "purger started twice");
  thread_ = std::thread([this] {
    set_up_this_thread("sky-purge");
    run();
  });
}

void RetentionPurger::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Result<size_t> RetentionPurger::run_once() {
  int64_t now = clock_.now_us();
  int64_t mono = monotonic_us();
  if (cursor_ && mono - cursor_since_us_ >= options_.rescan_ms * 1000) cursor_.reset();
  auto expired = store_.expired(now, options_.batch, cursor_ ? &*cursor_ : nullptr);
  if (!expired) return tl::unexpected(expired.error());
  if (expired->empty()) {
    // Caught up: only a rescan from the start can still find anything (a stepped clock).
    set_lag(0);
    return size_t{0};
  }
  set_lag(std::max<int64_t>(0, now - expired->front().purge_at_us));
  KvBatch b;
  b.reserve(expired->size() * 3);
  for (const auto& e : *expired) TimerStore::purge(b, e.id, e.state, e.purge_at_us);
  if (auto w = store_.write_now(b, /*sync=*/false); !w) return tl::unexpected(w.error());
  if (!cursor_) cursor_since_us_ = mono;
  cursor_ = expired->back();
  if (probe_.purged) probe_.purged->inc(expired->size());
  if (expired->size() < options_.batch) set_lag(0);  // everything expired is gone
  return expired->size();
}

void RetentionPurger::set_lag(int64_t us) {
  lag_us_.store(us, std::memory_order_relaxed);
  if (probe_.lag_ms) probe_.lag_ms->set(us / 1000);
}

void RetentionPurger::run() {
  size_t since_caught_up = 0;
  for (;;) {
    auto n = run_once();
    if (n) since_caught_up += *n;
    if (n && *n < options_.batch && since_caught_up > 0) {
      if (options_.on_caught_up) options_.on_caught_up(since_caught_up);
      since_caught_up = 0;
    }
    if (!n) {
      if (probe_.errors) probe_.errors->inc();
      cursor_.reset();
      if (uint64_t dropped = 0; error_log_.allow(&dropped)) {
        log::warn("retention purge failed (will retry): {}{}", n.error().message,
                  log::Limiter::note(dropped));
      }
    }
    std::unique_lock lock(mu_);
    if (stopping_) return;
    if (n && *n == options_.batch) continue;  // behind: the next batch at once
    cv_.wait_for(lock, std::chrono::milliseconds(options_.period_ms), [&] { return stopping_; });
    if (stopping_) return;
  }
}

}  // namespace skyring
