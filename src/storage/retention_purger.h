// RetentionPurger: removes final timer records (succeeded, failed, cancelled) once their
// retention window has passed, at least as fast as timers complete.
//
// Operation
//   * A pass reads the purge index (e/, ordered by purge time) up to now, at most `batch`
//     entries, and deletes each record with its index entries (t/, s/, e/) in ONE write. A pass
//     that found a full batch is followed at once by the next; otherwise the thread sleeps
//     `period_ms`. So the rate is bounded by the disk, not by a fixed per-second quota.
//   * The write is not synced: a purge lost in a crash is found again after the restart (its
//     e/ entry is still there) and redone; nothing is acknowledged to anyone. The committer's
//     next synced write makes it durable anyway (one write-ahead log).
//   * A cursor remembers the last purged e/ key so the next pass does not walk the deletion
//     markers of earlier passes. New entries always sort after it (purge time = completion
//     time + retention > now); the cursor is dropped every `rescan_ms` anyway, which catches
//     entries written under a clock that stepped back.
//   * lag: how far past its purge time the oldest record still present was at the last pass
//     (0 when the purge is caught up): the `skyring_retention_purge_lag_seconds` gauge.
//
// Concurrency
//   One thread of its own; it writes to the Kv beside the GroupCommitter. That is safe because
//   a final record never changes again until it is purged: PUT and DELETE answer 404 for it, a
//   create with its id finds it, and generated ids are never reused. So no other write touches
//   the keys a pass deletes, and an id becomes free only once its deletion is visible.
//
// Limitations
//   A failed pass (read or write error) is logged (at most once a minute) and counted, and the
//   next pass tries again after `period_ms`; a write error that breaks the storage also stops
//   the committer, which is the node's fail-stop path.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "base/clock.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/result.h"
#include "storage/timer_store.h"

namespace skyring {

struct PurgerOptions {
  size_t batch = 10'000;       // records deleted per write
  int64_t period_ms = 500;     // sleep when caught up
  int64_t rescan_ms = 60'000;  // drop the cursor this often
  // Called on the purger's thread when it has caught up after purging `n` records (the
  // cluster's "purge" node event). Must not block.
  std::function<void(size_t n)> on_caught_up;
};

struct PurgerProbe {
  Counter* purged = nullptr;
  Counter* errors = nullptr;
  Gauge* lag_ms = nullptr;
  static PurgerProbe make(Registry& r);
};

class RetentionPurger {
 public:
  RetentionPurger(TimerStore& store, const Clock& clock, PurgerOptions options,
                  PurgerProbe probe = {});
  ~RetentionPurger();

  // Starts the thread. stop() ends it (idempotent; the destructor calls it).
  void start();
  void stop();

  // One pass now, on the caller's thread (tests; the thread calls the same). Returns the
  // records purged. Not to be called while the thread runs.
  Result<size_t> run_once();
  int64_t lag_us() const { return lag_us_.load(std::memory_order_relaxed); }

 private:
  void run();
  void set_lag(int64_t us);

  TimerStore& store_;
  const Clock& clock_;
  const PurgerOptions options_;
  PurgerProbe probe_;
  std::optional<TimerStore::Expired> cursor_;
  int64_t cursor_since_us_ = 0;  // monotonic
  log::Limiter error_log_{60'000'000};
  std::atomic<int64_t> lag_us_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace skyring
