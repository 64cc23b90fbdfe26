#include "storage/group_committer.h"

#include <algorithm>
#include <memory>

#include "base/clock.h"
#include "base/log.h"

namespace skyring {

GroupCommitter::GroupCommitter(Kv& kv, Executor& completions, CommitterOptions options,
                               CommitterProbe probe)
    : kv_(kv), completions_(completions), options_(options), probe_(probe) {
  thread_ = std::thread([this] { run(); });
}

GroupCommitter::~GroupCommitter() {
  stop();
}

Result<void> GroupCommitter::submit(KvBatch batch, CommitDone done) {
  size_t n = batch.size() == 0 ? 1 : batch.size();
  {
    std::lock_guard lock(mu_);
    if (failed_) return fail(Errc::kUnavailable, "storage failed earlier; restart the node");
    if (stopping_) return fail(Errc::kUnavailable, "storage is shutting down");
    if (queued_ops_ + n > options_.max_queue_ops)
      return fail(Errc::kOverloaded, "storage write queue is full");
    queued_ops_ += n;
    queue_.push_back(Item{std::move(batch), std::move(done)});
  }
  cv_.notify_one();
  return {};
}

void GroupCommitter::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void GroupCommitter::run() {
  if (!set_up_this_thread("sky-commit", options_.thread_role).role_applied)
    log::info(
        "storage: the committer thread keeps the default scheduling policy "
        "(SCHED_BATCH was refused)");
  std::vector<Item> group;
  KvBatch merged;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // stopping and drained
      // Take a prefix of the queue bounded by max_group_ops (always at least one item).
      size_t ops = 0, take = 0;
      while (take < queue_.size()) {
        size_t n = queue_[take].batch.size() == 0 ? 1 : queue_[take].batch.size();
        if (take > 0 && ops + n > options_.max_group_ops) break;
        ops += n;
        ++take;
      }
      if (take == queue_.size()) {
        group.swap(queue_);
      } else {
        group.assign(std::make_move_iterator(queue_.begin()),
                     std::make_move_iterator(queue_.begin() + static_cast<ptrdiff_t>(take)));
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(take));
      }
      queued_ops_ -= ops;
    }
    merged.clear();
    for (Item& it : group) {
      for (KvOp& op : it.batch) merged.push_back(std::move(op));
    }
    // Key order makes RocksDB's memtable inserts cheaper (each skip-list search starts near the
    // last one). Stable, so operations on one key keep their order; others commute.
    if (merged.size() > 1) {
      std::stable_sort(merged.begin(), merged.end(),
                       [](const KvOp& a, const KvOp& b) { return a.key < b.key; });
    }
    Result<void> r;
    bool already_failed;
    {
      std::lock_guard lock(mu_);
      already_failed = failed_;
    }
    if (already_failed) {
      // Everything queued behind a failed write fails too: nothing after it is acknowledged.
      r = fail(Errc::kUnavailable, "storage failed earlier; restart the node");
    } else if (!merged.empty()) {
      int64_t start = monotonic_us();
      r = kv_.write(merged, options_.sync);
      if (probe_.commit_seconds) probe_.commit_seconds->observe((monotonic_us() - start) / 1e6);
    }
    if (probe_.group_size) probe_.group_size->observe(static_cast<double>(merged.size()));
    if (!r && !already_failed) {
      log::error("storage write failed, refusing further writes: {}", r.error().message);
      std::lock_guard lock(mu_);
      failed_ = true;
    }
    auto dones = std::make_shared<std::vector<CommitDone>>();
    dones->reserve(group.size());
    for (Item& it : group) dones->push_back(std::move(it.done));
    group.clear();
    completions_.post([dones, r] {
      for (CommitDone& d : *dones) d(r);
    });
  }
}

struct TurnCommitter::State : std::enable_shared_from_this<TurnCommitter::State> {
  State(Committer& n, Executor& x, size_t m)
      : next(n), executor(x), max_ops(std::max<size_t>(1, m)) {}

  void flush() {
    flush_posted = false;
    if (dones.empty()) return;
    auto group = std::make_shared<std::vector<CommitDone>>(std::move(dones));
    dones.clear();
    KvBatch batch = std::move(ops);
    ops.clear();
    auto done_all = [group](const Result<void>& r) {
      for (CommitDone& d : *group) {
        if (d) d(r);
      }
    };
    if (auto s = next.submit(std::move(batch), done_all); !s) {
      // The engine admits no more changes than the committer's queue holds (the node sizes
      // it): a full queue is a sizing bug, as it was before submits were gathered.
      SKYRING_ASSERT(s.error().code != Errc::kOverloaded,
                     "committer queue is smaller than the engine's admission bound");
      // Completions never run on a submitter's stack: the error too comes from the executor.
      executor.post([done_all, err = s.error()] { done_all(tl::unexpected(err)); });
    }
  }

  Committer& next;
  Executor& executor;
  const size_t max_ops;
  KvBatch ops;
  std::vector<CommitDone> dones;
  bool flush_posted = false;
};

TurnCommitter::TurnCommitter(Committer& next, Executor& executor, size_t max_ops)
    : state_(std::make_shared<State>(next, executor, max_ops)) {}

TurnCommitter::~TurnCommitter() {
  state_->flush();
}

Result<void> TurnCommitter::submit(KvBatch batch, CommitDone done) {
  State& s = *state_;
  if (s.ops.empty()) {
    s.ops = std::move(batch);
  } else {
    s.ops.insert(s.ops.end(), std::make_move_iterator(batch.begin()),
                 std::make_move_iterator(batch.end()));
  }
  s.dones.push_back(std::move(done));
  if (s.ops.size() >= s.max_ops) {
    s.flush();
  } else if (!s.flush_posted) {
    s.flush_posted = true;
    s.executor.post([weak = std::weak_ptr<State>(state_)] {
      if (auto st = weak.lock()) st->flush();
    });
  }
  return {};
}

void TurnCommitter::flush() {
  state_->flush();
}

}  // namespace skyring
