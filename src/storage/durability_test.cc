// Power-cut tests: RocksKv over FaultInjection (fault_fs.h), which drops every byte and every
// new file name not synced when the power goes. `kill -9` keeps the page cache, so only this
// can tell a synced write from an unsynced one. The GroupCommitter and TimerStore tests fail if
// RocksKv::write stops syncing or if the committer acknowledges a group before its write
// returned (docs/storage-format.md, "Durability").
#include <gtest/gtest.h>

#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/executor.h"
#include "model/timer.h"
#include "storage/fault_fs.h"
#include "storage/group_committer.h"
#include "storage/kv.h"
#include "storage/temp_dir_for_tests.h"
#include "storage/timer_store.h"

namespace skyring {
namespace {

using namespace std::chrono_literals;

using testing::TempDir;

KvOp put(std::string k, std::string v) {
  return KvOp{KvOp::Kind::kPut, std::move(k), std::move(v)};
}

// Over the fault layer when `fault` is set, else over the real filesystem.
std::unique_ptr<Kv> open_kv(const std::string& dir, std::shared_ptr<FaultInjection> fault,
                            size_t write_buffer_mb = 64) {
  RocksOptions o;
  o.block_cache_mb = 8;
  o.write_buffer_mb = write_buffer_mb;
  o.fault = std::move(fault);
  auto r = open_rocks_kv(dir, o);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r ? std::move(*r) : nullptr;
}

std::optional<std::string> get(Kv& kv, std::string_view key) {
  auto r = kv.get(key);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r ? *r : std::nullopt;
}

std::map<std::string, std::string> scan_all(Kv& kv, std::string_view start, std::string_view end) {
  std::map<std::string, std::string> out;
  auto r = kv.scan(start, end, [&](std::string_view k, std::string_view v) {
    out.emplace(k, v);
    return true;
  });
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return out;
}

// The crash: cuts the power if the test has not, drops the Kv (its flush and close fail), and
// rewrites the directory to what the disk kept.
FaultInjection::Loss crash(std::unique_ptr<Kv>& kv, FaultInjection& fault) {
  fault.cut_power();
  kv.reset();
  auto loss = fault.restore_power();
  EXPECT_TRUE(loss.has_value()) << (loss ? "" : loss.error().message);
  return loss ? *loss : FaultInjection::Loss{};
}

std::string value_of(int i) {
  return fmt::format("value-{}-{}", i, std::string(static_cast<size_t>(i % 7) * 10, 'x'));
}

// ---------------------------------------------------------------------------------------------
// Kv: a synced write survives the cut; an unsynced one does not (which shows the cut is real).

TEST(Durability, SyncedWritesSurviveAPowerCut) {
  constexpr int kWrites = 50;
  TempDir dir;
  auto fault = std::make_shared<FaultInjection>();
  auto kv = open_kv(dir.path(), fault);
  ASSERT_NE(kv, nullptr);
  for (int i = 0; i < kWrites; ++i) {
    auto r = kv->write({put(fmt::format("k{:03}", i), value_of(i))}, /*sync=*/true);
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }
  EXPECT_GE(fault->syncs(), static_cast<uint64_t>(kWrites));
  crash(kv, *fault);

  kv = open_kv(dir.path(), nullptr);
  ASSERT_NE(kv, nullptr);
  for (int i = 0; i < kWrites; ++i) EXPECT_EQ(get(*kv, fmt::format("k{:03}", i)), value_of(i));
}

TEST(Durability, UnsyncedWritesAreLostAtAPowerCut) {
  constexpr int kWrites = 50;
  TempDir dir;
  auto fault = std::make_shared<FaultInjection>();
  auto kv = open_kv(dir.path(), fault);
  ASSERT_NE(kv, nullptr);
  for (int i = 0; i < kWrites; ++i) {
    auto r = kv->write({put(fmt::format("k{:03}", i), value_of(i))}, /*sync=*/false);
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }
  EXPECT_EQ(get(*kv, "k049"), value_of(49));  // the live DB reads its unsynced writes
  // Without the cut, the destructor's flush would make all of them durable: it must not run.
  FaultInjection::Loss loss = crash(kv, *fault);
  EXPECT_GT(loss.bytes_dropped, 0u);

  kv = open_kv(dir.path(), nullptr);
  ASSERT_NE(kv, nullptr);
  size_t survived = scan_all(*kv, "k", "l").size();
  EXPECT_LT(survived, static_cast<size_t>(kWrites)) << "the power cut lost nothing unsynced";
  EXPECT_EQ(get(*kv, "k049"), std::nullopt);
}

TEST(Durability, AWriteWhoseSyncIsCutFailsAndEveryEarlierOneSurvives) {
  constexpr int kWrites = 60;
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    std::mt19937_64 rng(seed);
    const uint64_t cut_at = 1 + rng() % 40;
    TempDir dir;
    auto fault = std::make_shared<FaultInjection>();
    auto kv = open_kv(dir.path(), fault);
    ASSERT_NE(kv, nullptr);
    // The first synced write of a WAL also fsyncs its directory; after this one, every sync is
    // a write's WAL sync, so the cut one always drops the write it belongs to.
    ASSERT_TRUE(kv->write({put("warm-up", "1")}, true).has_value());
    fault->cut_power_at_sync(cut_at);
    int acked = 0;
    while (acked < kWrites) {
      if (!kv->write({put(fmt::format("k{:03}", acked), value_of(acked))}, true)) break;
      ++acked;
    }
    ASSERT_TRUE(fault->power_is_cut());
    // Every acknowledged write needed a sync of its own before the cut one.
    EXPECT_LE(static_cast<uint64_t>(acked), cut_at - 1);
    EXPECT_FALSE(kv->write({put("after", "cut")}, true).has_value());
    crash(kv, *fault);

    kv = open_kv(dir.path(), nullptr);
    ASSERT_NE(kv, nullptr);
    for (int i = 0; i < acked; ++i) EXPECT_EQ(get(*kv, fmt::format("k{:03}", i)), value_of(i));
    // The model drops the write whose sync was cut (a real disk might have kept it).
    EXPECT_EQ(get(*kv, "warm-up"), "1");
    EXPECT_EQ(get(*kv, fmt::format("k{:03}", acked)), std::nullopt);
    EXPECT_EQ(get(*kv, "after"), std::nullopt);
  }
}

// Small memtables, so the rounds cross memtable flushes (table files, MANIFEST edits, new WAL
// files, directory fsyncs) and some cuts land inside one; recovery itself runs over the layer.
TEST(Durability, RepeatedCutsAcrossFlushesKeepEveryAcknowledgedWrite) {
  constexpr int kRounds = 4;
  constexpr int kMaxWrites = 100;
  constexpr int kKeys = 300;
  TempDir dir;
  auto fault = std::make_shared<FaultInjection>();
  std::mt19937_64 rng(7);
  std::map<std::string, std::string> acked;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(fmt::format("round {}", round));
    auto kv = open_kv(dir.path(), fault, /*write_buffer_mb=*/1);
    ASSERT_NE(kv, nullptr);
    EXPECT_EQ(scan_all(*kv, "k", "l"), acked);
    // Even rounds cut between two writes; odd rounds inside a sync, which may be a flush's.
    const int cut_after = 30 + static_cast<int>(rng() % 70);
    if (round % 2 == 1) fault->cut_power_at_sync(static_cast<uint64_t>(cut_after));
    for (int i = 0; i < kMaxWrites && !fault->power_is_cut(); ++i) {
      if (round % 2 == 0 && i == cut_after) {
        fault->cut_power();
        break;
      }
      KvBatch b;
      std::map<std::string, std::string> changes;
      for (int j = 0; j < 4; ++j) {
        std::string k = fmt::format("k{:04}", rng() % kKeys);
        std::string v = fmt::format("{}/{}/{}:{}", round, i, j, std::string(8000, 'a' + j));
        b.push_back(put(k, v));
        changes[k] = v;
      }
      if (!kv->write(b, true)) break;
      for (auto& [k, v] : changes) acked[k] = v;
    }
    crash(kv, *fault);
  }
  auto kv = open_kv(dir.path(), nullptr);
  ASSERT_NE(kv, nullptr);
  EXPECT_EQ(scan_all(*kv, "k", "l"), acked);
}

// Creating a DB and recovering one write several files (IDENTITY, MANIFEST, CURRENT through a
// rename over the old one, OPTIONS, a table file from the replayed WAL), each made durable by a
// file sync and a directory fsync. A cut at each of those syncs in turn must leave a directory
// that opens with every acknowledged write; along the way the cuts undo file names.
TEST(Durability, ACutAtAnySyncWhileOpeningLeavesADirectoryThatOpens) {
  constexpr int kKeys = 8;
  size_t names_undone = 0;
  for (bool existing : {false, true}) {
    bool opened_uncut = false;
    for (uint64_t cut_at = 1; cut_at <= 40 && !opened_uncut; ++cut_at) {
      SCOPED_TRACE(fmt::format("{} DB, cut at sync {}", existing ? "existing" : "new", cut_at));
      TempDir dir;
      auto fault = std::make_shared<FaultInjection>();
      if (existing) {
        auto kv = open_kv(dir.path(), fault);
        ASSERT_NE(kv, nullptr);
        for (int i = 0; i < kKeys; ++i) {
          auto r = kv->write({put(fmt::format("k{:03}", i), value_of(i))}, true);
          ASSERT_TRUE(r.has_value()) << r.error().message;
        }
        crash(kv, *fault);  // the writes stay in the WAL, for the next open to replay
      }
      fault->cut_power_at_sync(cut_at);
      RocksOptions o;
      o.block_cache_mb = 8;
      o.fault = fault;
      auto opened = open_rocks_kv(dir.path(), o);
      std::unique_ptr<Kv> kv = opened ? std::move(*opened) : nullptr;
      // An open may succeed although a sync was cut (RocksDB can do without its OPTIONS file).
      opened_uncut = !fault->power_is_cut();
      EXPECT_TRUE(opened.has_value() || !opened_uncut);
      FaultInjection::Loss loss = crash(kv, *fault);
      names_undone += loss.names_removed + loss.names_restored;

      kv = open_kv(dir.path(), nullptr);
      ASSERT_NE(kv, nullptr);
      if (existing) {
        for (int i = 0; i < kKeys; ++i) EXPECT_EQ(get(*kv, fmt::format("k{:03}", i)), value_of(i));
      }
    }
    EXPECT_TRUE(opened_uncut) << "every one of 40 syncs cut the open";
  }
  EXPECT_GT(names_undone, 0u);
}

// ---------------------------------------------------------------------------------------------
// GroupCommitter: an acknowledged batch is on disk.

// Runs each completion at once on the posting thread (the committer's).
class InlineExecutor final : public Executor {
 public:
  void post(Task task) override { task(); }
};

// One submitter's wait for its batch's completion.
class Outcome {
 public:
  void set(bool ok) {
    {
      std::lock_guard lock(mu_);
      ok_ = ok;
    }
    cv_.notify_all();
  }
  // False on failure; the limit is a safety net, never a condition of correctness.
  bool wait() {
    std::unique_lock lock(mu_);
    bool arrived = cv_.wait_for(lock, 60s, [&] { return ok_.has_value(); });
    EXPECT_TRUE(arrived) << "no completion within 60 s";
    bool ok = arrived && *ok_;
    ok_.reset();
    return ok;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<bool> ok_;
};

// Submitters wait for each completion before the next submit (closed loop), so every group
// holds at most kThreads batches and the load takes at least kThreads * kBatches / kThreads
// syncs: more than any cut_at below.
TEST(Durability, GroupCommitterAcknowledgesOnlyWhatIsOnDisk) {
  constexpr int kThreads = 4;
  constexpr int kBatches = 150;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    std::mt19937_64 rng(seed);
    const uint64_t cut_at = 1 + rng() % 100;
    TempDir dir;
    auto fault = std::make_shared<FaultInjection>();
    std::mutex acked_mu;
    std::set<std::string> acked;
    {
      auto kv = open_kv(dir.path(), fault);
      ASSERT_NE(kv, nullptr);
      // As in the Kv test above: from here on every sync is a WAL sync of one group.
      ASSERT_TRUE(kv->write({put("warm-up", "1")}, true).has_value());
      InlineExecutor completions;
      GroupCommitter committer(*kv, completions, CommitterOptions{});
      fault->cut_power_at_sync(cut_at);
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t, ops = 1 + static_cast<int>(rng() % 3)] {
          Outcome outcome;
          for (int i = 0; i < kBatches; ++i) {
            KvBatch b;
            std::vector<std::string> keys;
            for (int j = 0; j < ops; ++j) {
              keys.push_back(fmt::format("g/{}/{:03}/{}", t, i, j));
              b.push_back(put(keys.back(), value_of(i)));
            }
            auto r = committer.submit(std::move(b), [&, keys](Result<void> done) {
              if (done) {
                std::lock_guard lock(acked_mu);
                acked.insert(keys.begin(), keys.end());
              }
              outcome.set(done.has_value());
            });
            if (!r || !outcome.wait()) return;
          }
        });
      }
      for (auto& th : threads) th.join();
      committer.stop();
      // With syncs the cut always fires within the load. If it did not, no write synced: cut
      // now, and the check below shows what was acknowledged without being durable.
      EXPECT_TRUE(fault->power_is_cut()) << "no write reached sync number " << cut_at;
      crash(kv, *fault);
    }
    auto kv = open_kv(dir.path(), nullptr);
    ASSERT_NE(kv, nullptr);
    std::map<std::string, std::string> found = scan_all(*kv, "g/", "g0");
    size_t missing = 0, unacknowledged = 0;
    for (const std::string& k : acked) {
      if (!found.count(k) && ++missing <= 5) ADD_FAILURE() << "acknowledged but lost: " << k;
    }
    for (const auto& [k, v] : found) unacknowledged += acked.count(k) == 0 ? 1 : 0;
    EXPECT_EQ(missing, 0u) << "of " << acked.size() << " acknowledged keys";
    // The model drops the cut write and nothing later is written, so nothing unacknowledged
    // survives either: recovery sees exactly the acknowledged state.
    EXPECT_EQ(unacknowledged, 0u);
    EXPECT_FALSE(acked.empty() && cut_at > 1) << "nothing acknowledged before the cut";
  }
}

// ---------------------------------------------------------------------------------------------
// TimerStore through the committer: recovery's scan sees exactly the acknowledged timers.

TimerRecord waiting_record(const std::string& id, int64_t next_us) {
  TimerRecord r;
  r.id = id;
  r.state = State::kPending;
  r.created_us = 1000;
  r.due_us = next_us;
  r.next_us = next_us;
  r.callback = Callback{"http", "post", "http://x/hook", {}};
  r.data_kind = DataKind::kString;
  r.data = "payload of " + id;
  return r;
}

TEST(Durability, RecoveryScanSeesExactlyTheAcknowledgedTimers) {
  constexpr int kThreads = 3;
  constexpr int kTimers = 80;
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    std::mt19937_64 rng(seed);
    const uint64_t cut_at = 1 + rng() % 120;
    TempDir dir;
    auto fault = std::make_shared<FaultInjection>();
    enum class Acked { kWaiting, kFinal };
    std::mutex acked_mu;
    std::map<std::string, Acked> acked;
    {
      auto kv = open_kv(dir.path(), fault);
      ASSERT_NE(kv, nullptr);
      // Writes the format marker, synced: also the warm-up (every later sync is a WAL sync).
      auto opened = TimerStore(*kv).open();
      ASSERT_TRUE(opened.has_value()) << opened.error().message;
      InlineExecutor completions;
      GroupCommitter committer(*kv, completions, CommitterOptions{});
      fault->cut_power_at_sync(cut_at);
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          Outcome outcome;
          // Each timer is created, then (every other one) completed: two acknowledged steps.
          auto step = [&](KvBatch b, const std::string& id, Acked state) {
            auto r = committer.submit(std::move(b), [&, id, state](Result<void> done) {
              if (done) {
                std::lock_guard lock(acked_mu);
                acked[id] = state;
              }
              outcome.set(done.has_value());
            });
            return r && outcome.wait();
          };
          for (int i = 0; i < kTimers; ++i) {
            std::string id = fmt::format("timer-{}-{:03}", t, i);
            TimerRecord r = waiting_record(id, 10'000 + i);
            KvBatch b;
            TimerStore::put_waiting(b, r);
            if (!step(std::move(b), id, Acked::kWaiting)) return;
            if (i % 2 == 1) continue;
            r.state = State::kSucceeded;
            r.attempts = 1;
            r.completed_us = 20'000 + i;
            KvBatch f;
            TimerStore::put_final(f, r, /*purge_at_us=*/90'000 + i);
            if (!step(std::move(f), id, Acked::kFinal)) return;
          }
        });
      }
      for (auto& th : threads) th.join();
      committer.stop();
      EXPECT_TRUE(fault->power_is_cut()) << "no write reached sync number " << cut_at;
      crash(kv, *fault);
    }
    auto kv = open_kv(dir.path(), nullptr);
    ASSERT_NE(kv, nullptr);
    TimerStore store(*kv);
    auto opened = store.open();
    ASSERT_TRUE(opened.has_value()) << opened.error().message;
    std::set<std::string> expected_waiting, scanned;
    for (const auto& [id, state] : acked) {
      if (state == Acked::kWaiting) expected_waiting.insert(id);
    }
    auto scan = store.scan_waiting([&](const PendingEntry& e) {
      scanned.emplace(e.id);
      return true;
    });
    ASSERT_TRUE(scan.has_value()) << scan.error().message;
    EXPECT_EQ(scanned, expected_waiting);
    for (const auto& [id, state] : acked) {
      auto rec = store.get(id);
      ASSERT_TRUE(rec.has_value()) << rec.error().message;
      ASSERT_TRUE(rec->has_value()) << "acknowledged timer lost: " << id;
      EXPECT_EQ((*rec)->state, state == Acked::kFinal ? State::kSucceeded : State::kPending) << id;
    }
  }
}

}  // namespace
}  // namespace skyring
