#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/clock.h"
#include "base/executor.h"
#include "base/manual_executor.h"
#include "base/metrics.h"
#include "model/codec.h"
#include "storage/group_committer.h"
#include "storage/kv.h"
#include "storage/retention_purger.h"
#include "storage/temp_dir_for_tests.h"
#include "storage/timer_store.h"

namespace skyring {
namespace {

using namespace std::chrono_literals;

KvOp put(std::string k, std::string v) {
  return KvOp{KvOp::Kind::kPut, std::move(k), std::move(v)};
}
KvOp del(std::string k) {
  return KvOp{KvOp::Kind::kDelete, std::move(k), {}};
}

using testing::TempDir;

std::optional<std::string> get(Kv& kv, std::string_view key) {
  auto r = kv.get(key);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r ? *r : std::nullopt;
}

std::vector<std::pair<std::string, std::string>> scan_all(Kv& kv, std::string_view start,
                                                          std::string_view end) {
  std::vector<std::pair<std::string, std::string>> out;
  auto r = kv.scan(start, end, [&](std::string_view k, std::string_view v) {
    out.emplace_back(std::string(k), std::string(v));
    return true;
  });
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return out;
}

std::vector<std::string> keys(Kv& kv, std::string_view start, std::string_view end) {
  std::vector<std::string> out;
  for (auto& [k, v] : scan_all(kv, start, end)) out.push_back(k);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Kv: the same contract for both backends.

enum class Backend { kMemory, kRocks };

class KvTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { open(); }
  void TearDown() override { kv_.reset(); }

  void open() {
    kv_.reset();
    if (GetParam() == Backend::kMemory) {
      kv_ = make_memory_kv();
    } else {
      auto r = open_rocks_kv(dir_.path(), RocksOptions{8, 4});
      ASSERT_TRUE(r.has_value()) << r.error().message;
      kv_ = std::move(*r);
    }
  }
  void write(KvBatch b, bool sync = false) {
    auto r = kv_->write(b, sync);
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }

  TempDir dir_;
  std::unique_ptr<Kv> kv_;
};

TEST_P(KvTest, GetPutDelete) {
  EXPECT_EQ(get(*kv_, "a"), std::nullopt);
  write({put("a", "1")});
  EXPECT_EQ(get(*kv_, "a"), "1");
  write({put("a", "2")});
  EXPECT_EQ(get(*kv_, "a"), "2");
  write({del("a")});
  EXPECT_EQ(get(*kv_, "a"), std::nullopt);
  write({del("never-there")});
  EXPECT_EQ(get(*kv_, "never-there"), std::nullopt);
}

TEST_P(KvTest, EmptyAndBinaryValues) {
  write({put("empty", "")});
  EXPECT_EQ(get(*kv_, "empty"), std::string());  // present, not missing
  std::string key("k\0\xff", 3), value("\0\x01\xfe\xff", 4);
  write({put(key, value)});
  EXPECT_EQ(get(*kv_, key), value);
  EXPECT_EQ(get(*kv_, "k"), std::nullopt);
}

TEST_P(KvTest, BatchAppliesEveryOpInOrder) {
  write({put("a", "1"), put("b", "1"), put("c", "1")});
  write({put("d", "2"), del("a"), put("b", "2"), del("b"), del("c"), put("c", "3")});
  EXPECT_EQ(get(*kv_, "a"), std::nullopt);
  EXPECT_EQ(get(*kv_, "b"), std::nullopt);
  EXPECT_EQ(get(*kv_, "c"), "3");
  EXPECT_EQ(get(*kv_, "d"), "2");
  write({});  // an empty batch is fine
  EXPECT_EQ(keys(*kv_, "", "\xff").size(), 2u);
}

TEST_P(KvTest, ReadersNeverSeeHalfABatch) {
  write({put("x/a", "0"), put("x/b", "0")});
  std::atomic<bool> done{false};
  std::atomic<int> torn{0};
  std::thread reader([&] {
    while (!done.load()) {
      auto kv = scan_all(*kv_, "x/", "x0");
      if (kv.size() != 2 || kv[0].second != kv[1].second) ++torn;
    }
  });
  for (int i = 1; i <= 2000; ++i) {
    std::string v = std::to_string(i);
    write({put("x/a", v), put("x/b", v)});
  }
  done = true;
  reader.join();
  EXPECT_EQ(torn.load(), 0);
}

TEST_P(KvTest, ScanIsHalfOpenAndOrdered) {
  write({put("a", "A"), put("b/1", "1"), put("b/3", "3"), put("b/2", "2"), put("b/\xff", "ff"),
         put("b0", "b0"), put("c", "C")});
  using KV = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(scan_all(*kv_, "b/", "b0"),
            (KV{{"b/1", "1"}, {"b/2", "2"}, {"b/3", "3"}, {"b/\xff", "ff"}}));
  EXPECT_EQ(keys(*kv_, "b/2", "b/3"), (std::vector<std::string>{"b/2"}));  // start in, end out
  EXPECT_EQ(keys(*kv_, "b/10", "b/3"), (std::vector<std::string>{"b/2"}));
  EXPECT_EQ(keys(*kv_, "", "b"), (std::vector<std::string>{"a"}));
  EXPECT_EQ(keys(*kv_, "c", "\xff"), (std::vector<std::string>{"c"}));
  EXPECT_TRUE(keys(*kv_, "b/2", "b/2").empty());
  EXPECT_TRUE(keys(*kv_, "x", "z").empty());
  EXPECT_EQ(keys(*kv_, "", "\xff").size(), 7u);
}

TEST_P(KvTest, ScanManyKeysAndStopEarly) {
  KvBatch b;
  for (int i = 0; i < 3000; ++i) {
    char k[16];
    snprintf(k, sizeof k, "k/%05d", i);
    b.push_back(put(k, std::to_string(i)));
  }
  write(std::move(b));
  auto all = scan_all(*kv_, "k/", "k0");
  ASSERT_EQ(all.size(), 3000u);
  for (int i = 0; i < 3000; ++i) EXPECT_EQ(all[i].second, std::to_string(i));

  for (size_t stop_after : {size_t{1}, size_t{2}, size_t{1024}, size_t{1025}, size_t{2999}}) {
    size_t seen = 0;
    auto r = kv_->scan("k/", "k0", [&](std::string_view, std::string_view) {
      ++seen;
      return seen < stop_after;
    });
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(seen, stop_after);
  }
}

TEST_P(KvTest, ReopenKeepsSyncedData) {
  write({put("durable", "yes"), put("gone", "soon")}, true);
  write({del("gone")}, true);
  open();
  if (GetParam() == Backend::kMemory) {
    EXPECT_EQ(get(*kv_, "durable"), std::nullopt);  // survives nothing
    return;
  }
  EXPECT_EQ(get(*kv_, "durable"), "yes");
  EXPECT_EQ(get(*kv_, "gone"), std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Backends, KvTest, ::testing::Values(Backend::kMemory, Backend::kRocks),
                         [](const auto& info) {
                           return info.param == Backend::kMemory ? "Memory" : "Rocks";
                         });

TEST(RocksKv, OpenFailsOnAnUnusableDirectory) {
  TempDir dir;
  std::string file = dir.path() + "/plain-file";
  std::ofstream(file) << "x";
  auto r = open_rocks_kv(file + "/db", RocksOptions{});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find(file), std::string::npos) << r.error().message;
}

// ---------------------------------------------------------------------------------------------
// RocksKv: write-ahead log files prepared with zeros (prepared_wal.h)

namespace fs = std::filesystem;

struct LogFiles {
  size_t count = 0;
  size_t prepared = 0;  // exactly the prepared size: a spare RocksDB writes in place
};

LogFiles log_files(const std::string& dir, uintmax_t prepared_bytes) {
  LogFiles out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".log") continue;
    ++out.count;
    if (e.file_size() == prepared_bytes) ++out.prepared;
  }
  return out;
}

// The spare for the next log is written in the background after the store takes one: poll.
bool spare_appears(const std::string& path, uintmax_t size) {
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    if (fs::file_size(path, ec) == size && !ec) return true;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

std::string value_of(int i) {
  return fmt::format("{:0>600}", i);  // ~600 bytes: a few thousand of them fill a 1 MiB log
}

void write_synced(Kv& kv, int from, int to) {
  for (int i = from; i < to; ++i) {
    KvBatch b{put(fmt::format("k{:06}", i), value_of(i))};
    if (i % 7 == 0) b.push_back(del(fmt::format("k{:06}", i - 1)));
    auto r = kv.write(b, true);
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }
}

void expect_all(Kv& kv, int to) {
  for (int i = 0; i < to; ++i) {
    std::string key = fmt::format("k{:06}", i);
    bool deleted = (i + 1) % 7 == 0 && i + 1 < to;
    auto got = get(kv, key);
    if (deleted) {
      EXPECT_EQ(got, std::nullopt) << key;
    } else {
      ASSERT_EQ(got, value_of(i)) << key;
    }
  }
}

// The store's first log is a prepared file, and a spare waits for the next; the data survives a
// clean close and reopen (whose last, empty log is all zeros).
TEST(RocksKvPreparedLog, LogsArePreparedFilesAndReopenReadsThem) {
  TempDir dir;
  RocksOptions o{8, 1};
  {
    auto kv = open_rocks_kv(dir.path(), o);
    ASSERT_TRUE(kv.has_value()) << kv.error().message;
    EXPECT_TRUE(spare_appears(dir.path() + "/wal-spare", uintmax_t{1} << 20));
    LogFiles logs = log_files(dir.path(), uintmax_t{1} << 20);
    EXPECT_EQ(logs.count, 1u);
    EXPECT_EQ(logs.prepared, 1u);
    write_synced(**kv, 0, 200);
  }
  auto kv = open_rocks_kv(dir.path(), o);
  ASSERT_TRUE(kv.has_value()) << kv.error().message;
  expect_all(**kv, 200);
}

// Many logs (1 MiB memtables switch every few thousand writes): each is a prepared file when the
// background thread had one ready, and every synced write is there after a reopen.
TEST(RocksKvPreparedLog, ManyLogSwitchesKeepEverySyncedWrite) {
  TempDir dir;
  RocksOptions o{8, 1};
  constexpr int kWrites = 12'000;  // ~7 MiB of log
  {
    auto kv = open_rocks_kv(dir.path(), o);
    ASSERT_TRUE(kv.has_value()) << kv.error().message;
    write_synced(**kv, 0, kWrites);
  }
  auto kv = open_rocks_kv(dir.path(), o);
  ASSERT_TRUE(kv.has_value()) << kv.error().message;
  expect_all(**kv, kWrites);
  write_synced(**kv, kWrites, kWrites + 100);
  expect_all(**kv, kWrites + 100);
}

// What a kill -9 leaves: the live log holds the synced writes followed by zeros, never closed
// (so never truncated). A copy of the directory taken while the store is open (nothing flushes:
// the memtable is far from full) opens with every synced write and no error.
TEST(RocksKvPreparedLog, ACrashImageWithAZeroTailRecovers) {
  TempDir dir, image;
  RocksOptions o{8, 4};
  auto kv = open_rocks_kv(dir.path() + "/db", o);
  ASSERT_TRUE(kv.has_value()) << kv.error().message;
  write_synced(**kv, 0, 500);
  LogFiles logs = log_files(dir.path() + "/db", uintmax_t{4} << 20);
  ASSERT_EQ(logs.prepared, 1u);  // the live log is a prepared file with a zero tail
  fs::copy(dir.path() + "/db", image.path() + "/db", fs::copy_options::recursive);
  kv->reset();

  auto recovered = open_rocks_kv(image.path() + "/db", o);
  ASSERT_TRUE(recovered.has_value()) << recovered.error().message;
  expect_all(**recovered, 500);
}

// A preparation cut short (`wal-spare.tmp`) is deleted and a spare of another size is replaced.
TEST(RocksKvPreparedLog, LeftoversOfACutPreparationAreReplaced) {
  TempDir dir;
  RocksOptions o{8, 1};
  fs::create_directories(dir.path() + "/db");
  std::ofstream(dir.path() + "/db/wal-spare.tmp") << "half";
  std::ofstream(dir.path() + "/db/wal-spare") << "wrong size";
  {
    auto kv = open_rocks_kv(dir.path() + "/db", o);
    ASSERT_TRUE(kv.has_value()) << kv.error().message;
    EXPECT_FALSE(fs::exists(dir.path() + "/db/wal-spare.tmp"));
    EXPECT_EQ(log_files(dir.path() + "/db", uintmax_t{1} << 20).prepared, 1u);
    write_synced(**kv, 0, 50);
  }
  auto kv = open_rocks_kv(dir.path() + "/db", o);
  ASSERT_TRUE(kv.has_value()) << kv.error().message;
  expect_all(**kv, 50);
}

// A whole spare left by the previous run (it is renamed into place only after its sync) becomes
// the first log as it is: the same file, not written again.
TEST(RocksKvPreparedLog, AWholeSpareFromTheLastRunIsUsed) {
  TempDir dir;
  RocksOptions o{8, 1};
  std::string spare = dir.path() + "/wal-spare";
  {
    std::ofstream out(spare, std::ios::binary);
    std::string zeros(1 << 20, '\0');
    out.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  struct stat before {};
  ASSERT_EQ(::stat(spare.c_str(), &before), 0);
  auto kv = open_rocks_kv(dir.path(), o);
  ASSERT_TRUE(kv.has_value()) << kv.error().message;
  bool found = false;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    struct stat st {};
    if (e.path().extension() == ".log" && ::stat(e.path().c_str(), &st) == 0)
      found = found || st.st_ino == before.st_ino;
  }
  EXPECT_TRUE(found) << "no log file is the spare that was there";
  write_synced(**kv, 0, 20);
  expect_all(**kv, 20);
}

// A second opener of a directory in use (another process started on it by mistake) fails on
// RocksDB's LOCK, and before that it must not prepare a spare of its own: renaming one over the
// spare the first is taking would leave the first writing a log that has no name. The spare is
// removed here as if the first had just taken it; the second must not write another.
TEST(RocksKvPreparedLog, ASecondOpenerDoesNotTouchTheSpare) {
  TempDir dir;
  RocksOptions o{8, 1};
  auto first = open_rocks_kv(dir.path(), o);
  ASSERT_TRUE(first.has_value()) << first.error().message;
  std::string spare = dir.path() + "/wal-spare";
  ASSERT_TRUE(spare_appears(spare, uintmax_t{1} << 20));
  fs::remove(spare);

  auto second = open_rocks_kv(dir.path(), o);
  EXPECT_FALSE(second.has_value());
  EXPECT_FALSE(fs::exists(spare));
  EXPECT_FALSE(fs::exists(dir.path() + "/wal-spare.tmp"));
  write_synced(**first, 0, 20);
  expect_all(**first, 20);
}

// Off, logs are ordinary appended files and no spare is written.
TEST(RocksKvPreparedLog, OffMeansNoSpare) {
  TempDir dir;
  RocksOptions o{8, 1};
  o.prepared_wal = false;
  auto kv = open_rocks_kv(dir.path(), o);
  ASSERT_TRUE(kv.has_value()) << kv.error().message;
  write_synced(**kv, 0, 10);
  EXPECT_FALSE(fs::exists(dir.path() + "/wal-spare"));
  EXPECT_EQ(log_files(dir.path(), uintmax_t{1} << 20).prepared, 0u);
}

// ---------------------------------------------------------------------------------------------
// TimerStore

TimerRecord waiting(std::string id, int64_t next_us, State state = State::kPending) {
  TimerRecord r;
  r.id = std::move(id);
  r.state = state;
  r.created_us = 1000;
  r.due_us = next_us;
  r.next_us = next_us;
  r.timeout_ms = 5;
  r.callback = Callback{"http", "post", "http://x/hook", {{"X-A", "1"}}};
  r.data_kind = DataKind::kString;
  r.data = "payload of " + r.id;
  return r;
}

TimerRecord final_record(std::string id, State state, int64_t completed_us = 5000) {
  TimerRecord r = waiting(std::move(id), 2000);
  r.state = state;
  r.completed_us = completed_us;
  r.attempts = state == State::kCancelled ? 0 : 1;
  return r;
}

class TimerStoreTest : public KvTest {
 protected:
  void SetUp() override {
    KvTest::SetUp();
    store_ = std::make_unique<TimerStore>(*kv_);
    auto r = store_->open();
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }
  void TearDown() override {
    store_.reset();
    KvTest::TearDown();
  }

  void put_waiting(const TimerRecord& r) {
    KvBatch b;
    TimerStore::put_waiting(b, r);
    write(std::move(b));
  }
  void put_final(const TimerRecord& r, int64_t purge_at_us) {
    KvBatch b;
    TimerStore::put_final(b, r, purge_at_us);
    write(std::move(b));
  }
  void purge(std::string_view id, State state, int64_t purge_at_us) {
    KvBatch b;
    TimerStore::purge(b, id, state, purge_at_us);
    write(std::move(b));
  }
  std::optional<TimerRecord> get_record(std::string_view id) {
    auto r = store_->get(id);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return r ? *r : std::nullopt;
  }
  struct Waiting {
    std::string id;
    int64_t next_us;
    State state;
    bool operator==(const Waiting&) const = default;
  };
  std::vector<Waiting> scan_waiting() {
    std::vector<Waiting> out;
    auto r = store_->scan_waiting([&](const PendingEntry& e) {
      out.push_back({std::string(e.id), e.next_us, e.state});
      return true;
    });
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return out;
  }
  std::vector<std::string> list_final(State s, std::string_view cursor, size_t limit) {
    auto r = store_->list_final(s, cursor, limit);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return r ? *r : std::vector<std::string>{};
  }
  std::vector<std::string> list_waiting(State s, std::string_view cursor, size_t limit) {
    auto r = store_->list_waiting(s, cursor, limit, SIZE_MAX);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return r ? r->ids : std::vector<std::string>{};
  }
  std::vector<std::string> expired_ids(int64_t now_us, size_t limit) {
    auto r = store_->expired(now_us, limit);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    std::vector<std::string> ids;
    if (r) {
      for (const auto& e : *r) ids.push_back(e.id);
    }
    return ids;
  }

  std::unique_ptr<TimerStore> store_;
};

using Ids = std::vector<std::string>;

TEST_P(TimerStoreTest, OpenWritesAndChecksTheFormatMarker) {
  EXPECT_EQ(get(*kv_, "m/format"), std::string(kStorageFormat));
  auto m = store_->meta("format");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(*m, std::string(kStorageFormat));
  TimerStore again(*kv_);
  EXPECT_TRUE(again.open().has_value());
}

TEST_P(TimerStoreTest, OpenRefusesADifferentMarker) {
  write({put("m/format", "skyring-storage-0")}, true);
  TimerStore other(*kv_);
  auto r = other.open();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
  EXPECT_NE(r.error().message.find("skyring-storage-0"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(kStorageFormat), std::string::npos) << r.error().message;
  EXPECT_EQ(get(*kv_, "m/format"), "skyring-storage-0");  // left alone
}

TEST_P(TimerStoreTest, OpenUpgradesFormatOneInPlace) {
  write({put("m/format", std::string(kStorageFormatV1))}, true);
  TimerStore other(*kv_);
  ASSERT_TRUE(other.open().has_value());
  EXPECT_EQ(get(*kv_, "m/format"), std::string(kStorageFormat));
}

TEST_P(TimerStoreTest, MoveMarksAndReceipts) {
  KvBatch b;
  TimerStore::put_move_mark(b, "a", "node-2", "node-1-00ff");
  TimerStore::put_move_mark(b, "b", "node-3", "node-1-0100");
  write(std::move(b));
  write({put("v/broken", "no separator")}, true);
  std::vector<std::string> seen;
  ASSERT_TRUE(store_
                  ->scan_move_marks([&](const MoveMarkEntry& m) {
                    seen.push_back(fmt::format("{}>{}:{}", m.id, m.dest, m.token));
                    return true;
                  })
                  .has_value());
  EXPECT_EQ(seen, (Ids{"a>node-2:node-1-00ff", "b>node-3:node-1-0100", "broken>:"}));
  KvBatch d;
  TimerStore::drop_move_mark(d, "a");
  write(std::move(d));
  EXPECT_EQ(get(*kv_, "v/a"), std::nullopt);

  // A receipt per (id, token) expires through the purge index like a final record; a later
  // move of the same id adds its own receipt and forgets none.
  KvBatch r1;
  TimerStore::put_receipt(r1, "x", "tok-1", 1000);
  TimerStore::put_receipt(r1, "x", "tok-2", 5000);
  write(std::move(r1));
  EXPECT_TRUE(*store_->has_receipt("x", "tok-1"));
  EXPECT_TRUE(*store_->has_receipt("x", "tok-2"));
  EXPECT_FALSE(*store_->has_receipt("x", "tok-3"));
  ManualClock clock(2000);
  Registry metrics;
  RetentionPurger purger(*store_, clock, PurgerOptions{}, PurgerProbe::make(metrics));
  EXPECT_EQ(*purger.run_once(), 1u);
  EXPECT_FALSE(*store_->has_receipt("x", "tok-1"));
  EXPECT_TRUE(*store_->has_receipt("x", "tok-2"));
  clock.set_us(6000);
  EXPECT_EQ(*purger.run_once(), 1u);
  EXPECT_FALSE(*store_->has_receipt("x", "tok-2"));
}

TEST_P(TimerStoreTest, OpenRefusesDataWithoutAMarker) {
  write({del("m/format"), put("t/x", "something")}, true);
  TimerStore other(*kv_);
  auto r = other.open();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
  EXPECT_EQ(get(*kv_, "m/format"), std::nullopt);
}

TEST_P(TimerStoreTest, Meta) {
  auto missing = store_->meta("node-id");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(*missing, std::nullopt);
  ASSERT_TRUE(store_->set_meta("node-id", "node-a").has_value());
  EXPECT_EQ(*store_->meta("node-id"), "node-a");
  EXPECT_EQ(get(*kv_, "m/node-id"), "node-a");
}

TEST_P(TimerStoreTest, WaitingRecordsAndTheirIndex) {
  put_waiting(waiting("b", 300));
  put_waiting(waiting("a", 200, State::kRetrying));
  put_waiting(waiting("c", 100));
  EXPECT_EQ(get_record("a"), waiting("a", 200, State::kRetrying));
  EXPECT_EQ(get_record("missing"), std::nullopt);
  EXPECT_EQ(scan_waiting(), (std::vector<Waiting>{{"a", 200, State::kRetrying},
                                                  {"b", 300, State::kPending},
                                                  {"c", 100, State::kPending}}));
  // Replacing keeps one index entry with the new schedule.
  put_waiting(waiting("b", 999, State::kRetrying));
  EXPECT_EQ(scan_waiting(), (std::vector<Waiting>{{"a", 200, State::kRetrying},
                                                  {"b", 999, State::kRetrying},
                                                  {"c", 100, State::kPending}}));
  EXPECT_EQ(get_record("b")->next_us, 999);
  EXPECT_EQ(keys(*kv_, "p/", "p0"), (Ids{"p/a", "p/b", "p/c"}));
  EXPECT_TRUE(keys(*kv_, "s/", "s0").empty());
  EXPECT_TRUE(keys(*kv_, "e/", "e0").empty());
}

TEST_P(TimerStoreTest, ScanWaitingStopsEarly) {
  for (const char* id : {"a", "b", "c"}) put_waiting(waiting(id, 1));
  int seen = 0;
  auto r = store_->scan_waiting([&](const PendingEntry&) { return ++seen < 2; });
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(seen, 2);
}

TEST_P(TimerStoreTest, FinalRecordsLeaveTheWaitingIndex) {
  put_waiting(waiting("a", 100));
  put_waiting(waiting("b", 100));
  TimerRecord done = final_record("a", State::kSucceeded);
  put_final(done, 9000);
  EXPECT_EQ(get_record("a"), done);
  EXPECT_EQ(scan_waiting(), (std::vector<Waiting>{{"b", 100, State::kPending}}));
  EXPECT_EQ(list_final(State::kSucceeded, "", 10), (Ids{"a"}));
  EXPECT_TRUE(list_final(State::kFailed, "", 10).empty());
  EXPECT_EQ(list_waiting(State::kPending, "", 10), (Ids{"b"}));
  EXPECT_EQ(keys(*kv_, "t/", "t0"), (Ids{"t/a", "t/b"}));
  EXPECT_EQ(keys(*kv_, "s/", "s0").size(), 1u);
  EXPECT_EQ(keys(*kv_, "e/", "e0").size(), 1u);

  purge("a", State::kSucceeded, 9000);
  EXPECT_EQ(get_record("a"), std::nullopt);
  EXPECT_TRUE(list_final(State::kSucceeded, "", 10).empty());
  EXPECT_TRUE(expired_ids(INT64_MAX, 10).empty());
  EXPECT_EQ(keys(*kv_, "t/", "t0"), (Ids{"t/b"}));
  EXPECT_TRUE(keys(*kv_, "s/", "s0").empty());
  EXPECT_TRUE(keys(*kv_, "e/", "e0").empty());
  EXPECT_EQ(scan_waiting(), (std::vector<Waiting>{{"b", 100, State::kPending}}));
}

TEST_P(TimerStoreTest, ListFinalPerStateWithCursor) {
  for (const char* id : {"f3", "f1", "f5", "f2", "f4"})
    put_final(final_record(id, State::kFailed), 1);
  for (const char* id : {"s1", "s2"}) put_final(final_record(id, State::kSucceeded), 1);
  put_final(final_record("c1", State::kCancelled), 1);
  EXPECT_EQ(list_final(State::kFailed, "", 2), (Ids{"f1", "f2"}));
  EXPECT_EQ(list_final(State::kFailed, "f2", 2), (Ids{"f3", "f4"}));
  EXPECT_EQ(list_final(State::kFailed, "f4", 2), (Ids{"f5"}));
  EXPECT_TRUE(list_final(State::kFailed, "f5", 2).empty());
  EXPECT_EQ(list_final(State::kFailed, "f", 100), (Ids{"f1", "f2", "f3", "f4", "f5"}));
  EXPECT_EQ(list_final(State::kFailed, "f25", 100), (Ids{"f3", "f4", "f5"}));  // between ids
  EXPECT_EQ(list_final(State::kSucceeded, "", 100), (Ids{"s1", "s2"}));
  EXPECT_EQ(list_final(State::kCancelled, "", 100), (Ids{"c1"}));
  EXPECT_TRUE(list_final(State::kPending, "", 100).empty());
}

TEST_P(TimerStoreTest, ListWaitingPerStateWithCursor) {
  for (const char* id : {"p3", "p1", "p2"}) put_waiting(waiting(id, 10));
  for (const char* id : {"r2", "r1"}) put_waiting(waiting(id, 10, State::kRetrying));
  put_final(final_record("x", State::kFailed), 1);
  EXPECT_EQ(list_waiting(State::kPending, "", 10), (Ids{"p1", "p2", "p3"}));
  EXPECT_EQ(list_waiting(State::kRetrying, "", 10), (Ids{"r1", "r2"}));
  EXPECT_EQ(list_waiting(State::kPending, "", 2), (Ids{"p1", "p2"}));
  EXPECT_EQ(list_waiting(State::kPending, "p2", 2), (Ids{"p3"}));
  EXPECT_EQ(list_waiting(State::kRetrying, "r1", 2), (Ids{"r2"}));
  EXPECT_TRUE(list_waiting(State::kRetrying, "r2", 2).empty());
  EXPECT_TRUE(list_waiting(State::kFailed, "", 10).empty());
}

TEST_P(TimerStoreTest, ExpiredInPurgeOrderUpToNow) {
  put_final(final_record("z", State::kSucceeded), 100);
  put_final(final_record("a", State::kCancelled), 300);
  put_final(final_record("m", State::kFailed), 200);
  put_waiting(waiting("w", 50));  // waiting timers are never expired
  EXPECT_TRUE(expired_ids(99, 10).empty());
  EXPECT_EQ(expired_ids(100, 10), (Ids{"z"}));  // purge time <= now
  EXPECT_EQ(expired_ids(250, 10), (Ids{"z", "m"}));
  EXPECT_EQ(expired_ids(300, 10), (Ids{"z", "m", "a"}));
  EXPECT_EQ(expired_ids(INT64_MAX, 10), (Ids{"z", "m", "a"}));
  EXPECT_EQ(expired_ids(INT64_MAX, 2), (Ids{"z", "m"}));
  EXPECT_EQ(expired_ids(INT64_MAX, 1), (Ids{"z"}));

  auto r = store_->expired(1000, 10);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].purge_at_us, 100);
  EXPECT_EQ((*r)[0].state, State::kSucceeded);
  EXPECT_EQ((*r)[1].purge_at_us, 200);
  EXPECT_EQ((*r)[1].state, State::kFailed);
  EXPECT_EQ((*r)[2].purge_at_us, 300);
  EXPECT_EQ((*r)[2].state, State::kCancelled);

  // Purging with what expired() returned removes exactly that entry.
  purge((*r)[0].id, (*r)[0].state, (*r)[0].purge_at_us);
  EXPECT_EQ(expired_ids(INT64_MAX, 10), (Ids{"m", "a"}));
}

TEST_P(TimerStoreTest, GetDetectsACorruptRecord) {
  write({put("t/bad", "garbage")});
  auto r = store_->get("bad");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);

  // A flipped byte in a real record.
  put_waiting(waiting("flip", 10));
  std::string bytes = *get(*kv_, "t/flip");
  bytes[bytes.size() / 2] ^= 0x20;
  write({put("t/flip", bytes)});
  r = store_->get("flip");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);

  // A valid record stored under another id.
  write({put("t/other", encode_record(waiting("good", 10)))});
  r = store_->get("other");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
}

TEST_P(TimerStoreTest, ScanWaitingDetectsACorruptIndexEntry) {
  put_waiting(waiting("a", 10));
  write({put("p/b", "short")});
  auto r = store_->scan_waiting([](const PendingEntry&) { return true; });
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
  EXPECT_NE(r.error().message.find("for b"), std::string::npos) << r.error().message;
}

// Listing a waiting state visits at most max_scan index entries per call and says where to go
// on, so a state with no timers among millions of pending ones costs bounded work per page.
TEST_P(TimerStoreTest, ListWaitingScanIsBoundedAndResumable) {
  for (int i = 0; i < 25; ++i) put_waiting(waiting(fmt::format("p{:02}", i), 10));
  put_waiting(waiting("r99", 10, State::kRetrying));
  std::vector<std::string> found;
  std::string cursor;
  int calls = 0;
  do {
    auto page = store_->list_waiting(State::kRetrying, cursor, 10, 4);
    ASSERT_TRUE(page.has_value());
    EXPECT_LE(page->ids.size(), 4u);
    found.insert(found.end(), page->ids.begin(), page->ids.end());
    if (!page->resume_after.empty()) {
      EXPECT_GT(page->resume_after, cursor);
    }
    cursor = page->resume_after;
    ASSERT_LT(++calls, 20);
  } while (!cursor.empty());
  EXPECT_EQ(found, (Ids{"r99"}));
  EXPECT_EQ(calls, 7);  // 26 entries, 4 per call
  // The page limit still applies, and resumes after the last id returned.
  auto page = store_->list_waiting(State::kPending, "", 3, 100);
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->ids, (Ids{"p00", "p01", "p02"}));
  EXPECT_EQ(page->resume_after, "p02");
}

TEST_P(TimerStoreTest, QuarantineMovesBytesAsideAndRemovesTheTimer) {
  put_waiting(waiting("bad", 10));
  write({put("t/bad", "garbage")});
  KvBatch b;
  TimerStore::quarantine(b, "bad", 't', "garbage");
  write(std::move(b));
  EXPECT_EQ(get(*kv_, "q/bad"), std::string("tgarbage"));
  EXPECT_EQ(get(*kv_, "t/bad"), std::nullopt);
  EXPECT_EQ(get(*kv_, "p/bad"), std::nullopt);
  EXPECT_TRUE(scan_waiting().empty());
  std::vector<std::string> q;
  ASSERT_TRUE(store_->scan_quarantined([&](std::string_view id) {
    q.emplace_back(id);
    return true;
  }));
  EXPECT_EQ(q, (Ids{"bad"}));
}

TEST_P(TimerStoreTest, ScanWaitingReportsCorruptEntriesAndGoesOn) {
  put_waiting(waiting("a", 10));
  write({put("p/b", "short")});
  put_waiting(waiting("c", 30));
  std::vector<std::string> ok, bad;
  auto r = store_->scan_waiting(
      [&](const PendingEntry& e) {
        ok.emplace_back(e.id);
        return true;
      },
      [&](std::string_view id, std::string_view raw) {
        bad.emplace_back(id);
        EXPECT_EQ(raw, "short");
      });
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(ok, (Ids{"a", "c"}));
  EXPECT_EQ(bad, (Ids{"b"}));
}

TEST_P(TimerStoreTest, HasIdWithPrefix) {
  put_waiting(waiting("abc123", 10));
  put_final(final_record("zz9", State::kFailed), 100);
  EXPECT_TRUE(*store_->has_id_with_prefix("abc"));
  EXPECT_TRUE(*store_->has_id_with_prefix("abc123"));
  EXPECT_TRUE(*store_->has_id_with_prefix("zz"));
  EXPECT_FALSE(*store_->has_id_with_prefix("abd"));
  EXPECT_FALSE(*store_->has_id_with_prefix("abc1234"));
}

// The purge keeps pace: one pass deletes a whole batch (not a per-second quota), passes resume
// after the last purged entry, and what is not yet expired stays.
TEST_P(TimerStoreTest, PurgerDeletesExpiredRecordsInBatches) {
  constexpr int kN = 2500;
  for (int i = 0; i < kN; ++i) {
    KvBatch b;
    TimerStore::put_final(b, final_record(fmt::format("f{:05}", i), State::kFailed), 1000 + i);
    write(std::move(b));
  }
  put_final(final_record("later", State::kSucceeded), 1'000'000);
  put_waiting(waiting("w", 10));
  ManualClock clock(500'000);
  Registry metrics;
  PurgerOptions o;
  o.batch = 1000;
  RetentionPurger purger(*store_, clock, o, PurgerProbe::make(metrics));
  auto n = purger.run_once();
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1000u);
  EXPECT_GT(purger.lag_us(), 0);
  EXPECT_EQ(*purger.run_once(), 1000u);
  EXPECT_EQ(*purger.run_once(), 500u);
  EXPECT_EQ(purger.lag_us(), 0);
  EXPECT_EQ(*purger.run_once(), 0u);
  EXPECT_EQ(get_record("f00000"), std::nullopt);
  EXPECT_EQ(get_record(fmt::format("f{:05}", kN - 1)), std::nullopt);
  EXPECT_TRUE(list_final(State::kFailed, "", 10).empty());
  EXPECT_TRUE(get_record("later").has_value());
  EXPECT_TRUE(get_record("w").has_value());
  clock.set_us(2'000'000);
  EXPECT_EQ(*purger.run_once(), 1u);
  EXPECT_EQ(get_record("later"), std::nullopt);
  EXPECT_TRUE(get_record("w").has_value());
}

// The thread purges on its own until everything expired is gone.
TEST_P(TimerStoreTest, PurgerThreadCatchesUp) {
  for (int i = 0; i < 3000; ++i) {
    KvBatch b;
    TimerStore::put_final(b, final_record(fmt::format("g{:05}", i), State::kCancelled), 100 + i);
    write(std::move(b));
  }
  ManualClock clock(1'000'000);
  Registry metrics;
  PurgerOptions o;
  o.batch = 500;
  o.period_ms = 10;
  PurgerProbe probe = PurgerProbe::make(metrics);
  RetentionPurger purger(*store_, clock, o, probe);
  purger.start();
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (probe.purged->value() < 3000 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  purger.stop();
  EXPECT_EQ(probe.purged->value(), 3000u);
  EXPECT_TRUE(list_final(State::kCancelled, "", 10).empty());
}

INSTANTIATE_TEST_SUITE_P(Backends, TimerStoreTest,
                         ::testing::Values(Backend::kMemory, Backend::kRocks),
                         [](const auto& info) {
                           return info.param == Backend::kMemory ? "Memory" : "Rocks";
                         });

// ---------------------------------------------------------------------------------------------
// GroupCommitter

// Wraps a Kv: counts writes, can hold a chosen write until released, fail chosen writes, and
// sleep a little in each write.
class ScriptedKv final : public Kv {
 public:
  explicit ScriptedKv(Kv& inner) : inner_(inner) {}

  Result<std::optional<std::string>> get(std::string_view key) override { return inner_.get(key); }
  Result<void> scan(std::string_view start, std::string_view end, const KvVisitor& fn) override {
    return inner_.scan(start, end, fn);
  }
  Result<void> write(const KvBatch& batch, bool sync) override {
    int n;
    {
      std::unique_lock lock(mu_);
      n = ++writes_;
      batch_sizes_.push_back(batch.size());
      syncs_.push_back(sync);
      if (n == hold_write_) {
        entered_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return released_; });
      }
    }
    if (sleep_ > 0us) std::this_thread::sleep_for(sleep_);
    bool failing = fail_all_from_ > 0 ? n >= fail_all_from_ : n == fail_only_;
    if (failing) return fail(Errc::kIo, "injected write failure");
    return inner_.write(batch, sync);
  }

  // Configuration, before the committer starts.
  void hold_write(int n) { hold_write_ = n; }
  void fail_only(int n) { fail_only_ = n; }
  void fail_all_from(int n) { fail_all_from_ = n; }
  void sleep_in_write(std::chrono::microseconds d) { sleep_ = d; }

  bool wait_entered() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 60s, [&] { return entered_; });
  }
  void release() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }
  int writes() {
    std::lock_guard lock(mu_);
    return writes_;
  }
  std::vector<size_t> batch_sizes() {
    std::lock_guard lock(mu_);
    return batch_sizes_;
  }
  std::vector<bool> syncs() {
    std::lock_guard lock(mu_);
    return syncs_;
  }

 private:
  Kv& inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  int writes_ = 0;
  std::vector<size_t> batch_sizes_;
  std::vector<bool> syncs_;
  int hold_write_ = 0;
  bool entered_ = false;
  bool released_ = false;
  int fail_only_ = 0;
  int fail_all_from_ = 0;
  std::chrono::microseconds sleep_{0};
};

class GroupCommitterTest : public ::testing::Test {
 protected:
  // Records each completion's result in submit order.
  CommitDone record(int index) {
    return [this, index](Result<void> r) {
      order_.push_back(index);
      results_.push_back(r);
      threads_.push_back(std::this_thread::get_id());
    };
  }
  void submit_ok(GroupCommitter& c, KvBatch b, int index) {
    auto r = c.submit(std::move(b), record(index));
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }
  bool wait_done(size_t n) {
    return executor_.drain_until([&] { return results_.size() >= n; });
  }

  std::unique_ptr<Kv> mem_ = make_memory_kv();
  ScriptedKv kv_{*mem_};
  ManualExecutor executor_;
  std::vector<int> order_;
  std::vector<Result<void>> results_;
  std::vector<std::thread::id> threads_;
};

TEST_F(GroupCommitterTest, CompletionsRunOnTheExecutor) {
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  submit_ok(c, {put("a", "1")}, 0);
  ASSERT_TRUE(executor_.wait_for_task());
  EXPECT_TRUE(results_.empty());  // not on the committer's thread, not before draining
  executor_.run_all();
  ASSERT_EQ(results_.size(), 1u);
  EXPECT_TRUE(results_[0].has_value());
  EXPECT_EQ(threads_[0], std::this_thread::get_id());
  EXPECT_EQ(get(*mem_, "a"), "1");  // durable before the completion ran
  c.stop();
  EXPECT_EQ(kv_.syncs(), (std::vector<bool>{true}));
}

TEST_F(GroupCommitterTest, CompletionsInSubmitOrder) {
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  for (int i = 0; i < 200; ++i) submit_ok(c, {put(fmt::format("k{}", i), "v")}, i);
  ASSERT_TRUE(wait_done(200));
  std::vector<int> expected(200);
  for (int i = 0; i < 200; ++i) expected[i] = i;
  EXPECT_EQ(order_, expected);
  for (const auto& r : results_) EXPECT_TRUE(r.has_value());
  EXPECT_EQ(keys(*mem_, "k", "l").size(), 200u);
}

TEST_F(GroupCommitterTest, BatchesWhatQueuesDuringAWrite) {
  Registry reg;
  Histogram& group_size = reg.histogram("g", "g", {1, 2, 1000});
  kv_.hold_write(1);
  GroupCommitter c(kv_, executor_, CommitterOptions{}, CommitterProbe{nullptr, &group_size});
  submit_ok(c, {put("first", "1")}, 0);
  ASSERT_TRUE(kv_.wait_entered());
  for (int i = 1; i <= 50; ++i) submit_ok(c, {put(fmt::format("k{}", i), "v"), del("none")}, i);
  kv_.release();
  ASSERT_TRUE(wait_done(51));
  // The 50 batches queued while the first write ran went out as one write.
  EXPECT_EQ(kv_.writes(), 2);
  EXPECT_EQ(kv_.batch_sizes(), (std::vector<size_t>{1, 100}));
  EXPECT_EQ(group_size.count(), 2u);
  EXPECT_EQ(group_size.sum(), 101.0);  // key writes per group: 1, then 50 x 2
  for (int i = 0; i <= 50; ++i) EXPECT_EQ(order_[i], i);
  EXPECT_EQ(keys(*mem_, "k", "l").size(), 50u);
}

TEST_F(GroupCommitterTest, GroupsAreBoundedByMaxGroupOps) {
  kv_.hold_write(1);
  CommitterOptions o;
  o.max_group_ops = 10;
  GroupCommitter c(kv_, executor_, o);
  submit_ok(c, {put("first", "1")}, 0);
  ASSERT_TRUE(kv_.wait_entered());
  for (int i = 1; i <= 34; ++i) submit_ok(c, {put(fmt::format("k{}", i), "v")}, i);
  submit_ok(c, KvBatch(25, put("big", "v")), 35);  // larger than a group: goes alone
  kv_.release();
  ASSERT_TRUE(wait_done(36));
  EXPECT_EQ(kv_.batch_sizes(), (std::vector<size_t>{1, 10, 10, 10, 4, 25}));
  for (int i = 0; i <= 35; ++i) EXPECT_EQ(order_[i], i);
}

TEST_F(GroupCommitterTest, OpsOnOneKeyKeepSubmitOrderWithinAGroup) {
  kv_.hold_write(1);
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  submit_ok(c, {put("first", "1")}, 0);
  ASSERT_TRUE(kv_.wait_entered());
  // One group: the committer may reorder keys, but never the operations on one key.
  submit_ok(c, {put("z", "1"), put("k", "1")}, 1);
  submit_ok(c, {put("k", "2"), put("a", "1"), del("z")}, 2);
  submit_ok(c, {del("k"), put("m", "1")}, 3);
  submit_ok(c, {put("k", "3"), put("z", "2")}, 4);
  submit_ok(c, {del("m")}, 5);
  kv_.release();
  ASSERT_TRUE(wait_done(6));
  EXPECT_EQ(kv_.writes(), 2);
  EXPECT_EQ(get(*mem_, "k"), "3");
  EXPECT_EQ(get(*mem_, "z"), "2");
  EXPECT_EQ(get(*mem_, "a"), "1");
  EXPECT_EQ(get(*mem_, "m"), std::nullopt);
}

TEST_F(GroupCommitterTest, ConcurrentSubmitsAreBatchedAndAllApplied) {
  kv_.sleep_in_write(2ms);
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  constexpr int kThreads = 4, kPerThread = 50, kTotal = kThreads * kPerThread;
  std::atomic<int> completed{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string k = "c/" + std::to_string(t) + "/" + std::to_string(i);
        auto r = c.submit({put(k, "v")}, [&](Result<void> res) {
          if (res) ++completed;
        });
        if (!r) ++refused;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(refused.load(), 0);
  ASSERT_TRUE(executor_.drain_until([&] { return completed.load() == kTotal; }));
  EXPECT_EQ(keys(*mem_, "c/", "c0").size(), static_cast<size_t>(kTotal));
  EXPECT_LE(kv_.writes(), kTotal);
  RecordProperty("writes", kv_.writes());
}

TEST_F(GroupCommitterTest, EmptyBatchCompletesWithoutAWrite) {
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  submit_ok(c, {}, 0);
  ASSERT_TRUE(wait_done(1));
  EXPECT_TRUE(results_[0].has_value());
  EXPECT_EQ(kv_.writes(), 0);
}

TEST_F(GroupCommitterTest, QueueOverflowIsOverloaded) {
  kv_.hold_write(1);
  CommitterOptions o;
  o.max_queue_ops = 3;
  GroupCommitter c(kv_, executor_, o);
  submit_ok(c, {put("first", "1")}, 0);
  ASSERT_TRUE(kv_.wait_entered());  // taken off the queue: 0 ops wait
  submit_ok(c, {put("a", "1"), put("b", "1")}, 1);
  submit_ok(c, {}, 2);  // an empty batch still takes a slot
  bool called = false;
  auto r = c.submit({put("c", "1")}, [&](Result<void>) { called = true; });
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kOverloaded);
  KvBatch too_big(4, put("d", "1"));
  r = c.submit(too_big, [&](Result<void>) { called = true; });
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kOverloaded);
  kv_.release();
  ASSERT_TRUE(wait_done(3));
  EXPECT_FALSE(called);
  EXPECT_EQ(get(*mem_, "c"), std::nullopt);
  // Room again once the queue drained.
  submit_ok(c, {put("c", "2")}, 3);
  ASSERT_TRUE(wait_done(4));
  EXPECT_EQ(get(*mem_, "c"), "2");
  executor_.run_all();
  EXPECT_FALSE(called);
}

TEST_F(GroupCommitterTest, FailedWriteFailsTheGroupAndSticks) {
  kv_.hold_write(1);
  kv_.fail_all_from(2);
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  submit_ok(c, {put("ok", "1")}, 0);
  ASSERT_TRUE(kv_.wait_entered());
  for (int i = 1; i <= 3; ++i) submit_ok(c, {put(fmt::format("k{}", i), "v")}, i);
  kv_.release();
  ASSERT_TRUE(wait_done(4));
  EXPECT_TRUE(results_[0].has_value());
  for (int i = 1; i <= 3; ++i) {
    ASSERT_FALSE(results_[i].has_value());
    EXPECT_EQ(results_[i].error().code, Errc::kIo);
  }
  EXPECT_EQ(kv_.writes(), 2);  // the three went out as one group
  // Sticky: everything after is refused at once and never reaches the Kv.
  bool called = false;
  for (int i = 0; i < 3; ++i) {
    auto r = c.submit({put("later", "1")}, [&](Result<void>) { called = true; });
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kUnavailable);
  }
  c.stop();
  executor_.run_all();
  EXPECT_FALSE(called);
  EXPECT_EQ(kv_.writes(), 2);
  EXPECT_EQ(get(*mem_, "later"), std::nullopt);
  EXPECT_EQ(get(*mem_, "k1"), std::nullopt);
}

// Nothing after a failed write is acknowledged (group_committer.h): a batch already queued
// behind the failed group fails too and is not written, even when the failure was transient
// and the next write would have succeeded.
TEST_F(GroupCommitterTest, NothingQueuedBehindAFailedWriteIsAcknowledged) {
  kv_.hold_write(1);
  kv_.fail_only(1);  // a transient failure: the next write would succeed
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  submit_ok(c, {put("a", "1")}, 0);
  ASSERT_TRUE(kv_.wait_entered());
  submit_ok(c, {put("b", "1")}, 1);  // queued behind the write that is going to fail
  kv_.release();
  ASSERT_TRUE(wait_done(2));
  EXPECT_FALSE(results_[0].has_value());
  EXPECT_FALSE(results_[1].has_value());
  EXPECT_EQ(get(*mem_, "b"), std::nullopt);
  EXPECT_EQ(kv_.writes(), 1);
}

TEST_F(GroupCommitterTest, StopWritesWhatIsQueued) {
  kv_.hold_write(1);
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  submit_ok(c, {put("k0", "v")}, 0);
  ASSERT_TRUE(kv_.wait_entered());
  for (int i = 1; i <= 5; ++i) submit_ok(c, {put(fmt::format("k{}", i), "v")}, i);
  std::thread stopper([&] { c.stop(); });
  // stop() waits for the queue; whether it or release() comes first does not matter.
  kv_.release();
  stopper.join();
  EXPECT_EQ(keys(*mem_, "k", "l").size(), 6u);
  executor_.run_all();
  ASSERT_EQ(results_.size(), 6u);
  for (const auto& r : results_) EXPECT_TRUE(r.has_value());
  auto r = c.submit({put("late", "1")}, [](Result<void>) {});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kUnavailable);
  c.stop();  // idempotent
  executor_.run_all();
  EXPECT_EQ(get(*mem_, "late"), std::nullopt);
}

TEST_F(GroupCommitterTest, StopRightAfterSubmitStillWrites) {
  GroupCommitter c(kv_, executor_, CommitterOptions{});
  for (int i = 0; i < 20; ++i) submit_ok(c, {put(fmt::format("k{}", i), "v")}, i);
  c.stop();
  EXPECT_EQ(keys(*mem_, "k", "l").size(), 20u);
  executor_.run_all();
  EXPECT_EQ(results_.size(), 20u);
}

TEST_F(GroupCommitterTest, SyncOption) {
  CommitterOptions o;
  o.sync = false;
  GroupCommitter c(kv_, executor_, o);
  submit_ok(c, {put("a", "1")}, 0);
  ASSERT_TRUE(wait_done(1));
  c.stop();
  EXPECT_EQ(kv_.syncs(), (std::vector<bool>{false}));
}

// Records what reaches it; fails synchronously when told to.
class RecordingCommitter final : public Committer {
 public:
  Result<void> submit(KvBatch batch, CommitDone done) override {
    if (refuse) return fail(Errc::kUnavailable, "refused");
    batches.push_back(std::move(batch));
    dones.push_back(std::move(done));
    return {};
  }
  std::vector<KvBatch> batches;
  std::vector<CommitDone> dones;
  bool refuse = false;
};

class TurnCommitterTest : public GroupCommitterTest {
 protected:
  void submit_ok(TurnCommitter& c, KvBatch b, int index) {
    auto r = c.submit(std::move(b), record(index));
    ASSERT_TRUE(r.has_value()) << r.error().message;
  }
  std::vector<std::string> keys_of(const KvBatch& b) {
    std::vector<std::string> out;
    for (const KvOp& op : b) out.push_back(op.key);
    return out;
  }
  RecordingCommitter next_;
};

TEST_F(TurnCommitterTest, OneTurnsSubmitsGoOnAsOneInOrder) {
  TurnCommitter c(next_, executor_);
  submit_ok(c, {put("b", "1")}, 0);
  submit_ok(c, {put("a", "1"), del("c")}, 1);
  submit_ok(c, {}, 2);
  EXPECT_TRUE(next_.batches.empty());  // nothing before the turn ends
  EXPECT_EQ(executor_.run_all(), 1u);
  ASSERT_EQ(next_.batches.size(), 1u);
  EXPECT_EQ(keys_of(next_.batches[0]), (std::vector<std::string>{"b", "a", "c"}));
  next_.dones[0](Result<void>{});
  EXPECT_EQ(order_, (std::vector<int>{0, 1, 2}));
  for (const auto& r : results_) EXPECT_TRUE(r.has_value());
  // The next turn starts a new group.
  submit_ok(c, {put("d", "1")}, 3);
  executor_.run_all();
  ASSERT_EQ(next_.batches.size(), 2u);
  next_.dones[1](fail(Errc::kIo, "disk"));
  ASSERT_EQ(results_.size(), 4u);
  EXPECT_FALSE(results_[3].has_value());
}

TEST_F(TurnCommitterTest, AFullGroupGoesAtOnce) {
  TurnCommitter c(next_, executor_, 4);
  submit_ok(c, {put("a", "1"), put("b", "1")}, 0);
  submit_ok(c, {put("c", "1"), put("d", "1")}, 1);  // 4 ops: handed on now
  ASSERT_EQ(next_.batches.size(), 1u);
  submit_ok(c, {put("e", "1")}, 2);
  executor_.run_all();
  ASSERT_EQ(next_.batches.size(), 2u);
  EXPECT_EQ(keys_of(next_.batches[1]), (std::vector<std::string>{"e"}));
}

TEST_F(TurnCommitterTest, ARefusedGroupFailsEachFromTheExecutor) {
  next_.refuse = true;
  TurnCommitter c(next_, executor_);
  submit_ok(c, {put("a", "1")}, 0);
  submit_ok(c, {put("b", "1")}, 1);
  c.flush();
  EXPECT_TRUE(results_.empty());  // not on the caller's stack
  executor_.run_all();
  ASSERT_EQ(results_.size(), 2u);
  EXPECT_EQ(order_, (std::vector<int>{0, 1}));
  for (const auto& r : results_) {
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kUnavailable);
  }
}

TEST_F(TurnCommitterTest, OverAGroupCommitterEverythingIsWrittenOnce) {
  GroupCommitter g(kv_, executor_, CommitterOptions{});
  TurnCommitter c(g, executor_);
  for (int i = 0; i < 30; ++i) submit_ok(c, {put(fmt::format("k{:02}", i), "v")}, i);
  ASSERT_TRUE(wait_done(30));
  EXPECT_EQ(kv_.writes(), 1);
  std::vector<int> expected(30);
  for (int i = 0; i < 30; ++i) expected[i] = i;
  EXPECT_EQ(order_, expected);
  EXPECT_EQ(keys(*mem_, "k", "l").size(), 30u);
}

}  // namespace
}  // namespace skyring
