#include "http/io_loop.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "base/clock.h"
#include "http/io_loop_impl.h"

namespace skyring {
namespace {

constexpr int64_t kHourUs = 3600LL * 1'000'000;
// A safety net for a loop that must make progress: never a condition of correctness.
constexpr int64_t kDeadlineMs = 10'000;

IoLoopOptions short_sleeps(bool watch_clock_steps) {
  IoLoopOptions o;
  o.max_sleep_ms = 20;
  o.watch_clock_steps = watch_clock_steps;
  return o;
}

// The wall clock jumps an hour ahead while the loop sleeps towards a due time an hour away:
// the wake-up must come now, not an hour of steady time later.
TEST(IoLoop, WakesWhenTheClockStepsPastTheDueTime) {
  ManualClock clock;
  IoLoop loop(clock, short_sleeps(true));
  int wakes = 0;
  loop.set_on_wake([&] { ++wakes; });
  loop.wake_at(clock.now_us() + kHourUs);
  clock.advance_us(kHourUs);
  EXPECT_TRUE(loop.run_until([&] { return wakes > 0; }, kDeadlineMs));
}

// Bounded sleeps re-read the clock; while the due time is ahead they go back to sleep and do
// not call on_wake (the step watch is off here: only it may wake early, on a real clock step).
TEST(IoLoop, DoesNotWakeBeforeTheDueTime) {
  ManualClock clock;
  IoLoop loop(clock, short_sleeps(false));
  int wakes = 0;
  int64_t woke_at = 0;
  loop.set_on_wake([&] {
    ++wakes;
    woke_at = clock.now_us();
  });
  int64_t due = clock.now_us() + kHourUs;
  loop.wake_at(due);
  ASSERT_TRUE(loop.run_until([&] { return loop.impl().sleeps_ended >= 5; }, kDeadlineMs));
  EXPECT_EQ(wakes, 0);

  clock.advance_us(kHourUs - 1);
  uint64_t seen = loop.impl().sleeps_ended;
  ASSERT_TRUE(loop.run_until([&] { return loop.impl().sleeps_ended >= seen + 3; }, kDeadlineMs));
  EXPECT_EQ(wakes, 0);

  clock.advance_us(1);
  ASSERT_TRUE(loop.run_until([&] { return wakes > 0; }, kDeadlineMs));
  EXPECT_EQ(wakes, 1);
  EXPECT_GE(woke_at, due);
}

TEST(IoLoop, DueTimeInThePastWakesAtOnce) {
  ManualClock clock;
  IoLoop loop(clock, short_sleeps(false));
  int wakes = 0;
  loop.set_on_wake([&] { ++wakes; });
  loop.wake_at(clock.now_us() - 1);
  EXPECT_TRUE(loop.run_until([&] { return wakes > 0; }, kDeadlineMs));
}

// One wake-up at a time: a later wake_at() replaces the earlier due time.
TEST(IoLoop, WakeAtReplacesTheDueTime) {
  ManualClock clock;
  IoLoop loop(clock, short_sleeps(false));
  int wakes = 0;
  loop.set_on_wake([&] { ++wakes; });
  loop.wake_at(clock.now_us() + 1000);
  loop.wake_at(clock.now_us() + kHourUs);
  clock.advance_us(1000);
  ASSERT_TRUE(loop.run_until([&] { return loop.impl().sleeps_ended >= 3; }, kDeadlineMs));
  EXPECT_EQ(wakes, 0);
  clock.advance_us(kHourUs);
  EXPECT_TRUE(loop.run_until([&] { return wakes == 1; }, kDeadlineMs));
}

// The engine re-arms from inside on_wake: the loop keeps going, one wake-up per due time.
TEST(IoLoop, RearmsFromInsideOnWake) {
  ManualClock clock;
  IoLoop loop(clock, short_sleeps(true));
  int wakes = 0;
  loop.set_on_wake([&] {
    ++wakes;
    if (wakes < 3) loop.wake_at(clock.now_us());
  });
  loop.wake_at(clock.now_us());
  EXPECT_TRUE(loop.run_until([&] { return wakes == 3; }, kDeadlineMs));
}

TEST(IoLoop, StopsWithTheClockStepWatchArmed) {
  ManualClock clock;
  IoLoop loop(clock, short_sleeps(true));
  loop.post([&] { loop.stop(); });
  loop.run();  // returns: stop() cancels the watch's pending read as well
  SUCCEED();
}

}  // namespace
}  // namespace skyring
