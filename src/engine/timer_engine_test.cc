// TimerEngine driven by a manual clock, a manual executor, a committer that holds writes and a
// transport that holds attempts: every step is explicit, nothing depends on real time.
#include "engine/timer_engine.h"

#include <malloc.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "engine/engine_fakes.h"
#include "model/backoff.h"
#include "model/request.h"
#include "storage/retention_purger.h"

namespace skyring {
namespace {

using testing::FlakyKv;
using testing::HeldCommitter;
using testing::HeldTransport;
using testing::ManualExecutor;
using testing::RecordingWakeup;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { start(); }

  // (Re)starts the engine over the same storage, as a process restart would.
  void start(EngineOptions o = {}) {
    engine.reset();
    options = o;
    registry = std::make_unique<TransportRegistry>();
    auto t = std::make_unique<HeldTransport>();
    transport = t.get();
    registry->add(std::move(t));
    committer = std::make_unique<HeldCommitter>(*kv, ex);
    engine = std::make_unique<TimerEngine>(clock, ex, wake, store, *committer, *registry, o,
                                           EngineProbe::make(metrics));
    auto n = engine->recover();
    ASSERT_TRUE(n.has_value());
    recovered = *n;
  }

  TimerRecord timer(int64_t timeout_ms, const std::string& id = "",
                    const std::string& uri = "http://a.test/hook", const std::string& extra = "") {
    std::string body = fmt::format(
        R"({{"timeout":{},"data":"payload-{}","callback":{{"transport":"http","method":"post","uri":"{}"}}{}}})",
        timeout_ms, id, uri, extra);
    auto r = parse_timer_request(body, clock.now_us());
    EXPECT_TRUE(r.has_value()) << body;
    r->id = id;
    return *r;
  }

  // Drains the executor and completes writes until nothing is left.
  void settle() {
    for (int i = 0; i < 100; ++i) {
      ex.run_all();
      if (committer->held() == 0) return;
      committer->complete_all();
    }
    FAIL() << "engine never settled";
  }

  std::string create(TimerRecord r) {
    std::string id;
    bool called = false;
    engine->create(std::move(r), [&](Result<CreateResult> res) {
      called = true;
      ASSERT_TRUE(res.has_value()) << res.error().message;
      id = res->id;
    });
    settle();
    EXPECT_TRUE(called);
    return id;
  }

  Result<TimerRecord> get(const std::string& id) {
    std::optional<Result<TimerRecord>> out;
    engine->get(id, [&](Result<TimerRecord> r) { out = std::move(r); });
    settle();
    EXPECT_TRUE(out.has_value());
    return *out;
  }

  Result<void> cancel(const std::string& id) {
    std::optional<Result<void>> out;
    engine->cancel(id, [&](Result<void> r) { out = std::move(r); });
    settle();
    EXPECT_TRUE(out.has_value());
    return *out;
  }

  Result<void> replace(TimerRecord r) {
    std::optional<Result<void>> out;
    engine->replace(std::move(r), [&](Result<void> res) { out = std::move(res); });
    settle();
    EXPECT_TRUE(out.has_value());
    return *out;
  }

  ListPage list(State s, const std::string& cursor = "", size_t limit = 100) {
    ListPage page;
    engine->list(s, cursor, limit, [&](Result<ListPage> r) {
      ASSERT_TRUE(r.has_value());
      page = std::move(*r);
    });
    settle();
    return page;
  }

  void advance_ms(int64_t ms) {
    clock.advance_ms(ms);
    engine->tick();
    settle();
  }

  void complete(size_t i, Outcome o, int status = 200, std::string detail = {}) {
    transport->complete(i, o, status, std::move(detail));
    settle();
  }

  ManualClock clock{1'800'000'000'000'000};
  ManualExecutor ex;
  RecordingWakeup wake;
  std::unique_ptr<Kv> kv = make_memory_kv();
  FlakyKv flaky{*kv};
  TimerStore store{flaky};
  Registry metrics;
  EngineOptions options;
  std::unique_ptr<TransportRegistry> registry;
  HeldTransport* transport = nullptr;
  std::unique_ptr<HeldCommitter> committer;
  std::unique_ptr<TimerEngine> engine;
  size_t recovered = 0;
};

TEST_F(EngineTest, NeverFiresEarlyToTheMicrosecond) {
  std::string id = create(timer(1000));
  EXPECT_EQ(wake.last, clock.now_us() + 1'000'000);
  clock.advance_us(999'999);
  engine->tick();
  settle();
  EXPECT_TRUE(transport->attempts.empty());
  clock.advance_us(1);
  engine->tick();
  settle();
  ASSERT_EQ(transport->attempts.size(), 1u);
  const DeliveryJob& job = transport->attempts[0].job;
  EXPECT_EQ(job.timer_id, id);
  EXPECT_EQ(job.attempt, 1u);
  EXPECT_EQ(job.method, "post");
  EXPECT_EQ(job.uri, "http://a.test/hook");
  EXPECT_EQ(job.data, "payload-");
  EXPECT_EQ(get(id)->state, State::kExecuting);
  complete(0, Outcome::kSuccess);
  auto r = get(id);
  EXPECT_EQ(r->state, State::kSucceeded);
  EXPECT_EQ(r->attempts, 1u);
}

TEST_F(EngineTest, FiresOnlyWhenDurable) {
  bool acked = false;
  engine->create(timer(1, "t1"), [&](Result<CreateResult> r) { acked = r.has_value(); });
  ex.run_all();
  clock.advance_ms(5);
  engine->tick();
  ex.run_all();
  EXPECT_FALSE(acked);
  EXPECT_TRUE(transport->attempts.empty()) << "fired before the create was durable";
  settle();
  EXPECT_TRUE(acked);
  EXPECT_EQ(transport->attempts.size(), 1u);
}

TEST_F(EngineTest, FiresInDueOrder) {
  std::mt19937_64 rng(7);
  std::vector<std::pair<int64_t, std::string>> want;
  for (int i = 0; i < 300; ++i) {
    int64_t t = 1 + static_cast<int64_t>(rng() % 5000);
    std::string id = create(timer(t, fmt::format("o{}", i)));
    want.emplace_back(clock.now_us() + t * 1000, id);
  }
  std::stable_sort(want.begin(), want.end());
  size_t seen = 0;
  for (int step = 0; step < 6000 && seen < want.size(); ++step) {
    advance_ms(1);
    for (; seen < transport->attempts.size(); ++seen) {
      const std::string& id = transport->attempts[seen].job.timer_id;
      auto due = std::find_if(want.begin(), want.end(), [&](auto& w) { return w.second == id; });
      ASSERT_NE(due, want.end());
      EXPECT_LE(due->first, clock.now_us()) << "early";
      EXPECT_GT(due->first, clock.now_us() - 1000) << "late by more than one step";
      complete(seen, Outcome::kSuccess);
    }
  }
  EXPECT_EQ(seen, want.size());
}

TEST_F(EngineTest, CancelledTimerNeverFires) {
  std::string id = create(timer(100));
  ASSERT_TRUE(cancel(id).has_value());
  advance_ms(1000);
  EXPECT_TRUE(transport->attempts.empty());
  EXPECT_EQ(get(id)->state, State::kCancelled);
  auto again = cancel(id);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, Errc::kNotFound);
  EXPECT_EQ(cancel("never-existed").error().code, Errc::kNotFound);
}

TEST_F(EngineTest, CancelWhileExecutingIsConflictAndRetriesCanBeCancelled) {
  std::string id = create(timer(10, "", "http://a.test/hook", R"(,"retry":{"attempts":3})"));
  advance_ms(10);
  ASSERT_EQ(transport->open(), 1u);
  EXPECT_EQ(cancel(id).error().code, Errc::kConflict);
  EXPECT_EQ(replace(timer(10, id)).error().code, Errc::kConflict);
  complete(0, Outcome::kRetryable, 503, "HTTP 503");
  EXPECT_EQ(get(id)->state, State::kRetrying);
  ASSERT_TRUE(cancel(id).has_value());
  advance_ms(120'000);
  EXPECT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(get(id)->state, State::kCancelled);
}

TEST_F(EngineTest, ReplaceFiresOnlyTheNewTimer) {
  std::string id = create(timer(100, "r1"));
  ASSERT_TRUE(replace(timer(500, "r1", "http://b.test/new")).has_value());
  advance_ms(100);
  EXPECT_TRUE(transport->attempts.empty());
  advance_ms(399);
  EXPECT_TRUE(transport->attempts.empty());
  advance_ms(1);
  ASSERT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(transport->attempts[0].job.uri, "http://b.test/new");
  complete(0, Outcome::kSuccess);
  advance_ms(10'000);
  EXPECT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(replace(timer(5, "nobody")).error().code, Errc::kNotFound);
  EXPECT_EQ(replace(timer(5, "r1")).error().code, Errc::kNotFound) << "completed is not pending";
}

TEST_F(EngineTest, IdempotentCreate) {
  TimerRecord a = timer(100, "same");
  ASSERT_EQ(create(a), "same");
  bool created = true;
  engine->create(a, [&](Result<CreateResult> r) {
    ASSERT_TRUE(r.has_value());
    created = r->created;
  });
  settle();
  EXPECT_FALSE(created);
  std::optional<Errc> err;
  engine->create(timer(200, "same"), [&](Result<CreateResult> r) { err = r.error().code; });
  settle();
  EXPECT_EQ(err, Errc::kConflict);
  advance_ms(100);
  ASSERT_EQ(transport->attempts.size(), 1u);
  complete(0, Outcome::kSuccess);
  // Still deduplicated after completion (retention window).
  engine->create(a, [&](Result<CreateResult> r) {
    ASSERT_TRUE(r.has_value());
    created = r->created;
  });
  settle();
  EXPECT_FALSE(created);
  advance_ms(1000);
  EXPECT_EQ(transport->attempts.size(), 1u);
}

TEST_F(EngineTest, RetriesWithBackoffThenSucceeds) {
  std::string id =
      create(timer(10, "", "http://a.test/hook",
                   R"(,"retry":{"attempts":4,"backoff_ms":1000,"max_backoff_ms":60000})"));
  advance_ms(10);
  ASSERT_EQ(transport->attempts.size(), 1u);
  for (uint32_t failed = 1; failed <= 2; ++failed) {
    int64_t t0 = clock.now_us();
    complete(failed - 1, Outcome::kRetryable, 503, "HTTP 503");
    auto r = get(id);
    EXPECT_EQ(r->state, State::kRetrying);
    EXPECT_EQ(r->attempts, failed);
    EXPECT_EQ(r->last_error, "HTTP 503");
    int64_t delay_ms = (r->next_us - t0) / 1000;
    uint64_t nominal = nominal_backoff_ms(RetryPolicy{4, 1000, 60000}, failed);
    EXPECT_GE(delay_ms, static_cast<int64_t>(nominal / 2));
    EXPECT_LE(delay_ms, static_cast<int64_t>(nominal));
    clock.set_us(r->next_us - 1);
    engine->tick();
    settle();
    EXPECT_EQ(transport->attempts.size(), failed) << "retry before its time";
    advance_ms(1);
    ASSERT_EQ(transport->attempts.size(), failed + 1);
    EXPECT_EQ(transport->attempts[failed].job.attempt, failed + 1);
  }
  complete(2, Outcome::kSuccess);
  auto r = get(id);
  EXPECT_EQ(r->state, State::kSucceeded);
  EXPECT_EQ(r->attempts, 3u);
}

TEST_F(EngineTest, ExhaustedRetriesBecomeDeadLetters) {
  std::string id =
      create(timer(10, "", "http://a.test/hook", R"(,"retry":{"attempts":2,"backoff_ms":100})"));
  advance_ms(10);
  complete(0, Outcome::kRetryable, 0, "Couldn't connect to server");
  advance_ms(200);
  ASSERT_EQ(transport->attempts.size(), 2u);
  complete(1, Outcome::kRetryable, 500, "HTTP 500");
  auto r = get(id);
  EXPECT_EQ(r->state, State::kFailed);
  EXPECT_EQ(r->attempts, 2u);
  EXPECT_EQ(r->last_error, "HTTP 500");
  ListPage failed = list(State::kFailed);
  ASSERT_EQ(failed.timers.size(), 1u);
  EXPECT_EQ(failed.timers[0].id, id);
  EXPECT_EQ(failed.timers[0].data, "payload-") << "dead letters keep their payload";
}

TEST_F(EngineTest, PermanentFailureIsNotRetried) {
  std::string id = create(timer(10));
  advance_ms(10);
  complete(0, Outcome::kPermanent, 404, "HTTP 404");
  advance_ms(600'000);
  EXPECT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(get(id)->state, State::kFailed);
}

TEST_F(EngineTest, SaturatedDestinationDoesNotDelayOthers) {
  EngineOptions o;
  o.max_inflight_per_destination = 2;
  start(o);
  std::vector<std::string> slow;
  for (int i = 0; i < 5; ++i) slow.push_back(create(timer(10, "", "http://dead.test/x")));
  std::string fast = create(timer(20, "", "http://alive.test/y"));
  std::string parked_then_cancelled = create(timer(15, "", "http://dead.test/x"));
  advance_ms(20);
  // Two attempts to the dead destination, the rest parked; the other destination is served.
  size_t to_dead = 0, to_alive = 0;
  for (auto& a : transport->attempts)
    (a.job.uri.find("dead") != std::string::npos ? to_dead : to_alive)++;
  EXPECT_EQ(to_dead, 2u);
  EXPECT_EQ(to_alive, 1u);
  EXPECT_TRUE(cancel(parked_then_cancelled).has_value()) << "a parked timer is still pending";
  // Each finished attempt to the dead destination lets one parked timer go.
  size_t done = 0;
  for (int round = 0; round < 10 && done < 5; ++round) {
    for (size_t i = 0; i < transport->attempts.size(); ++i) {
      if (transport->attempts[i].done &&
          transport->attempts[i].job.uri.find("dead") != std::string::npos) {
        complete(i, Outcome::kSuccess);
        ++done;
        break;
      }
    }
  }
  EXPECT_EQ(done, 5u);
  for (auto& a : transport->attempts) EXPECT_NE(a.job.timer_id, parked_then_cancelled);
  for (auto& id : slow) EXPECT_EQ(get(id)->state, State::kSucceeded);
}

TEST_F(EngineTest, NodeWideInflightBound) {
  EngineOptions o;
  o.max_inflight = 3;
  start(o);
  for (int i = 0; i < 10; ++i) create(timer(10, "", fmt::format("http://d{}.test/x", i)));
  advance_ms(10);
  EXPECT_EQ(transport->open(), 3u);
  complete(0, Outcome::kSuccess);
  EXPECT_EQ(transport->open(), 3u);
  EXPECT_EQ(transport->attempts.size(), 4u);
}

TEST_F(EngineTest, RecoversWaitingTimersAndFiresOverdueAtOnce) {
  std::string soon = create(timer(1000, "soon"));
  std::string later = create(timer(60'000, "later"));
  std::string done = create(timer(10, "done"));
  advance_ms(10);
  complete(0, Outcome::kSuccess);
  start();  // restart
  EXPECT_EQ(recovered, 2u);
  clock.advance_ms(5000);  // down for 5 s: "soon" is overdue
  engine->tick();
  settle();
  ASSERT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(transport->attempts[0].job.timer_id, "soon");
  EXPECT_EQ(get("done")->state, State::kSucceeded);
  EXPECT_EQ(get("later")->state, State::kPending);
  EXPECT_EQ(get("later")->due_us, get("later")->created_us + 60'000'000) << "due time is absolute";
}

TEST_F(EngineTest, InterruptedDeliveryIsAttemptedAgainAfterRestart) {
  std::string id = create(timer(10, "crashy"));
  advance_ms(10);
  ASSERT_EQ(transport->open(), 1u);
  // Crash: the attempt never reports back. Nothing was written for it.
  start();
  engine->tick();
  settle();
  ASSERT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(transport->attempts[0].job.timer_id, id);
  EXPECT_EQ(transport->attempts[0].job.attempt, 1u) << "same attempt number, same idempotency key";
}

TEST_F(EngineTest, UnacknowledgedCreateIsLostOnCrashButNeverHalfStored) {
  bool acked = false;
  engine->create(timer(10, "lost"), [&](Result<CreateResult>) { acked = true; });
  ex.run_all();
  committer->drop_all();  // crash before the fsync
  EXPECT_FALSE(acked);
  start();
  EXPECT_EQ(recovered, 0u);
  EXPECT_EQ(get("lost").error().code, Errc::kNotFound);
}

TEST_F(EngineTest, ReadsWaitForDurability) {
  engine->create(timer(1000, "w"), [](Result<CreateResult>) {});
  ex.run_all();
  bool answered = false;
  engine->get("w", [&](Result<TimerRecord> r) {
    answered = true;
    EXPECT_EQ(r->state, State::kPending);
  });
  ex.run_all();
  EXPECT_FALSE(answered) << "reported a change that is not durable yet";
  settle();
  EXPECT_TRUE(answered);
}

TEST_F(EngineTest, StorageFailureStopsTheEngine) {
  std::optional<Errc> err;
  engine->create(timer(10, "x"), [&](Result<CreateResult> r) {
    err = r ? std::nullopt : std::optional(r.error().code);
  });
  ex.run_all();
  committer->complete_all(/*fail_them=*/true);
  ex.run_all();
  EXPECT_EQ(err, Errc::kUnavailable);
  EXPECT_TRUE(engine->failed());
  engine->create(timer(10, "y"), [&](Result<CreateResult> r) { err = r.error().code; });
  EXPECT_EQ(err, Errc::kUnavailable);
  advance_ms(100);
  EXPECT_TRUE(transport->attempts.empty());
}

TEST_F(EngineTest, BoundedBacklogRefusesWithOverloaded) {
  EngineOptions o;
  o.max_unsettled = 2;
  start(o);
  std::vector<std::optional<Errc>> results(3);
  for (int i = 0; i < 3; ++i) {
    engine->create(timer(10, fmt::format("b{}", i)), [&, i](Result<CreateResult> r) {
      results[i] = r ? std::nullopt : std::optional(r.error().code);
    });
  }
  EXPECT_EQ(results[2], Errc::kOverloaded);
  settle();
  EXPECT_EQ(results[0], std::nullopt);
  EXPECT_EQ(results[1], std::nullopt);
  EXPECT_EQ(get("b2").error().code, Errc::kNotFound);
}

TEST_F(EngineTest, RetentionPurgesFinalRecords) {
  EngineOptions o;
  o.retention_us = 60'000'000;
  start(o);
  RetentionPurger purger(store, clock, PurgerOptions{});
  std::string id = create(timer(10, "p"));
  ASSERT_TRUE(cancel(id).has_value());
  clock.advance_ms(59'000);
  ASSERT_TRUE(purger.run_once().has_value());
  settle();
  EXPECT_EQ(get(id)->state, State::kCancelled);
  clock.advance_ms(1'000);
  ASSERT_TRUE(purger.run_once().has_value());
  settle();
  EXPECT_EQ(get(id).error().code, Errc::kNotFound);
  EXPECT_TRUE(list(State::kCancelled).timers.empty());
  // The id is free again.
  EXPECT_EQ(create(timer(10, "p")), "p");
}

TEST_F(EngineTest, ListsPagesByState) {
  for (int i = 0; i < 7; ++i) create(timer(100'000, fmt::format("l{}", i)));
  ListPage p1 = list(State::kPending, "", 3);
  ASSERT_EQ(p1.timers.size(), 3u);
  EXPECT_EQ(p1.next_cursor, p1.timers.back().id);
  ListPage p2 = list(State::kPending, p1.next_cursor, 3);
  ListPage p3 = list(State::kPending, p2.next_cursor, 3);
  EXPECT_EQ(p2.timers.size(), 3u);
  EXPECT_EQ(p3.timers.size(), 1u);
  EXPECT_TRUE(p3.next_cursor.empty());
  EXPECT_LT(p1.timers.back().id, p2.timers.front().id);
}

// Generated ids are unique, short enough for std::string's inline buffer, and ascend in create
// order (storage inserts then land next to each other; see docs/performance.md).
TEST_F(EngineTest, GeneratedIdsAreUniqueShortAndAscending) {
  std::vector<std::string> in_order;
  for (int i = 0; i < 5000; ++i) {
    engine->create(timer(100'000), [&](Result<CreateResult> r) { in_order.push_back(r->id); });
  }
  settle();
  ASSERT_EQ(in_order.size(), 5000u);
  std::set<std::string> ids(in_order.begin(), in_order.end());
  EXPECT_EQ(ids.size(), 5000u);
  EXPECT_TRUE(std::is_sorted(in_order.begin(), in_order.end()));
  for (auto& id : ids) {
    EXPECT_TRUE(valid_timer_id(id));
    EXPECT_EQ(id.size(), 15u);
  }
}

// Timers due soon after their create are attempted from memory; far ones are read from storage.
// Either way the attempt carries the newest version (replace updates the kept record).
TEST_F(EngineTest, NearTimersAreAttemptedWithoutAStorageRead) {
  EngineOptions o;
  o.near_window_us = 5'000'000;
  start(o);
  std::string near = create(timer(1000, "near"));
  std::string far = create(timer(60'000, "far"));
  std::string swapped = create(timer(2000, "swapped"));
  ASSERT_TRUE(replace(timer(3000, "swapped", "http://b.test/new")).has_value());
  // Corrupt the stored records: only an attempt that reads storage would notice.
  ASSERT_TRUE(kv->write({KvOp{KvOp::Kind::kPut, "t/near", "garbage"},
                         KvOp{KvOp::Kind::kPut, "t/swapped", "garbage"}},
                        true)
                  .has_value());
  advance_ms(3000);
  ASSERT_EQ(transport->attempts.size(), 2u);
  EXPECT_EQ(transport->attempts[0].job.timer_id, near);
  EXPECT_EQ(transport->attempts[1].job.timer_id, swapped);
  EXPECT_EQ(transport->attempts[1].job.uri, "http://b.test/new");
  // A far timer's record is read at its due time (and a corrupt one is reported, not sent).
  ASSERT_TRUE(kv->write({KvOp{KvOp::Kind::kPut, "t/far", "garbage"}}, true).has_value());
  advance_ms(60'000);
  EXPECT_EQ(transport->attempts.size(), 2u);
  EXPECT_EQ(get(far).error().code, Errc::kCorruption);
}

TEST_F(EngineTest, ManyTimersInsertCancelExpire) {
  constexpr int kN = 100'000;
  std::mt19937_64 rng(11);
  int acked = 0;
  for (int i = 0; i < kN; ++i) {
    engine->create(timer(1 + static_cast<int64_t>(rng() % 10'000), fmt::format("m{}", i)),
                   [&](Result<CreateResult> r) { acked += r.has_value(); });
    if (i % 10'000 == 0) settle();
  }
  settle();
  EXPECT_EQ(acked, kN);
  int cancelled = 0;
  for (int i = 0; i < kN; i += 2) {
    engine->cancel(fmt::format("m{}", i), [&](Result<void> r) { cancelled += r.has_value(); });
  }
  settle();
  EXPECT_EQ(cancelled, kN / 2);
  EXPECT_EQ(engine->waiting(), static_cast<size_t>(kN / 2));
  EngineOptions o;
  o.max_inflight = 1'000'000;
  o.max_inflight_per_destination = 1'000'000;
  start(o);
  EXPECT_EQ(recovered, static_cast<size_t>(kN / 2));
  clock.advance_ms(10'001);
  for (int i = 0; i < 100; ++i) {
    engine->tick();
    settle();
  }
  EXPECT_EQ(transport->attempts.size(), static_cast<size_t>(kN / 2));
}

// A client may pick any valid id, including the ones this node would generate next; the
// generator must step around it, whether that timer is pending or already final (retained).
TEST_F(EngineTest, GeneratedIdsNeverEqualAClientId) {
  std::string first = create(timer(100'000));
  ASSERT_EQ(first.size(), 15u);
  ASSERT_EQ(first.substr(9), "000000");
  std::string pending = first.substr(0, 9) + "000005";
  std::string retained = first.substr(0, 9) + "000007";
  EXPECT_EQ(create(timer(100'000, pending)), pending);
  EXPECT_EQ(create(timer(100'000, retained)), retained);
  ASSERT_TRUE(cancel(retained).has_value());
  std::set<std::string> ids{first};
  for (int i = 0; i < 20; ++i) {
    std::string id = create(timer(100'000));
    EXPECT_NE(id, pending);
    EXPECT_NE(id, retained);
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 21u);
  EXPECT_EQ(get(pending)->state, State::kPending);
  EXPECT_EQ(get(retained)->state, State::kCancelled);
  // The same holds for a client id still on its way to storage.
  std::string next = create(timer(100'000));
  // `next` plus two: the id the generator would give two creates from now.
  std::string racing = next;
  for (int carry = 2, i = 14; carry > 0 && i >= 9; --i) {
    static const std::string kDigits =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    int v = static_cast<int>(kDigits.find(racing[static_cast<size_t>(i)])) + carry;
    racing[static_cast<size_t>(i)] = kDigits[static_cast<size_t>(v % 62)];
    carry = v / 62;
  }
  std::vector<std::string> out;
  auto record = [&](Result<CreateResult> r) {
    ASSERT_TRUE(r.has_value()) << r.error().message;
    out.push_back(r->id);
  };
  engine->create(timer(100'000, racing), record);
  for (int i = 0; i < 5; ++i) engine->create(timer(100'000), record);
  settle();
  ASSERT_EQ(out.size(), 6u);
  EXPECT_EQ(std::set<std::string>(out.begin(), out.end()).size(), 6u);
  EXPECT_EQ(std::count(out.begin(), out.end(), racing), 1);
}

// A disk stall at a high delivery rate: outcomes pile up unwritten. The engine stops starting
// attempts before the committer's queue (sized as the node sizes it) is full, refuses creates
// with kOverloaded, and never fails; once the disk is back every timer is delivered once.
TEST_F(EngineTest, DiskStallMakesTimersWaitAndNeverFailsTheEngine) {
  EngineOptions o;
  o.max_unsettled = 10;
  o.max_inflight = 4;
  o.max_inflight_per_destination = 2;
  start(o);
  committer->max_ops = (o.max_unsettled + o.max_inflight) * 4;
  constexpr int kN = 40;
  // Half to one destination (its timers park), half to a destination each (started by tick).
  for (int i = 0; i < kN; ++i) {
    std::string uri = i % 2 == 0 ? "http://a.test/hook" : fmt::format("http://d{}.test/hook", i);
    create(timer(10, fmt::format("s{:02}", i), uri));
  }
  clock.advance_ms(10);
  engine->tick();
  ex.run_all();
  // The disk stalls: nothing is written; every attempt succeeds at once.
  for (int round = 0; round < 30; ++round) {
    for (size_t i = 0; i < transport->attempts.size(); ++i) {
      if (transport->attempts[i].done) transport->complete(i, Outcome::kSuccess);
    }
    ex.run_all();
    engine->tick();
    ex.run_all();
    ASSERT_FALSE(engine->failed()) << engine->failure();
    EXPECT_LE(engine->backlog(), o.max_unsettled + o.max_inflight);
  }
  EXPECT_LT(transport->attempts.size(), static_cast<size_t>(kN)) << "attempts went on";
  std::optional<Errc> refused;
  engine->create(timer(10, "late"), [&](Result<CreateResult> r) {
    refused = r ? std::nullopt : std::optional(r.error().code);
  });
  EXPECT_EQ(refused, Errc::kOverloaded);
  // The disk is back.
  for (int round = 0; round < 200 && transport->attempts.size() < static_cast<size_t>(kN) * 2;
       ++round) {
    committer->complete_all();
    ex.run_all();
    for (size_t i = 0; i < transport->attempts.size(); ++i) {
      if (transport->attempts[i].done) transport->complete(i, Outcome::kSuccess);
    }
    engine->tick();
    settle();
  }
  settle();
  std::map<std::string, int> delivered;
  for (const auto& a : transport->attempts) ++delivered[a.job.timer_id];
  EXPECT_EQ(delivered.size(), static_cast<size_t>(kN));
  for (const auto& [id, n] : delivered) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(engine->waiting(), 0u);
  EXPECT_FALSE(engine->failed());
}

// A record read that fails for a due timer is retried with backoff; the timer is neither
// dropped nor attempted early.
TEST_F(EngineTest, TransientReadErrorIsRetriedWithBackoff) {
  std::string id = create(timer(60'000, "flaky"));  // far: its record is read at the due time
  flaky.fail_record_reads = 2;
  advance_ms(60'000);
  EXPECT_TRUE(transport->attempts.empty());
  EXPECT_EQ(engine->waiting(), 1u) << "the timer must stay owed";
  advance_ms(100);  // first retry (100 ms) fails again; the next waits 200 ms
  EXPECT_TRUE(transport->attempts.empty());
  EXPECT_EQ(flaky.fail_record_reads, 0);
  advance_ms(100);
  EXPECT_TRUE(transport->attempts.empty());
  advance_ms(100);
  ASSERT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(transport->attempts[0].job.timer_id, id);
  EXPECT_EQ(metrics.render().find("skyring_storage_read_errors_total 2") != std::string::npos,
            true);
  // A read error seen by a client is a 503 (retry), not a corruption.
  flaky.fail_record_reads = 1;
  EXPECT_EQ(get("other").error().code, Errc::kUnavailable);
}

// A record that fails its checksum is moved aside (never deleted), reported, counted, and the
// node keeps working and restarts.
TEST_F(EngineTest, CorruptRecordIsQuarantined) {
  create(timer(60'000, "c"));
  create(timer(60'000, "fine"));
  ASSERT_TRUE(kv->write({KvOp{KvOp::Kind::kPut, "t/c", "garbage"}}, true).has_value());
  advance_ms(60'000);
  ASSERT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(transport->attempts[0].job.timer_id, "fine");
  EXPECT_EQ(*kv->get("q/c"), std::optional<std::string>("tgarbage"));
  EXPECT_EQ(*kv->get("t/c"), std::nullopt);
  EXPECT_EQ(*kv->get("p/c"), std::nullopt);
  EXPECT_EQ(engine->quarantined(), 1u);
  EXPECT_EQ(engine->waiting(), 1u);  // "fine", in flight
  EXPECT_EQ(get("c").error().code, Errc::kCorruption);
  std::optional<Errc> err;
  engine->create(timer(10, "c"), [&](Result<CreateResult> r) {
    err = r ? std::nullopt : std::optional(r.error().code);
  });
  settle();
  EXPECT_EQ(err, Errc::kCorruption);
  EXPECT_NE(metrics.render().find("skyring_records_quarantined_total 1"), std::string::npos);
  start();
  EXPECT_EQ(engine->quarantined(), 1u);
  EXPECT_EQ(get("c").error().code, Errc::kCorruption);
}

// A corrupt pending index entry never stops the start: it is rebuilt from its record, or
// quarantined when the record is unreadable too.
TEST_F(EngineTest, CorruptIndexEntriesDoNotStopRecovery) {
  create(timer(1000, "good"));
  create(timer(1000, "rebuilt"));
  ASSERT_TRUE(kv->write({KvOp{KvOp::Kind::kPut, "p/rebuilt", "short"},
                         KvOp{KvOp::Kind::kPut, "p/lost", "xyz"}},
                        true)
                  .has_value());
  start();
  EXPECT_EQ(recovered, 2u);
  EXPECT_EQ(engine->quarantined(), 1u);
  EXPECT_EQ(*kv->get("q/lost"), std::optional<std::string>("pxyz"));
  EXPECT_EQ(kv->get("p/rebuilt")->value().size(), 9u);
  advance_ms(1000);
  EXPECT_EQ(transport->attempts.size(), 2u);
}

// Listing a state that no pending timer is in visits a bounded number of index entries per
// call and hands back a cursor, so it never holds the engine thread for long.
TEST_F(EngineTest, ListingAWaitingStateIsBoundedWorkPerCall) {
  EngineOptions o;
  o.max_list_scan = 50;
  start(o);
  for (int i = 0; i < 500; ++i) create(timer(100'000, fmt::format("q{:03}", i)));
  std::string cursor;
  int calls = 0;
  size_t found = 0;
  do {
    size_t before = flaky.scanned;
    ListPage p = list(State::kRetrying, cursor, 100);
    EXPECT_LE(flaky.scanned - before, 50u);
    found += p.timers.size();
    cursor = p.next_cursor;
    ASSERT_LT(++calls, 20);
  } while (!cursor.empty());
  EXPECT_EQ(found, 0u);
  EXPECT_GE(calls, 10);
  // Pending timers page as before.
  ListPage p = list(State::kPending, "", 100);
  EXPECT_EQ(p.timers.size(), 50u) << "at most max_list_scan entries are visited per call";
  EXPECT_FALSE(p.next_cursor.empty());
}

// What the engine keeps per distinct destination is small: one saturating destination must not
// cost every other destination a parked-timer queue.
TEST_F(EngineTest, DistinctDestinationsCostLittleMemory) {
  auto in_use = [] { return mallinfo2().uordblks; };
  constexpr int kN = 2000;
  size_t base0 = in_use();
  for (int i = 0; i < kN; ++i) {
    create(timer(100'000, fmt::format("one{:04}", i), "http://h0000.test/hook"));
  }
  size_t one = in_use() - base0;
  start();
  size_t base1 = in_use();
  for (int i = 0; i < kN; ++i) {
    create(timer(100'000, fmt::format("many{:03}", i), fmt::format("http://h{:04}.test/hook", i)));
  }
  size_t many = in_use() - base1;
  if (one == 0) GTEST_SKIP() << "mallinfo2 does not count this allocator";
  double per_destination = (static_cast<double>(many) - static_cast<double>(one)) / kN;
  RecordProperty("bytes_per_destination", static_cast<int>(per_destination));
  EXPECT_LT(per_destination, 500.0);
}

// --- Cluster moves (docs/cluster.md, "Moves") ---

namespace moves {

// A second node's engine over its own storage, driven by the same clock and executor.
struct Peer {
  explicit Peer(const Clock& clock, ManualExecutor& ex) : clock_(clock), ex_(ex) { start(); }
  void start() {
    engine.reset();
    registry = std::make_unique<TransportRegistry>();
    auto t = std::make_unique<HeldTransport>();
    transport = t.get();
    registry->add(std::move(t));
    committer = std::make_unique<HeldCommitter>(*kv, ex_);
    engine = std::make_unique<TimerEngine>(clock_, ex_, wake, store, *committer, *registry,
                                           EngineOptions{});
    ASSERT_TRUE(engine->recover().has_value());
  }
  void settle() {
    for (int i = 0; i < 100; ++i) {
      ex_.run_all();
      if (committer->held() == 0) return;
      committer->complete_all();
    }
  }
  const Clock& clock_;
  ManualExecutor& ex_;
  RecordingWakeup wake;
  std::unique_ptr<Kv> kv = make_memory_kv();
  TimerStore store{*kv};
  std::unique_ptr<TransportRegistry> registry;
  HeldTransport* transport = nullptr;
  std::unique_ptr<HeldCommitter> committer;
  std::unique_ptr<TimerEngine> engine;
};

}  // namespace moves

class EngineMoveTest : public EngineTest {
 protected:
  std::vector<TimerRecord> begin(std::vector<std::string> ids, const std::string& token,
                                 const std::string& dest = "node-b") {
    std::vector<TimerRecord> out;
    bool called = false;
    engine->begin_move(std::move(ids), dest, token, [&](Result<std::vector<TimerRecord>> r) {
      called = true;
      ASSERT_TRUE(r.has_value()) << r.error().message;
      out = std::move(*r);
    });
    settle();
    EXPECT_TRUE(called);
    return out;
  }
  void end(std::vector<std::string> ids, const std::string& token, bool delivered) {
    bool called = false;
    engine->end_move(ids, token, delivered, [&](Result<void> r) {
      called = true;
      EXPECT_TRUE(r.has_value());
    });
    settle();
    EXPECT_TRUE(called);
  }
  std::vector<ImportOutcome> import_into(TimerEngine& e, std::vector<TimerRecord> recs,
                                         const std::string& token,
                                         const std::function<void()>& settle_fn) {
    std::vector<ImportOutcome> out;
    bool called = false;
    e.import(std::move(recs), token, [&](Result<std::vector<ImportOutcome>> r) {
      called = true;
      ASSERT_TRUE(r.has_value()) << r.error().message;
      out = std::move(*r);
    });
    settle_fn();
    EXPECT_TRUE(called);
    return out;
  }
};

TEST_F(EngineMoveTest, AMovingTimerNeverFiresOrChangesAndItsMarkSurvivesARestart) {
  std::string id = create(timer(1000, "m1"));
  auto recs = begin({id}, "a-1");
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].due_us, clock.now_us() + 1'000'000);
  advance_ms(2000);
  EXPECT_TRUE(transport->attempts.empty()) << "fired while moving";
  auto put = replace(timer(5000, id));
  ASSERT_FALSE(put.has_value());
  EXPECT_EQ(put.error().code, Errc::kUnavailable);
  EXPECT_EQ(cancel(id).error().code, Errc::kUnavailable);
  EXPECT_EQ(get(id)->state, State::kPending);  // still readable here

  start();  // a crash after the mark: the timer must not fire on restart
  ASSERT_EQ(engine->moving().size(), 1u);
  EXPECT_EQ(engine->moving()[0].dest, "node-b");
  EXPECT_EQ(engine->moving()[0].token, "a-1");
  advance_ms(1000);
  EXPECT_TRUE(transport->attempts.empty()) << "fired a timer whose move was in flight";
  // A resend under the same token gives the record again; another token gives nothing.
  EXPECT_TRUE(begin({id}, "a-2").empty());
  EXPECT_EQ(begin({id}, "a-1").size(), 1u);
  // The receiver said it stored nothing: the timer is owed here again and fires late.
  end({id}, "a-1", /*delivered=*/false);
  advance_ms(1);
  ASSERT_EQ(transport->attempts.size(), 1u);
  EXPECT_EQ(transport->attempts[0].job.timer_id, id);
}

TEST_F(EngineMoveTest, ADeliveredMoveDeletesRecordAndMarkTogether) {
  std::string id = create(timer(1000, "m2"));
  std::string done_id = create(timer(1, "m3"));
  advance_ms(1);
  complete(0, Outcome::kSuccess);
  ASSERT_EQ(begin({id, done_id}, "a-1").size(), 2u);  // the retention record moves too
  end({id, done_id}, "a-1", /*delivered=*/true);
  EXPECT_EQ(get(id).error().code, Errc::kNotFound);
  EXPECT_EQ(get(done_id).error().code, Errc::kNotFound);
  start();
  EXPECT_EQ(recovered, 0u);
  EXPECT_TRUE(engine->moving().empty());
  advance_ms(5000);
  EXPECT_EQ(transport->attempts.size(), 0u);
}

TEST_F(EngineMoveTest, ImportKeepsDueTimeAttemptsAndStoresATokenOnce) {
  moves::Peer b(clock, ex);
  std::string id = create(timer(10'000, "m4"));
  advance_ms(3000);  // 7 s left
  auto recs = begin({id}, "a-1");
  ASSERT_EQ(recs.size(), 1u);
  recs[0].attempts = 2;
  recs[0].state = State::kRetrying;
  auto settle_b = [&] { b.settle(); };
  auto first = import_into(*b.engine, recs, "a-1", settle_b);
  EXPECT_EQ(first, std::vector<ImportOutcome>{ImportOutcome::kStored});
  // The same move again (the sender crashed before its delete and resends): stored once.
  EXPECT_EQ(import_into(*b.engine, recs, "a-1", settle_b),
            std::vector<ImportOutcome>{ImportOutcome::kDuplicate});
  // Another move of an id held here: the record held here stays.
  EXPECT_EQ(import_into(*b.engine, recs, "c-9", settle_b),
            std::vector<ImportOutcome>{ImportOutcome::kKeptLocal});
  // Survives a restart of the receiver, and fires at the original due time, not later.
  b.start();
  clock.advance_ms(6999);
  b.engine->tick();
  b.settle();
  EXPECT_TRUE(b.transport->attempts.empty()) << "early";
  clock.advance_ms(1);
  b.engine->tick();
  b.settle();
  ASSERT_EQ(b.transport->attempts.size(), 1u);
  EXPECT_EQ(b.transport->attempts[0].job.attempt, 3u) << "attempt count lost in the move";
  // Invalid records are rejected, not stored.
  TimerRecord bad = recs[0];
  bad.id = "other";
  bad.state = State::kExecuting;
  EXPECT_EQ(import_into(*b.engine, {bad}, "a-2", settle_b),
            std::vector<ImportOutcome>{ImportOutcome::kRejected});
}

// Crash point 4: the sender crashes after the receiver acknowledged, before its delete. On
// restart it neither fires the timer nor loses it: the resend is a duplicate, then it deletes.
// A move whose first destination left after a complete handoff goes on, same token, to the
// timer's new owner (Mover::redirect): the mark names the new destination, also after a
// restart, and the timer still never fires here.
TEST_F(EngineMoveTest, AResendToAnotherDestinationRewritesTheMark) {
  std::string id = create(timer(1000, "m9"));
  ASSERT_EQ(begin({id}, "a-1", "node-b").size(), 1u);
  ASSERT_EQ(begin({id}, "a-1", "node-c").size(), 1u);
  ASSERT_EQ(engine->moving().size(), 1u);
  EXPECT_EQ(engine->moving()[0].dest, "node-c");
  start();  // a crash: the rewritten mark is what recovery finds
  ASSERT_EQ(engine->moving().size(), 1u);
  EXPECT_EQ(engine->moving()[0].dest, "node-c");
  EXPECT_EQ(engine->moving()[0].token, "a-1");
  advance_ms(2000);
  EXPECT_TRUE(transport->attempts.empty()) << "fired a timer whose move was in flight";
  EXPECT_TRUE(begin({id}, "a-2", "node-c").empty());  // another token still gets nothing
  end({id}, "a-1", /*delivered=*/true);
  EXPECT_EQ(get(id).error().code, Errc::kNotFound);
}

TEST_F(EngineMoveTest, SenderCrashAfterTheAckFiresNothingTwice) {
  moves::Peer b(clock, ex);
  auto settle_b = [&] { b.settle(); };
  std::string id = create(timer(2000, "m5"));
  auto recs = begin({id}, "a-1");
  ASSERT_EQ(import_into(*b.engine, recs, "a-1", settle_b)[0], ImportOutcome::kStored);
  start();  // crash: no end_move
  auto again = begin({id}, "a-1");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(import_into(*b.engine, again, "a-1", settle_b)[0], ImportOutcome::kDuplicate);
  end({id}, "a-1", true);
  clock.advance_ms(5000);
  engine->tick();
  settle();
  b.engine->tick();
  b.settle();
  EXPECT_EQ(transport->attempts.size(), 0u);
  EXPECT_EQ(b.transport->attempts.size(), 1u);
}

// A timer that comes back while this node still marks it as moving out (a ring flap after a
// crash): the copy that arrives wins, and the old mark cannot delete it any more.
TEST_F(EngineMoveTest, ATimerComingBackReplacesItsOutgoingCopy) {
  std::string id = create(timer(2000, "m6"));
  auto recs = begin({id}, "a-1");
  TimerRecord newer = recs[0];
  newer.data = "changed elsewhere";
  auto out = import_into(*engine, {newer}, "b-7", [&] { settle(); });
  EXPECT_EQ(out[0], ImportOutcome::kStored);
  EXPECT_TRUE(engine->moving().empty());
  end({id}, "a-1", true);  // the old move's late ack: not this record's any more
  EXPECT_EQ(get(id)->data, "changed elsewhere");
  advance_ms(2000);
  ASSERT_EQ(transport->attempts.size(), 1u);
}

TEST_F(EngineMoveTest, HeldFiringStartsNothingUntilReleased) {
  std::string id = create(timer(10, "m7"));
  engine->hold_firing(true);
  advance_ms(100);
  EXPECT_TRUE(transport->attempts.empty());
  engine->hold_firing(false);
  settle();
  ASSERT_EQ(transport->attempts.size(), 1u);
}

TEST_F(EngineMoveTest, ScanWaitingVisitsEveryMovableTimerOnce) {
  std::set<std::string> want;
  for (int i = 0; i < 500; ++i) want.insert(create(timer(60'000, fmt::format("s{}", i))));
  begin({"s1", "s2"}, "a-1");  // moving: not listed again
  size_t cursor = 0;
  std::vector<std::string> seen;
  bool done = false;
  for (int i = 0; i < 1000 && !done; ++i) {
    done = engine->scan_waiting(
        &cursor, 64, [](const std::string&) { return true; }, &seen, nullptr);
  }
  ASSERT_TRUE(done);
  std::set<std::string> got(seen.begin(), seen.end());
  EXPECT_EQ(got.size(), seen.size());
  want.erase("s1");
  want.erase("s2");
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace skyring
