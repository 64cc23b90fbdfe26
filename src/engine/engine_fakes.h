// Deterministic stand-ins for the engine's collaborators: a manual executor, a recording
// wake-up, a committer that holds writes until told, and a transport that holds attempts
// until told. Used by the engine tests and the engine micro-benchmark.
#pragma once

#include <algorithm>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "base/manual_executor.h"
#include "delivery/transport.h"
#include "engine/timer_engine.h"
#include "storage/group_committer.h"
#include "storage/kv.h"

namespace skyring::testing {

using skyring::ManualExecutor;

class RecordingWakeup final : public Wakeup {
 public:
  void wake_at(int64_t due_us) override { last = due_us; }
  int64_t last = -1;
};

// Holds each submitted batch until complete_all(); then applies it to the Kv and posts the
// completions, like GroupCommitter does, but only when the test says so.
class HeldCommitter final : public Committer {
 public:
  HeldCommitter(Kv& kv, Executor& ex) : kv_(kv), ex_(ex) {}
  Result<void> submit(KvBatch batch, CommitDone done) override {
    size_t n = std::max<size_t>(batch.size(), 1);
    if (overloaded || held_ops_ + n > max_ops) return fail(Errc::kOverloaded, "full");
    held_ops_ += n;
    held_.push_back({std::move(batch), std::move(done)});
    return {};
  }
  size_t held() const { return held_.size(); }
  // Queue capacity in operations, like GroupCommitter's max_queue_ops.
  size_t max_ops = SIZE_MAX;
  // Applies every held batch (or fails them all when fail is true).
  void complete_all(bool fail_them = false) {
    auto items = std::move(held_);
    held_.clear();
    held_ops_ = 0;
    for (auto& it : items) {
      Result<void> r;
      if (fail_them) {
        r = fail(Errc::kIo, "disk on fire");
      } else {
        r = kv_.write(it.batch, true);
      }
      ex_.post([done = std::move(it.done), r] { done(r); });
    }
  }
  // Throws away held batches without completing them: what a crash does.
  void drop_all() {
    held_.clear();
    held_ops_ = 0;
  }
  bool overloaded = false;

 private:
  struct Item {
    KvBatch batch;
    CommitDone done;
  };
  Kv& kv_;
  Executor& ex_;
  std::vector<Item> held_;
  size_t held_ops_ = 0;
};

// Passes everything to another Kv, failing the next `fail_record_reads` reads of records (t/
// keys) with an I/O error, and counting the entries scans visit.
class FlakyKv final : public Kv {
 public:
  explicit FlakyKv(Kv& inner) : inner_(inner) {}
  Result<std::optional<std::string>> get(std::string_view key) override {
    if (fail_record_reads > 0 && key.starts_with("t/")) {
      --fail_record_reads;
      return fail(Errc::kIo, "injected read error");
    }
    return inner_.get(key);
  }
  Result<void> write(const KvBatch& batch, bool sync) override { return inner_.write(batch, sync); }
  Result<void> scan(std::string_view start, std::string_view end, const KvVisitor& fn) override {
    return inner_.scan(start, end, [&](std::string_view k, std::string_view v) {
      ++scanned;
      return fn(k, v);
    });
  }
  int fail_record_reads = 0;
  size_t scanned = 0;

 private:
  Kv& inner_;
};

// Records every attempt; the test decides each outcome.
class HeldTransport final : public Transport {
 public:
  struct Attempt {
    DeliveryJob job;
    DeliveryDone done;
  };
  std::string_view name() const override { return "http"; }
  Result<void> validate(std::string_view, std::string_view) const override { return {}; }
  std::string destination(std::string_view uri) const override {
    auto slash = uri.find('/', uri.find("//") + 2);
    return std::string(uri.substr(0, slash));
  }
  void deliver(DeliveryJob job, DeliveryDone done) override {
    attempts.push_back({std::move(job), std::move(done)});
  }
  void stop() override {}
  // Completes the attempt at index i (the attempt stays in the list, done is cleared).
  void complete(size_t i, Outcome o, int status = 200, std::string detail = {}) {
    auto d = std::move(attempts[i].done);
    attempts[i].done = nullptr;
    d(DeliveryResult{o, status, std::move(detail)});
  }
  size_t open() const {
    size_t n = 0;
    for (const auto& a : attempts) n += a.done != nullptr;
    return n;
  }
  std::vector<Attempt> attempts;
};

}  // namespace skyring::testing
