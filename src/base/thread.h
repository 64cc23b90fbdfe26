// How a Skyring thread presents itself to the operating system.
//
// Name: at most 15 characters (the kernel's limit; longer names are cut), shown by `top -H`,
// `ps -L`, /proc/<pid>/task/*/comm and debuggers, so an operator can tell the committer from
// the event loop.
//
// Role: a kThroughput thread (the group committer) does work that a few hundred microseconds
// of waiting does not hurt, and wakes often on its own (each disk completion inside an fsync).
// On Linux it runs under SCHED_BATCH: same share of the CPU, same nice value, but its wake-ups
// do not preempt the thread that is running; it gets the CPU at the next scheduling point. When
// CPUs are idle nothing changes; when they are contended (several nodes on one small host) the
// event loop is no longer cut off mid-turn by each disk completion. Measured in
// docs/performance.md. kLatency (the default of every thread) leaves the policy alone.
//
// Failure: both are hints. Where the call is refused or unknown (another OS, a seccomp filter)
// the thread runs as it would have; the result says so and nothing else changes.
#pragma once

#include <string_view>

namespace skyring {

enum class ThreadRole { kLatency, kThroughput };

struct ThreadSetup {
  bool named = false;
  bool role_applied = false;  // kLatency: always true (nothing to apply)
};

// Applies to the calling thread only.
ThreadSetup set_up_this_thread(std::string_view name, ThreadRole role = ThreadRole::kLatency);

}  // namespace skyring
