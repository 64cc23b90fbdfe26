#include <gtest/gtest.h>
#include <sched.h>

#include <fstream>
#include <string>
#include <thread>

#include "base/clock.h"
#include "base/hash.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/result.h"
#include "base/thread.h"

namespace skyring {
namespace {

TEST(Result, CarriesErrors) {
  Result<int> ok = 3;
  Result<int> bad = fail(Errc::kNotFound, "nope");
  EXPECT_EQ(*ok, 3);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, Errc::kNotFound);
  EXPECT_EQ(bad.error().message, "nope");
  EXPECT_STREQ(errc_name(Errc::kConflict), "conflict");
}

TEST(ManualClock, MovesOnlyWhenTold) {
  ManualClock c(1000);
  EXPECT_EQ(c.now_us(), 1000);
  c.advance_ms(2);
  EXPECT_EQ(c.now_us(), 3000);
}

TEST(Hash, StableAndSeeded) {
  EXPECT_EQ(hash64("abc"), hash64("abc"));
  EXPECT_NE(hash64("abc"), hash64("abd"));
  EXPECT_NE(hash64("abc", 1), hash64("abc", 2));
}

TEST(Log, ParsesLevels) {
  EXPECT_EQ(*log::parse_level("debug"), log::Level::kDebug);
  EXPECT_FALSE(log::parse_level("loud").has_value());
}

TEST(Metrics, RendersPrometheusText) {
  Registry r;
  r.counter("skyring_x_total", "x").inc(3);
  r.gauge("skyring_g", "g").set(-2);
  Histogram& h = r.histogram("skyring_h_seconds", "h", {0.1, 1});
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5);
  std::string text = r.render();
  EXPECT_NE(text.find("# TYPE skyring_x_total counter\nskyring_x_total 3\n"), std::string::npos);
  EXPECT_NE(text.find("skyring_g -2\n"), std::string::npos);
  EXPECT_NE(text.find("skyring_h_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("skyring_h_seconds_bucket{le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("skyring_h_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("skyring_h_seconds_count 3\n"), std::string::npos);
}

std::string comm_of_this_thread() {
  std::ifstream f("/proc/thread-self/comm");
  std::string name;
  std::getline(f, name);
  return name;
}

TEST(ThreadSetup, NamesTheThreadAndMakesAThroughputThreadBatch) {
  const int before = sched_getscheduler(0);
  if (before == SCHED_BATCH) GTEST_SKIP() << "the test runner itself runs under SCHED_BATCH";
  std::string name;
  int policy = -1;
  ThreadSetup setup;
  std::thread t([&] {
    setup = set_up_this_thread("sky-test-thread-with-a-long-name", ThreadRole::kThroughput);
    name = comm_of_this_thread();
    policy = sched_getscheduler(0);
  });
  t.join();
  EXPECT_TRUE(setup.named);
  EXPECT_EQ(name, "sky-test-thread");  // cut to the kernel's 15 characters
  ASSERT_TRUE(setup.role_applied);
  EXPECT_EQ(policy, SCHED_BATCH);
  // Only that thread changed.
  EXPECT_EQ(sched_getscheduler(0), before);
}

TEST(ThreadSetup, ALatencyThreadKeepsItsPolicy) {
  const int inherited = sched_getscheduler(0);
  int policy = -1;
  std::thread t([&] {
    EXPECT_TRUE(set_up_this_thread("sky-latency").role_applied);
    policy = sched_getscheduler(0);
  });
  t.join();
  EXPECT_EQ(policy, inherited);
}

}  // namespace
}  // namespace skyring
